"""Byte-level BPE tokenizers (LLaMA-3 style `tokenizer.json`) through the Hugging Face `tokenizers` library.

`BPETokenizer` has the same small interface as `SentencePieceTokenizer`: ``encode(text, add_bos=True,
add_eos=None)``, ``decode(ids)``, ``bos_id``, ``eos_id``, ``eos_ids`` (every id that ends generation),
``unk_id``, ``vocab_size``. BOS and EOS are added by us (never by the file's post-processor) as ``add_bos`` /
``add_eos`` say (the importer reads them from the folder's tokenizer_config.json and post-processor), so that
encoding does not depend on how a given tokenizer.json configures its template.

In a GGUF file the tokenizer lives twice: the exact `tokenizer.json` bytes in ``bllama.tokenizer.hf_json``
(what the Runtime uses) and the standard ``tokenizer.ggml.model = "gpt2"`` tokens / token types / merges so
llama.cpp can read it too.
"""
from __future__ import annotations

import json
from typing import Iterable, List, Optional, Sequence

from .text import check_text

__all__ = ["BPETokenizer", "tokenizer_json_from_gguf"]

TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_UNUSED = 1, 3, 4, 5

# A GGUF file names its pre-tokenizer (tokenizer.ggml.pre, llama.cpp's names) rather than storing it, and llama.cpp
# splits text with its own regexes for that name. The families we name and rebuild, with llama.cpp's names for each:
# LLaMA-3's split (letters, numbers of up to 3 digits, punctuation runs, newline runs), Qwen2's (the same with single
# digits), GPT-2's (byte-level BPE's own default: ByteLevel with use_regex), SmolLM's (single digits, then GPT-2's),
# and llama.cpp's "default" (what it uses for that name or a missing one: punctuation runs, GPT-2's, digit runs,
# then 3-digit groups, applied one after the other).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]")
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
QWEN2_PRE = ("qwen2", "deepseek-r1-qwen", "megrez")
SMOLLM_PRE = ("smollm",)
GPT2_PRE = ("gpt-2", "gpt2")  # "gpt-2" is llama.cpp's name for GPT-2's own split ("gpt2" is not one, read anyway)
DEFAULT_PRE = ("default",)


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def llama_cpp_pre(tokenizer_json: dict) -> Optional[str]:
    """llama.cpp's tokenizer.ggml.pre name for a tokenizer.json's pre-tokenizer (the name under which llama.cpp splits
    text the same way), or None when it has none: not byte-level BPE, or a split llama.cpp does not know by name."""
    model, pre = tokenizer_json.get("model") or {}, tokenizer_json.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or (tokenizer_json.get("normalizer") or {}).get("type") not in (None, "NFC"):
        return None  # llama.cpp's gpt2 vocabulary runs no normalizer (NFC: Qwen2's, which llama.cpp skips too)
    shape = []
    for step in pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]:
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space"):
            shape.append(("ByteLevel", bool(step.get("use_regex", True))))
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            shape.append(("Split", (step.get("pattern") or {}).get("Regex")))
        elif kind == "Digits":
            shape.append(("Digits", bool(step.get("individual_digits"))))
        else:
            return None
    return {(("ByteLevel", True),): GPT2_PRE[0],
            (("Split", LLAMA3_SPLIT), ("ByteLevel", False)): LLAMA3_PRE[0],
            (("Split", QWEN2_SPLIT), ("ByteLevel", False)): QWEN2_PRE[0],
            (("Digits", True), ("ByteLevel", True)): SMOLLM_PRE[0]}.get(tuple(shape))


def tokenizer_json_from_gguf(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                             pre: str = "default") -> str:
    """A `tokenizer.json` for a byte-level BPE vocabulary stored as GGUF `gpt2` keys (tokens, token types, merges,
    the pre-tokenizer's name), as in files converted by llama.cpp or bitnet.cpp without our own
    `bllama.tokenizer.hf_json`. Control and user-defined tokens become added tokens (matched whole, before BPE)."""
    if pre in LLAMA3_PRE:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [_split(LLAMA3_SPLIT), _byte_level(False)]}
    elif pre in QWEN2_PRE:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [_split(QWEN2_SPLIT), _byte_level(False)]}
    elif pre in SMOLLM_PRE:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                               _byte_level(True)]}
    elif pre in GPT2_PRE:
        pre_tokenizer = _byte_level(True)
    elif pre in DEFAULT_PRE:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [_split(r) for r in DEFAULT_SPLITS] + [_byte_level(False)]}
    else:
        raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r}: byte-level BPE files with the pre-tokenizer "
                         f"{', '.join(LLAMA3_PRE + QWEN2_PRE + SMOLLM_PRE + GPT2_PRE + DEFAULT_PRE)} can be read")
    if len(token_types) != len(tokens):
        raise ValueError(f"tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens")
    # Every token goes into the BPE vocabulary (the library gives an added token that is not in it the next free
    # id, whatever the file says); control and user-defined ones are added tokens as well.
    vocab, added = {}, []
    for i, (piece, kind) in enumerate(zip(tokens, token_types)):
        piece, kind = str(piece), int(kind)  # the engine's metadata arrays hold numpy scalars
        vocab.setdefault(piece, i)
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
            added.append({"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": kind == TOKEN_TYPE_CONTROL})
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "ignore_merges": pre in LLAMA3_PRE, "vocab": vocab, "merges": [str(m) for m in merges]}
    # Qwen2's tokenizer composes text (NFC) before splitting it; llama.cpp skips that, the model was trained with it
    normalizer = {"type": "NFC"} if pre in QWEN2_PRE else None
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                       "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": None,
                       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                   "use_regex": True},
                       "model": model})


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - install_requires has it
        raise ImportError("byte-level BPE tokenizers need the `tokenizers` package (pip install tokenizers)") from e
    return tokenizers


class BPETokenizer:
    """A `tokenizers.Tokenizer` plus the model's special ids."""

    def __init__(self, json_text: str, bos_id: Optional[int] = None, eos_ids: Sequence[int] = (),
                 add_bos: bool = True, chat_template: Optional[str] = None, add_eos: bool = False):
        tk = _tokenizers()
        try:
            self.tok = tk.Tokenizer.from_str(json_text)
        except Exception as e:  # the library raises its own Exception subclass
            raise ValueError(f"not a valid tokenizer.json: {e}") from e
        self.json_text = json_text
        self._bos = bos_id
        self._eos = [int(i) for i in eos_ids]
        self.add_bos = bool(add_bos) and bos_id is not None
        self.add_eos = bool(add_eos) and bool(self._eos)  # the model's texts end with eos_ids[0]
        self.chat_template = chat_template
        n = self.vocab_size
        for what, i in [("bos", bos_id)] + [("eos", e) for e in self._eos]:
            if i is not None and not 0 <= i < n:
                raise ValueError(f"{what} id {i} is outside the tokenizer's vocabulary [0, {n})")

    @classmethod
    def from_file(cls, path, **kw) -> "BPETokenizer":
        with open(path, encoding="utf-8") as fh:
            return cls(fh.read(), **kw)

    # -- the common interface ------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, add_eos: Optional[bool] = None) -> List[int]:
        """Token ids of `text`: BOS first where the model uses one (add_bos=False: never); EOS last with
        add_eos=True, never with False, and with None (the default) where the model's tokenizer ends every text
        with it (add_eos_token) unless add_bos=False asked for a bare piece of text."""
        ids = self.tok.encode(check_text(text, "the text"), add_special_tokens=False).ids
        if add_bos and self.add_bos:
            ids = [self._bos] + ids
        if add_eos is None:
            add_eos = add_bos and self.add_eos
        if add_eos and self._eos:
            ids = ids + [self._eos[0]]
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True,
                     add_eos: Optional[bool] = None) -> List[List[int]]:
        return [self.encode(t, add_bos, add_eos) for t in texts]

    def encode_plain(self, text: str) -> List[int]:
        """`text` as plain text: a special token's spelling inside it is encoded as characters, never as the
        control token (chat message contents: a user must not be able to write <|eot_id|> and forge a turn)."""
        plain = getattr(self, "_plain", None)
        if plain is None:  # a second tokenizer, so the shared one's settings never change under another thread
            plain = _tokenizers().Tokenizer.from_str(self.json_text)
            plain.encode_special_tokens = True
            self._plain = plain
        return plain.encode(check_text(text, "the text"), add_special_tokens=False).ids

    def special_pieces(self) -> dict:
        """{spelling: id} of the control (special) tokens: what a chat template writes to get them."""
        return {t.content: int(i) for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def matched_pieces(self) -> dict:
        """{spelling: id} of the added tokens not marked special: the library finds them in any text, plain text
        included (a fine-tune's ChatML markers are sometimes added so)."""
        return {t.content: int(i) for i, t in self.tok.get_added_tokens_decoder().items() if not t.special}

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos

    @property
    def eos_id(self) -> Optional[int]:
        return self._eos[0] if self._eos else None

    @property
    def eos_ids(self) -> List[int]:
        return list(self._eos)

    @property
    def unk_id(self) -> Optional[int]:
        return None

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(int(i))

    def piece_to_id(self, piece: str) -> Optional[int]:
        return self.tok.token_to_id(piece)

    # -- GGUF ----------------------------------------------------------------------------------------------
    def gguf_vocab(self, vocab_size: Optional[int] = None) -> dict:
        """tokens / token_type / merges for the standard `gpt2` GGUF tokenizer keys, padded to vocab_size."""
        data = json.loads(self.json_text)
        n = max(self.vocab_size, vocab_size or 0)
        tokens: List[Optional[str]] = [None] * n
        types = [TOKEN_TYPE_NORMAL] * n
        for piece, i in self.tok.get_vocab(with_added_tokens=True).items():
            if 0 <= i < n:
                tokens[i] = piece
        for added in data.get("added_tokens", []):
            i = added.get("id")
            if isinstance(i, int) and 0 <= i < n:
                types[i] = TOKEN_TYPE_CONTROL if added.get("special") else TOKEN_TYPE_USER_DEFINED
        for i, t in enumerate(tokens):
            if t is None:  # ids the model has but the tokenizer never produces
                tokens[i], types[i] = f"[PAD{i}]", TOKEN_TYPE_UNUSED
        merges = (data.get("model") or {}).get("merges") or []
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]  # newer files store pairs
        return {"tokens": tokens, "token_type": types, "merges": merges}

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab={self.vocab_size}, bos={self._bos}, eos={self._eos})"
