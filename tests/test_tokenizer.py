"""SentencePiece tokenizer: training, LLaMA conventions, bytes round trip, GGUF vocab rebuild, wrappers."""

import os
import pickle

import pytest

from bllama.tokenizers.sentencepiece import (
    TOKEN_TYPE_BYTE,
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_UNKNOWN,
    TOKEN_TYPE_USER_DEFINED,
    SentencePieceTokenizer,
    TokenizerWrapper,
    load_tokenizer,
    train_sentencepiece,
)

VARIED = [
    "Hello, world!",
    "  leading spaces, trailing spaces   ",
    "whitespace   runs\t\ttabs\n\nand blank lines\n",
    "Café naïve façade — “quotes” and ‘apostrophes’ …",
    "Emoji 😀🚀🦙 fall back to bytes; so do 東京 and Ελληνικά and עברית.",
    "ligature ﬁ, full-width ＡＢＣ, combining e\u0301 vs é",
    "numbers 3.14159 and 65536; code: def f(x): return x**2",
    "<s> and </s> and <unk> typed as text are not special",
    "",
    " ",
    "\x00\x01 control chars \u200b zero width",
]


def test_llama_conventions(sp_tokenizer):
    tok = sp_tokenizer
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert tok.vocab_size == 384
    pieces = tok.pieces()
    assert pieces[:3] == ["<unk>", "<s>", "</s>"]
    assert pieces[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    ids = tok.encode("hello")
    assert ids[0] == 1 and 2 not in ids  # BOS added, EOS not
    assert tok.encode("hello", add_bos=False) == ids[1:]
    assert tok.encode("hello", add_eos=True) == ids + [2]
    # dummy prefix: the first piece of a word starts with '▁'
    assert tok.id_to_piece(ids[1]).startswith("\u2581")
    assert tok.add_dummy_prefix


@pytest.mark.parametrize("text", VARIED)
def test_decode_inverts_encode(sp_tokenizer, text):
    ids = sp_tokenizer.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert sp_tokenizer.decode(ids) == text


def test_byte_fallback_and_no_unk(sp_tokenizer):
    # '🦙' never occurs in the training text, so it must come out as its UTF-8 bytes
    ids = sp_tokenizer.encode("🦙", add_bos=False)
    byte_ids = [3 + b for b in "🦙".encode("utf-8")]
    assert ids[-4:] == byte_ids and len(ids) <= 5
    assert [sp_tokenizer.id_to_piece(i) for i in byte_ids] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert sp_tokenizer.unk_id not in sp_tokenizer.encode("".join(VARIED))


def test_text_that_is_not_unicode_is_refused_by_name(sp_tokenizer):
    """A lone surrogate (a command-line argument that is not UTF-8 arrives as one) got SentencePiece's RuntimeError
    about a C++ cast, from every path that tokenizes."""
    for encode in (sp_tokenizer.encode, sp_tokenizer.encode_plain):
        with pytest.raises(ValueError, match="the text holds a lone UTF-16 surrogate at index 3"):
            encode("hi \udcff there")
    with pytest.raises(ValueError, match="text 1 holds a lone UTF-16 surrogate at index 0"):
        sp_tokenizer.encode_batch(["fine", "\ud800"])


def test_decode_skips_control_tokens(sp_tokenizer):
    ids = sp_tokenizer.encode("abc def", add_eos=True)
    assert sp_tokenizer.decode(ids) == "abc def"
    assert sp_tokenizer.decode([1, 2] + ids[1:-1] + [2, 2]) == "abc def"
    import torch

    assert sp_tokenizer.decode(torch.tensor(ids)) == "abc def"


def test_token_types(sp_tokenizer):
    types = sp_tokenizer.token_types()
    assert len(types) == sp_tokenizer.vocab_size
    assert types[0] == TOKEN_TYPE_UNKNOWN
    assert types[1] == types[2] == TOKEN_TYPE_CONTROL
    assert set(types[3:259]) == {TOKEN_TYPE_BYTE}
    assert set(types[259:]) == {TOKEN_TYPE_NORMAL}
    scores = sp_tokenizer.scores()
    assert len(scores) == sp_tokenizer.vocab_size
    # BPE: merge priority decreases with the id
    assert all(a >= b for a, b in zip(scores[259:], scores[260:]))
    g = sp_tokenizer.gguf_vocab()
    assert g["model"] == "llama" and g["tokens"] == sp_tokenizer.pieces()
    assert (g["bos_token_id"], g["eos_token_id"], g["unknown_token_id"]) == (1, 2, 0)


def test_serialized_round_trip(sp_tokenizer, sp_model_path, tmp_path):
    data = sp_tokenizer.serialized()
    with open(sp_model_path, "rb") as fh:
        assert data == fh.read()  # exactly the model file
    tok2 = SentencePieceTokenizer.from_bytes(data)
    assert tok2.serialized() == data
    text = " ".join(VARIED)
    assert tok2.encode(text) == sp_tokenizer.encode(text)
    saved = tok2.save(tmp_path / "sub" / "tokenizer.model")
    assert open(saved, "rb").read() == data
    tok3 = pickle.loads(pickle.dumps(sp_tokenizer))
    assert tok3.encode(text) == sp_tokenizer.encode(text)
    assert tok3.checksum() == sp_tokenizer.checksum() == tok2.checksum()


def test_invalid_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(tmp_path / "nope.model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer.from_bytes(b"definitely not a protobuf \xff\xff")


def test_from_vocab_rebuilds_equivalent_model(sp_tokenizer):
    pytest.importorskip("google.protobuf")
    tok = sp_tokenizer
    g = tok.gguf_vocab()
    rebuilt = SentencePieceTokenizer.from_vocab(
        g["tokens"], g["scores"], g["token_type"], g["bos_token_id"], g["eos_token_id"], g["unknown_token_id"])
    assert rebuilt.vocab_size == tok.vocab_size
    assert rebuilt.pieces() == tok.pieces()
    assert rebuilt.token_types() == tok.token_types()
    assert (rebuilt.bos_id, rebuilt.eos_id, rebuilt.unk_id) == (1, 2, 0)
    corpus = VARIED + ["The quick brown fox jumps over the lazy dog. " * 5, "x" * 300 + " " * 17 + "y"]
    for text in corpus:
        assert rebuilt.encode(text, add_eos=True) == tok.encode(text, add_eos=True), text
        assert rebuilt.decode(tok.encode(text)) == text
    # GGUF readers hand tokens back as bytes sometimes
    rebuilt_b = SentencePieceTokenizer.from_vocab(
        [t.encode("utf-8") for t in g["tokens"]], g["scores"], g["token_type"], 1, 2, 0)
    assert rebuilt_b.encode(corpus[4]) == tok.encode(corpus[4])


def test_from_vocab_errors(sp_tokenizer):
    pytest.importorskip("google.protobuf")
    g = sp_tokenizer.gguf_vocab()
    with pytest.raises(ValueError, match="lengths differ"):
        SentencePieceTokenizer.from_vocab(g["tokens"], g["scores"][:-1], g["token_type"])
    with pytest.raises(ValueError, match="out of range"):
        SentencePieceTokenizer.from_vocab(g["tokens"], g["scores"], g["token_type"], bos=10_000)
    with pytest.raises(ValueError, match="token_type"):
        SentencePieceTokenizer.from_vocab(g["tokens"], g["scores"], [9] * len(g["tokens"]))


def test_train_small_corpus_user_symbols_and_vocab_limits(tmp_path, capsys):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("one two three four five six seven eight nine ten\n" * 30, encoding="utf-8")
    b.write_text("alpha beta gamma delta epsilon <|sep|> zeta eta theta\n" * 30, encoding="utf-8")
    # far bigger than the corpus supports: hard_vocab_limit=False gives a smaller vocab
    path = train_sentencepiece([a, b], tmp_path / "out" / "tok", vocab_size=2000,
                               user_defined_symbols=["<|sep|>"])
    out = capsys.readouterr().out
    assert path == str(tmp_path / "out" / "tok.model") and os.path.isfile(path)
    assert path in out
    tok = SentencePieceTokenizer(path)
    assert 260 < tok.vocab_size < 2000
    sep = tok.piece_to_id("<|sep|>")
    assert tok.token_type(sep) == TOKEN_TYPE_USER_DEFINED
    assert sep in tok.encode("gamma <|sep|> zeta")
    assert tok.decode(tok.encode("gamma <|sep|> zeta")) == "gamma <|sep|> zeta"


def test_train_errors(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("tiny corpus\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least"):
        train_sentencepiece(f, tmp_path / "tok", vocab_size=100)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_sentencepiece([f, tmp_path / "missing.txt"], tmp_path / "tok", vocab_size=300)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        train_sentencepiece(empty, tmp_path / "tok", vocab_size=300)
    with pytest.raises(ValueError, match="too small|vocab"):
        train_sentencepiece(f, tmp_path / "tok", vocab_size=2000, hard_vocab_limit=True)
    with pytest.raises(ValueError, match="files"):
        train_sentencepiece(None, tmp_path / "tok", vocab_size=300)
    many_chars = tmp_path / "chars.txt"
    many_chars.write_text("".join(chr(0x4E00 + i) for i in range(120)) * 20 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="distinct characters"):
        train_sentencepiece(many_chars, tmp_path / "tok", vocab_size=300)
    one_line = tmp_path / "one-line.txt"  # SentencePiece skips it whole and said "INTERNAL: [!sentences_.empty()]"
    one_line.write_text("a long line of words " * 100, encoding="utf-8")
    with pytest.raises(ValueError, match=r"no line of .*one-line.txt.* longer than max_sentence_length=1000 bytes"):
        train_sentencepiece(one_line, tmp_path / "tok", vocab_size=300, max_sentence_length=1000)


def test_training_is_deterministic(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Some words repeat, some words do not; repeat words.\n" * 40, encoding="utf-8")
    a = SentencePieceTokenizer(train_sentencepiece(f, tmp_path / "tok", vocab_size=300)).serialized()
    b = SentencePieceTokenizer(train_sentencepiece(f, tmp_path / "tok", vocab_size=300)).serialized()
    assert a == b


def test_train_from_texts(tmp_path):
    path = train_sentencepiece(None, tmp_path / "t", vocab_size=300,
                               texts=["first document\nwith two lines", "second document"])
    tok = SentencePieceTokenizer(path)
    assert tok.decode(tok.encode("second document")) == "second document"
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bllama_spm_")]  # temp file removed


class FakeHF:
    """The parts of a transformers tokenizer that load_tokenizer relies on."""

    eos_token_id = 3
    bos_token_id = 1
    vocab_size = 7

    def __init__(self):
        self.words = {"<pad>": 0, "<s>": 1, "hi": 2, "</s>": 3, "there": 4, "you": 5, "[NEW]": 7}

    def __len__(self):  # includes an added token beyond vocab_size
        return 8

    def encode(self, text):
        return [1] + [self.words[w] for w in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        inv = {v: k for k, v in self.words.items()}
        return " ".join(inv[i] for i in ids if not (skip_special_tokens and i in (0, 1, 3)))


def test_load_tokenizer_variants(sp_tokenizer, sp_model_path, tmp_path):
    assert load_tokenizer(sp_tokenizer) is sp_tokenizer
    t = load_tokenizer(sp_model_path)
    assert isinstance(t, SentencePieceTokenizer) and t.encode("abc") == sp_tokenizer.encode("abc")
    d = tmp_path / "ckpt"
    d.mkdir()
    sp_tokenizer.save(d / "tokenizer.model")
    assert load_tokenizer(d).encode("abc") == sp_tokenizer.encode("abc")
    assert load_tokenizer(sp_tokenizer.serialized()).vocab_size == sp_tokenizer.vocab_size
    assert load_tokenizer(sp_tokenizer.sp).encode("abc") == sp_tokenizer.encode("abc")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nothing.model")
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(TypeError):
        load_tokenizer(42)


def test_wrapper_for_hf_like_tokenizer():
    w = load_tokenizer(FakeHF())
    assert isinstance(w, TokenizerWrapper)
    assert w.eos_id == 3 and w.bos_id == 1
    assert w.vocab_size == 8
    assert w.encode("hi there") == [1, 2, 4]
    assert w.encode("hi there", add_bos=False) == [2, 4]
    assert w.encode("hi there", add_eos=True) == [1, 2, 4, 3]
    assert w.decode([1, 2, 4, 3]) == "hi there"


def test_wrapper_without_eos():
    class Bare:
        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

        n_vocab = 256

    w = load_tokenizer(Bare())
    assert w.eos_id is None and w.vocab_size == 256
    assert w.decode(w.encode("héllo")) == "héllo"
    assert w.encode("ab", add_eos=True) == [97, 98]


def test_gguf_vocab_without_space_prefix_is_rebuilt_without_it(sp_tokenizer, tmp_path):
    """tokenizer.ggml.add_space_prefix = false (llama.cpp converters write it for SentencePiece models trained
    without the dummy prefix) was ignored: the rebuilt tokenizer put a '▁' before every text, so every prompt's ids
    differed from the model's. Our own exports write the key, so llama.cpp reads them the same way."""
    pytest.importorskip("google.protobuf")
    import gguf

    from bllama.convert.gguf_schema import add_tokenizer
    from bllama.convert.hf_load import _GGUFMetadata, _reader
    from bllama.tokenizers.from_gguf import tokenizer_from_gguf

    g = sp_tokenizer.gguf_vocab()
    ids = (g["bos_token_id"], g["eos_token_id"], g["unknown_token_id"])
    truth = SentencePieceTokenizer.from_vocab(g["tokens"], g["scores"], g["token_type"], *ids, add_dummy_prefix=False)
    assert not truth.add_dummy_prefix and sp_tokenizer.add_dummy_prefix

    class Meta:  # the engine's metadata interface over plain values
        def __init__(self, d):
            self.d = d

        def metadata_keys(self):
            return list(self.d)

        def metadata(self, k):
            return self.d[k]

    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": g["tokens"], "tokenizer.ggml.scores": g["scores"],
            "tokenizer.ggml.token_type": g["token_type"], "tokenizer.ggml.bos_token_id": ids[0],
            "tokenizer.ggml.eos_token_id": ids[1], "tokenizer.ggml.unknown_token_id": ids[2]}
    for text in ["Hello, world!", "numbers 3.14159", "x"]:
        assert tokenizer_from_gguf(Meta(meta)).encode(text) == sp_tokenizer.encode(text)  # absent: llama.cpp's true
        no_prefix = tokenizer_from_gguf(Meta({**meta, "tokenizer.ggml.add_space_prefix": False}))
        assert no_prefix.encode(text) == truth.encode(text) != sp_tokenizer.encode(text), text

    for tok, want in [(sp_tokenizer, True), (truth, False)]:  # what an export tells llama.cpp
        w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "bitnet")
        add_tokenizer(w, tok)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        assert _GGUFMetadata(_reader(tmp_path / "t.gguf")).metadata("tokenizer.ggml.add_space_prefix") is want


def test_gguf_add_eos_token_is_honoured(sp_tokenizer, tmp_path):
    """tokenizer.ggml.add_eos_token = true (llama.cpp then ends every tokenized text with EOS) was ignored by the
    tokenizer rebuilt from a GGUF file; our exports write the tokenizer's own setting instead of always false."""
    import gguf

    from bllama.convert.gguf_schema import add_tokenizer
    from bllama.convert.hf_load import _GGUFMetadata, _reader
    from bllama.tokenizers.from_gguf import tokenizer_from_gguf

    text = "Hello, world!"
    plain = sp_tokenizer.encode(text)
    for add_eos in (False, True):
        tok = SentencePieceTokenizer(sp_tokenizer.model_path)
        tok.add_eos = add_eos
        w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "bitnet")
        add_tokenizer(w, tok)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        meta = _GGUFMetadata(_reader(tmp_path / "t.gguf"))
        assert meta.metadata("tokenizer.ggml.add_eos_token") is add_eos
        for rebuilt in (tokenizer_from_gguf(meta), _without_sp_model(meta)):  # ours, and llama.cpp's own keys
            assert rebuilt.encode(text) == plain + [sp_tokenizer.eos_id] * add_eos
            assert rebuilt.encode(text, add_bos=False) == plain[1:]


def _without_sp_model(meta):
    """The tokenizer rebuilt from a file's llama.cpp keys alone (as from a file other tools wrote)."""
    from bllama.tokenizers.from_gguf import tokenizer_from_gguf

    meta.fields = {k: v for k, v in meta.fields.items() if k != "bllama.tokenizer.sp_model"}
    return tokenizer_from_gguf(meta)
