"""bitnet.cpp's files: I2_S weights (ggml type 36) and the `bitnet-b1.58` / `bitnet-25` architectures of the official
BitNet b1.58 2B-4T GGUF, with its byte-level BPE tokenizer stored as GGUF `gpt2` keys (no tokenizer.json).

No such file can be downloaded here, so the tests write one the way bitnet.cpp's converter does (the layout is
checked byte by byte against a literal transcription of its quantize_i2_s loop) and require the engine to run it
exactly as it runs the same weights stored as TQ2_0.
"""
from __future__ import annotations

import numpy as np
import pytest

from bllama import _engine
from bllama.convert.gguf_schema import add_ternary_tensor, pack_i2_s
from bllama.runtime import Runtime
from bllama.tokenizers.bpe import BPETokenizer, tokenizer_json_from_gguf

from hf_checkpoints import SPECIALS, TEXT

tokenizers = pytest.importorskip("tokenizers")

D, F, H, HKV, LAYERS = 256, 512, 4, 2, 2
PROJ = {"attn_q": (D, D), "attn_k": (D // H * HKV, D), "attn_v": (D // H * HKV, D), "attn_output": (D, D),
        "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F)}


def i2_s_reference(codes: np.ndarray, scale: float) -> bytes:
    """quantize_i2_s's packing loop, transcribed literally: for block i and value j, byte i*32 + j%32 gets
    (q << (6 - 2*(j/32))); then the fp32 scale right after the n/4 code bytes, in a 32-byte tail."""
    q = (codes.reshape(-1).astype(np.int64) + 1).tolist()
    out = bytearray(len(q) // 4 + 32)
    for i in range(len(q) // 128):
        for j in range(128):
            out[i * 32 + j % 32] |= q[i * 128 + j] << (6 - 2 * (j // 32))
    out[len(q) // 4:len(q) // 4 + 4] = np.float32(scale).tobytes()
    return bytes(out)


def test_pack_i2_s_is_bitnet_cpp_layout():
    rng = np.random.default_rng(0)
    for rows, cols in [(1, 256), (3, 512), (5, 768)]:
        codes = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
        assert pack_i2_s(codes, 0.37).tobytes() == i2_s_reference(codes, 0.37)
    hand = np.zeros((1, 256), np.int8)
    hand[0, [0, 32, 96]] = [1, -1, 1]  # byte 0: columns 0, 32, 64, 96 as 2, 0, 1, 2 from the top bits down
    assert pack_i2_s(hand, 1.0)[0] == 0b10000110
    with pytest.raises(ValueError, match="multiple of 256"):
        pack_i2_s(np.zeros((2, 128), np.int8), 1.0)


def llama3_style_tokenizer() -> BPETokenizer:
    """A small byte-level BPE trained like LLaMA-3's: its split pattern, then ByteLevel without the GPT-2 regex,
    ignore_merges, the specials as added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from bllama.tokenizers.bpe import LLAMA3_SPLIT

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT + " 12345 3.14159 can't WON'T naïve café\n\n\tend"], trainer)
    return BPETokenizer(tok.to_str(), bos_id=0, eos_ids=[1, 2])


SAMPLES = ["The quick brown fox", "  leading spaces and 1234567 digits", "can't won't I'LL", "naïve café ☕ 😀",
           "line one\nline two\r\n\n\ttab", "<|begin_of_text|>Hello<|eot_id|> world", "", "x" * 50]


@pytest.mark.parametrize("pre", ["llama-bpe", "gpt2", "gpt-2"])
def test_gpt2_gguf_vocab_rebuilds_the_tokenizer(pre):
    """tokens / token types / merges (what a GGUF file keeps) plus the pre-tokenizer's name give back the
    tokenizer: the same ids for every sample, specials matched whole, and the same text back."""
    if pre == "llama-bpe":
        ref = llama3_style_tokenizer()
    else:
        from hf_checkpoints import bpe_tokenizer_json

        ref = BPETokenizer(bpe_tokenizer_json(), bos_id=0, eos_ids=[1])
    v = ref.gguf_vocab()
    rebuilt = BPETokenizer(tokenizer_json_from_gguf(v["tokens"], v["merges"], v["token_type"], pre),
                           bos_id=0, eos_ids=[1])
    for text in SAMPLES:
        assert rebuilt.encode(text) == ref.encode(text), text
        assert rebuilt.decode(rebuilt.encode(text)) == ref.decode(ref.encode(text))
    assert rebuilt.encode("<|eot_id|>", add_bos=False) == [2]
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        tokenizer_json_from_gguf(v["tokens"], v["merges"], v["token_type"], "deepseek-coder")



def byte_level_tokenizer(kind: str) -> BPETokenizer:
    """A small byte-level BPE with the pre-tokenizer of GPT-2, LLaMA-3, Qwen2 (and its NFC) or SmolLM, built as their
    tokenizer.json files have it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from bllama.tokenizers.bpe import LLAMA3_SPLIT, QWEN2_SPLIT

    tok = Tokenizer(models.BPE())
    split = lambda r: [pre_tokenizers.Split(Regex(r), behavior="isolated"),
                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = {
        "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
        "llama3": lambda: pre_tokenizers.Sequence(split(LLAMA3_SPLIT)),
        "qwen2": lambda: pre_tokenizers.Sequence(split(QWEN2_SPLIT)),
        "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    }[kind]()
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT + " 12345 3.14159 (x) can't WON'T naïve café 日本語\n\n\tend  ok"] * 3, trainer)
    return BPETokenizer(tok.to_str(), bos_id=0, eos_ids=[1, 2])


def _tokenizer_gguf(tmp_path, tok):
    import gguf

    from bllama.convert.gguf_schema import add_tokenizer
    from bllama.convert.hf_load import _GGUFMetadata, _reader

    w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "bitnet")
    add_tokenizer(w, tok)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return _GGUFMetadata(_reader(tmp_path / "tok.gguf"))


@pytest.mark.parametrize("kind, name", [("gpt2", "gpt-2"), ("llama3", "llama-bpe"), ("qwen2", "qwen2"),
                                        ("smollm", "smollm")])
def test_export_names_the_pre_tokenizer_llama_cpp_splits_with(tmp_path, kind, name):
    """tokenizer.ggml.pre was chosen by vocabulary size ("llama-bpe" from 128000 tokens, else "default"), so
    llama.cpp split an exported GPT-2, Qwen2 or SmolLM style tokenizer's text its own default way: other token ids,
    silently. It is now the name of the tokenizer's own split, and the tokenizer rebuilt from the file's llama.cpp
    keys alone (as from a file llama.cpp wrote) gives the same ids."""
    from bllama.tokenizers.from_gguf import tokenizer_from_gguf

    ref = byte_level_tokenizer(kind)
    meta = _tokenizer_gguf(tmp_path, ref)
    assert meta.metadata("tokenizer.ggml.pre") == name
    meta.fields = {k: v for k, v in meta.fields.items() if k != "bllama.tokenizer.hf_json"}
    rebuilt = tokenizer_from_gguf(meta)
    for text in SAMPLES + ["x (12345) 3.14159 + a|b", "e\u0301 cafe\u0301 ñ"]:
        assert rebuilt.encode(text) == ref.encode(text), text


def test_export_of_a_pre_tokenizer_llama_cpp_cannot_name_warns(tmp_path):
    """A split llama.cpp has no name for is said at export, and the key is left out (llama.cpp then warns that
    generation quality will be degraded) rather than naming another split; our engine reads the exact JSON."""
    import json

    ref = byte_level_tokenizer("gpt2")
    tj = json.loads(ref.json_text)
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Punctuation", "behavior": "Isolated"},
                                                                 tj["pre_tokenizer"]]}
    tok = BPETokenizer(json.dumps(tj), bos_id=0, eos_ids=[1])
    with pytest.warns(UserWarning, match="not one llama.cpp knows by name"):
        meta = _tokenizer_gguf(tmp_path, tok)
    assert "tokenizer.ggml.pre" not in meta.fields


def test_default_pre_splits_as_llama_cpp_does():
    """"default" (or no tokenizer.ggml.pre) is llama.cpp's own split, which is not GPT-2's: punctuation runs first,
    then GPT-2's regex, digit runs, 3-digit groups. It was read as GPT-2's."""
    from tokenizers import Tokenizer

    v = byte_level_tokenizer("gpt2").gguf_vocab()
    pre = Tokenizer.from_str(tokenizer_json_from_gguf(v["tokens"], v["merges"], v["token_type"], "default"))
    gpt2 = Tokenizer.from_str(tokenizer_json_from_gguf(v["tokens"], v["merges"], v["token_type"], "gpt-2"))
    split = lambda t, s: [p for p, _ in t.pre_tokenizer.pre_tokenize_str(s)]
    assert split(pre, "x (12345)") == ["x", "Ġ", "(", "123", "45", ")"]
    assert split(gpt2, "x (12345)") == ["x", "Ġ(", "12345", ")"]


@pytest.mark.parametrize("pre, add_bos_key, bos_first", [("default", None, False), ("gpt-2", None, False),
                                                         ("llama-bpe", None, True), ("default", True, True),
                                                         ("llama-bpe", False, False)])
def test_gpt2_gguf_without_add_bos_key_follows_llama_cpp(pre, add_bos_key, bos_first):
    """Without tokenizer.ggml.add_bos_token, a byte-level BPE file got BOS before every prompt whatever its
    pre-tokenizer; llama.cpp puts one first for the LLaMA-3 family only (a GPT-2 style model never saw one), so
    every prompt of such a file started with a token its model does not expect. llama.cpp's name for GPT-2's split,
    "gpt-2", was refused as unknown."""
    from hf_checkpoints import bpe_tokenizer_json

    from bllama.tokenizers.from_gguf import tokenizer_from_gguf

    v = BPETokenizer(bpe_tokenizer_json(), bos_id=0, eos_ids=[1]).gguf_vocab()
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": v["tokens"],
            "tokenizer.ggml.token_type": v["token_type"], "tokenizer.ggml.merges": v["merges"],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    if add_bos_key is not None:
        meta["tokenizer.ggml.add_bos_token"] = add_bos_key

    class Meta:
        def metadata_keys(self):
            return list(meta)

        def metadata(self, k):
            return meta[k]

    tok = tokenizer_from_gguf(Meta())
    ids = tok.encode("The quick brown fox")
    assert (ids[0] == 0) is bos_first and ids[int(bos_first):] == tok.encode("The quick brown fox", add_bos=False)


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = {"token_embd.weight": (rng.standard_normal((320, D)) * 0.5).astype(np.float16),
         "output_norm.weight": rng.uniform(0.5, 2, D).astype(np.float32)}
    for i in range(LAYERS):
        for norm, n in (("attn_norm", D), ("attn_sub_norm", D), ("ffn_norm", D), ("ffn_sub_norm", F)):
            w[f"blk.{i}.{norm}.weight"] = rng.uniform(0.5, 2, n).astype(np.float32)
        for name, shape in PROJ.items():
            codes = rng.integers(-1, 2, size=shape, dtype=np.int8)
            codes[rng.random(shape) < 0.3] = 0
            w[f"blk.{i}.{name}.weight"] = codes
    return w


def write_file(path, weights, weight_type, arch, tokenizer, bllama_keys, chat_template=None):
    """bitnet.cpp-style when bllama_keys is False (its metadata only, gpt2 tokenizer keys, type 36 weights)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)
    w.add_rope_dimension_count(D // H)
    w.add_vocab_size(320)
    if bllama_keys:
        w.add_string("bllama.activation", "relu2")
    v = tokenizer.gguf_vocab(320)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(v["tokens"])
    w.add_token_types(v["token_type"])
    w.add_token_merges(v["merges"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_uint32("tokenizer.ggml.eot_token_id", 2)
    if chat_template:
        w.add_chat_template(chat_template)
    for name, t in weights.items():
        if t.dtype == np.int8:  # ternary codes, scale 1/64: exact in TQ2_0's fp16 d and in I2_S's fp32
            add_ternary_tensor(w, name, t, 1.0 / 64, weight_type)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("i2s")
    tok, w = llama3_style_tokenizer(), _weights()
    return {
        "official": write_file(d / "official.gguf", w, "i2_s", "bitnet-b1.58", tok, bllama_keys=False),
        "bitnet-25": write_file(d / "b25.gguf", w, "i2_s", "bitnet-25", tok, bllama_keys=False),
        "tq2_0": write_file(d / "tq2.gguf", w, "tq2_0", "bitnet", tok, bllama_keys=True),
        "tokenizer": tok,
    }


def test_bpe_refuses_text_that_is_not_unicode():
    tok = llama3_style_tokenizer()
    for encode in (tok.encode, tok.encode_plain):
        with pytest.raises(ValueError, match="the text holds a lone UTF-16 surrogate at index 1"):
            encode("a\ud800b")


def test_official_style_file_runs_exactly_like_tq2_0(files):
    """I2_S and the b1.58 architectures (ReLU^2 and the tied head by default) give bit-identical logits and
    tokens to the same weights as a TQ2_0 `bitnet` file that names its activation."""
    ref = _engine.Engine(str(files["tq2_0"]), threads=2)
    ids = [0, 5, 77, 200, 13, 9, 250, 31]
    want = ref.logits(ids)
    for key in ("official", "bitnet-25"):
        e = _engine.Engine(str(files[key]), threads=2)
        assert e.config["weight_type"] == "I2_S" and e.config["activation"] == "relu2"
        np.testing.assert_array_equal(e.logits(ids), want)
        assert e.generate(ids, 12) == ref.generate(ids, 12)


def test_gguf_tensors_names_i2_s(files):
    t = {x["name"]: x for x in _engine.gguf_tensors(str(files["official"]))}
    q = t["blk.0.ffn_down.weight"]
    assert q["type"] == "I2_S" and q["dims"] == [F, D] and q["nbytes"] == F * D // 4 + 32
    assert t["token_embd.weight"]["type"] == "F16" and t["output_norm.weight"]["nbytes"] == 4 * D


def test_official_style_file_through_runtime(files):
    rt = Runtime.load(files["official"], threads=2)
    tok = files["tokenizer"]
    assert isinstance(rt.tokenizer, BPETokenizer)
    assert rt.tokenizer.eos_ids == [1, 2]  # eos and eot both stop generation
    for text in SAMPLES:
        assert rt.tokenizer.encode(text) == tok.encode(text)
    out = rt.generate("The quick brown", max_new_tokens=8, stop_at_eos=False)
    assert isinstance(out, str) and rt.stats["generated_tokens"] == 8


def test_relu2_silu_decided_by_architecture(files, tmp_path):
    """`bitnet` without bllama.activation is SiLU, `bitnet-b1.58` is ReLU^2: the same weights differ."""
    tok, w = files["tokenizer"], _weights()
    silu = write_file(tmp_path / "silu.gguf", w, "i2_s", "bitnet", tok, bllama_keys=False)
    e = _engine.Engine(str(silu), threads=2)
    assert e.config["activation"] == "silu"
    ids = [3, 4, 5, 6]
    assert not np.array_equal(e.logits(ids), _engine.Engine(str(files["official"]), threads=2).logits(ids))


def test_corrupt_i2_s_files_are_refused(files, tmp_path):
    data = files["official"].read_bytes()
    p = tmp_path / "trunc.gguf"
    p.write_bytes(data[:-40])  # cuts into the last tensor's 32-byte scale tail
    with pytest.raises(Exception, match="runs past the end"):
        _engine.Engine(str(p), threads=1)
    # A code of 3 (bits 11) in the first projection's bytes: the loader names the tensor.
    at = data.find(pack_i2_s(_weights()["blk.0.attn_q.weight"], 1.0 / 64)[:64].tobytes())
    assert at > 0
    bad = bytearray(data)
    bad[at + 5] = 0xFF
    p = tmp_path / "code3.gguf"
    p.write_bytes(bytes(bad))
    with pytest.raises(Exception, match="blk.0.attn_q.weight.*code 3"):
        _engine.Engine(str(p), threads=1)
