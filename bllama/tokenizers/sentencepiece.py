"""Tokenizers for bLLaMa.

The native tokenizer is a SentencePiece BPE model in the LLaMA convention:
``<unk>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2, no pad piece, byte
fallback pieces ``<0x00>``..``<0xFF>`` (ids 3..258), a dummy ``▁`` prefix,
identity normalisation and whitespace runs preserved (so ``decode(encode(t))``
gives ``t`` back for any text).  ``encode`` adds BOS by default and never EOS.

:func:`load_tokenizer` also wraps foreign tokenizers (Hugging Face, a raw
``sentencepiece.SentencePieceProcessor``, anything with ``encode``/``decode``)
behind the same small interface: ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``eos_id`` (``None`` if unknown), ``vocab_size``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from typing import Any, Iterable, Sequence

import sentencepiece as spm

from ..atomic import atomic_files, atomic_write, check_writable
from .text import check_text

__all__ = [
    "TOKEN_TYPE_NORMAL",
    "TOKEN_TYPE_UNKNOWN",
    "TOKEN_TYPE_CONTROL",
    "TOKEN_TYPE_USER_DEFINED",
    "TOKEN_TYPE_UNUSED",
    "TOKEN_TYPE_BYTE",
    "train_sentencepiece",
    "SentencePieceTokenizer",
    "TokenizerWrapper",
    "load_tokenizer",
    "tokenizer_checksum",
]

# GGUF ``tokenizer.ggml.token_type`` codes (same numbering as llama.cpp).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

# SentencePiece ModelProto.SentencePiece.Type enum values.
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER_DEFINED, _SP_BYTE, _SP_UNUSED = 1, 2, 3, 4, 6, 5
_GGUF_TO_SP_TYPE = {
    TOKEN_TYPE_NORMAL: _SP_NORMAL,
    TOKEN_TYPE_UNKNOWN: _SP_UNKNOWN,
    TOKEN_TYPE_CONTROL: _SP_CONTROL,
    TOKEN_TYPE_USER_DEFINED: _SP_USER_DEFINED,
    TOKEN_TYPE_UNUSED: _SP_UNUSED,
    TOKEN_TYPE_BYTE: _SP_BYTE,
}

_N_SPECIAL = 3  # unk, bos, eos
_N_BYTES = 256


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def _train_interruptibly(kwargs: dict) -> None:
    """SentencePieceTrainer.train on a helper thread, the main thread waiting: SentencePiece releases the GIL but
    never looks at signals, so on the main thread Ctrl-C (or SIGTERM under `termination_raises`) waited for the
    whole training, minutes on a large corpus. Interrupted, the training is abandoned: it runs on, its result unused,
    until it ends or the process does (the command line exits at once)."""
    if threading.current_thread() is not threading.main_thread():  # no signals reach other threads anyway
        spm.SentencePieceTrainer.train(**kwargs)
        return
    failed: list = []

    def train():
        try:
            spm.SentencePieceTrainer.train(**kwargs)
        except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread
            failed.append(e)

    worker = threading.Thread(target=train, name="sentencepiece-train", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if failed:
        raise failed[0]


def train_sentencepiece(
    files: str | os.PathLike | Sequence[str | os.PathLike] | None,
    model_prefix: str | os.PathLike,
    vocab_size: int = 32000,
    *,
    texts: Iterable[str] | None = None,
    character_coverage: float = 0.99995,
    input_sentence_size: int = 2_000_000,
    max_sentence_length: int = 16384,
    num_threads: int = 2,
    hard_vocab_limit: bool = False,
    user_defined_symbols: Sequence[str] = (),
    seed_sentencepiece_size: int = 1_000_000,
    verbose: bool = False,
    **extra: Any,
) -> str:
    """Train a SentencePiece BPE tokenizer in the LLaMA convention.

    Args:
        files: one text file or a list of text files (one "sentence" per line,
            as SentencePiece reads them).  May be ``None`` when ``texts`` is given.
        model_prefix: output prefix; ``<prefix>.model`` and ``<prefix>.vocab``
            are written (parent directories are created).
        vocab_size: target vocabulary size, including the 3 special pieces and
            the 256 byte-fallback pieces (so it must be > 259).
        texts: optional iterable of documents (strings) used instead of / in
            addition to ``files``; they are split into lines.
        input_sentence_size: at most this many lines are sampled (shuffled)
            from big corpora; small corpora are used whole.
        max_sentence_length: lines longer than this many bytes are skipped by
            SentencePiece, so the default is generous.
        hard_vocab_limit: if False (default) a corpus too small for
            ``vocab_size`` yields a smaller vocabulary instead of an error.
        extra: passed verbatim to ``SentencePieceTrainer.train``.

    Returns:
        The path of the written ``.model`` file (also printed).
    """
    min_vocab = _N_SPECIAL + _N_BYTES + len(user_defined_symbols) + 1
    if vocab_size < min_vocab:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback needs {_N_SPECIAL} special + "
            f"{_N_BYTES} byte pieces (+{len(user_defined_symbols)} user symbols), so use at least {min_vocab}"
        )
    if files is None:
        file_list: list[str] = []
    elif isinstance(files, (str, os.PathLike)):
        file_list = [os.fspath(files)]
    else:
        file_list = [os.fspath(f) for f in files]
    for f in file_list:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"tokenizer training file not found: {f}")
        with open(f, "rb"):  # a PermissionError naming the file, not SentencePiece's RuntimeError after the others
            pass
    if not file_list and texts is None:
        raise ValueError("train_sentencepiece needs `files` or `texts`")

    model_prefix = os.fspath(model_prefix)
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    check_writable(model_prefix + ".model")  # before the training, not after

    kwargs: dict[str, Any] = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=max_sentence_length,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads,
        hard_vocab_limit=hard_vocab_limit,
        minloglevel=0 if verbose else 2,
    )
    if user_defined_symbols:
        kwargs["user_defined_symbols"] = list(user_defined_symbols)
    kwargs.update(extra)

    # SentencePiece wrote PREFIX.model and PREFIX.vocab itself, in place: a full disk or a kill while it wrote left
    # a truncated PREFIX.model where a good one had been. It hands the model over in memory instead (model_writer;
    # the model then records no output path of this machine) and both files are written through a temporary folder
    # beside them (with the corpus file of `texts`), moved into place only once both are complete; a killed run's
    # folder is removed by the next save of that tokenizer.
    model_bytes = io.BytesIO()
    kwargs["model_writer"] = model_bytes
    with atomic_files(model_prefix + ".model", model_prefix + ".vocab") as tmp_dir:
        if texts is not None and not file_list:
            # Only in-memory texts: feed them line by line, no temporary file.
            lines = [ln for t in texts for ln in t.split("\n") if ln]
            if not lines:
                raise ValueError("tokenizer training corpus is empty (texts has no text)")
            kwargs["sentence_iterator"] = iter(lines)
        else:
            if texts is not None:
                # Files and texts: add the texts to the corpus through a temporary file.
                tmp_path = os.path.join(tmp_dir, "texts.txt")
                with open(tmp_path, "w", encoding="utf-8") as fh:
                    for t in texts:
                        fh.write(t)
                        if not t.endswith("\n"):
                            fh.write("\n")
                file_list = file_list + [tmp_path]
            if all(os.path.getsize(f) == 0 for f in file_list):
                raise ValueError(f"tokenizer training corpus is empty: {file_list}")
            kwargs["input"] = file_list
        try:
            _train_interruptibly(kwargs)
        except RuntimeError as e:
            msg = str(e)
            if "required_chars" in msg:
                raise ValueError(
                    f"vocab_size={vocab_size} is too small for the distinct characters this corpus needs "
                    f"({msg.strip().rsplit(']', 1)[-1].strip()}); raise vocab_size or lower character_coverage"
                ) from e
            if "sentences_.empty()" in msg:  # SentencePiece's own words: "INTERNAL: ... [!sentences_.empty()]"
                raise ValueError(
                    f"no line of {file_list or 'texts'} to train a tokenizer on: lines longer than "
                    f"max_sentence_length={max_sentence_length} bytes are skipped (a file of one long line); break "
                    "the text into lines, or give an existing tokenizer (--tokenizer)"
                ) from e
            if "Vocabulary size" in msg or "vocab_size" in msg:
                raise ValueError(
                    f"corpus too small for vocab_size={vocab_size} ({msg.strip()}); "
                    "use a smaller vocab_size or hard_vocab_limit=False"
                ) from e
            raise
        sp = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
        n = sp.get_piece_size()
        base = os.path.basename(model_prefix)
        with open(os.path.join(tmp_dir, base + ".model"), "wb") as fh:
            fh.write(model_bytes.getvalue())
        with open(os.path.join(tmp_dir, base + ".vocab"), "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(n))  # SentencePiece's own
    path = model_prefix + ".model"
    note = "" if n == vocab_size else f" (asked for {vocab_size}; corpus too small for more)"
    print(f"bllama: wrote SentencePiece tokenizer to {path} (vocab {n}{note})")
    return path


# --------------------------------------------------------------------------
# the native tokenizer
# --------------------------------------------------------------------------
class SentencePieceTokenizer:
    """Thin wrapper around ``sentencepiece.SentencePieceProcessor``."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, model_proto: bytes | None = None):
        if (model_path is None) == (model_proto is None):
            raise ValueError("give exactly one of model_path or model_proto")
        if model_path is not None:
            model_path = os.fspath(model_path)
            if not os.path.isfile(model_path):
                raise FileNotFoundError(f"tokenizer model not found: {model_path}")
            with open(model_path, "rb") as fh:
                model_proto = fh.read()
        self.model_path = model_path
        self.chat_template: str | None = None  # a GGUF file's tokenizer.chat_template, set by tokenizer_from_gguf
        self.add_bos = True  # encode()'s BOS; a Hugging Face folder's add_bos_token can turn it off
        self.add_eos = False  # encode()'s EOS by default; a folder's add_eos_token (or a GGUF's) turns it on
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError
            src = model_path or "<bytes>"
            raise ValueError(f"not a valid SentencePiece model: {src}: {e}") from e

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        return cls(path)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SentencePieceTokenizer":
        return cls(model_proto=data)

    @classmethod
    def from_vocab(
        cls,
        tokens: Sequence[str | bytes],
        scores: Sequence[float],
        token_types: Sequence[int],
        bos: int | None = 1,
        eos: int | None = 2,
        unk: int | None = 0,
        *,
        add_dummy_prefix: bool = True,
        pad: int | None = None,
    ) -> "SentencePieceTokenizer":
        """Rebuild a SentencePiece BPE model from GGUF ``tokenizer.ggml.*`` arrays.

        ``tokens``/``scores``/``token_types`` are ``tokenizer.ggml.tokens``,
        ``.scores`` and ``.token_type``; ``bos``/``eos``/``unk`` the matching
        ``*_token_id`` keys.  Normalisation is identity (as in LLaMA's and our
        own tokenizers; GGUF does not carry a normaliser), whitespace runs are
        kept.  Byte fallback is enabled when byte pieces are present.
        Needs the ``protobuf`` package.
        """
        try:
            from sentencepiece import sentencepiece_model_pb2 as pb
        except ImportError as e:  # pragma: no cover - depends on environment
            raise ImportError("SentencePieceTokenizer.from_vocab needs the `protobuf` package") from e
        n = len(tokens)
        if not (len(scores) == n and len(token_types) == n):
            raise ValueError(
                f"tokens/scores/token_types lengths differ: {n}, {len(scores)}, {len(token_types)}"
            )
        if n == 0:
            raise ValueError("empty vocabulary")
        for name, idx in (("bos", bos), ("eos", eos), ("unk", unk), ("pad", pad)):
            if idx is not None and not (0 <= idx < n):
                raise ValueError(f"{name} id {idx} out of range for a vocabulary of {n}")

        m = pb.ModelProto()
        has_bytes = False
        for i, (tok, score, ttype) in enumerate(zip(tokens, scores, token_types)):
            ttype = int(ttype)
            if ttype not in _GGUF_TO_SP_TYPE:
                raise ValueError(f"token {i} has unknown token_type {ttype}")
            p = m.pieces.add()
            p.piece = tok.decode("utf-8") if isinstance(tok, (bytes, bytearray)) else str(tok)
            p.score = float(score)
            if i == unk:
                p.type = _SP_UNKNOWN
            elif i in (bos, eos, pad):
                p.type = _SP_CONTROL
            else:
                p.type = _GGUF_TO_SP_TYPE[ttype]
            has_bytes = has_bytes or p.type == _SP_BYTE
        if unk is None or m.pieces[unk].type != _SP_UNKNOWN:
            raise ValueError("a SentencePiece model needs an unknown piece (unk id)")

        ts = m.trainer_spec
        ts.model_type = pb.TrainerSpec.BPE
        ts.vocab_size = n
        ts.byte_fallback = has_bytes
        ts.unk_id = unk
        ts.bos_id = -1 if bos is None else bos
        ts.eos_id = -1 if eos is None else eos
        ts.pad_id = -1 if pad is None else pad
        ts.unk_piece = m.pieces[unk].piece
        if bos is not None:
            ts.bos_piece = m.pieces[bos].piece
        if eos is not None:
            ts.eos_piece = m.pieces[eos].piece
        if pad is not None:
            ts.pad_piece = m.pieces[pad].piece

        ns = m.normalizer_spec
        ns.name = "identity"
        ns.add_dummy_prefix = add_dummy_prefix
        ns.remove_extra_whitespaces = False
        ns.escape_whitespaces = True
        ns.precompiled_charsmap = b""
        return cls(model_proto=m.SerializeToString())

    # -- core API ---------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`: BOS first where the model uses one (add_bos=False: never); EOS last with
        add_eos=True, never with False, and with None (the default) where the model's tokenizer ends every text
        with it (add_eos) unless add_bos=False asked for a bare piece of text."""
        if add_eos is None:
            add_eos = add_bos and self.add_eos
        return self.sp.encode(check_text(text, "the text"),
                              add_bos=add_bos and self.add_bos and self.bos_id is not None,
                              add_eos=add_eos and self.eos_id is not None)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, add_eos: bool | None = None,
                     num_threads: int | None = None) -> list[list[int]]:
        texts = [check_text(t, f"text {i}") for i, t in enumerate(texts)]
        if add_eos is None:
            add_eos = add_bos and self.add_eos
        return self.sp.encode(texts, add_bos=add_bos and self.add_bos and self.bos_id is not None,
                              add_eos=add_eos and self.eos_id is not None,
                              num_threads=num_threads if num_threads is not None else -1)

    def encode_plain(self, text: str) -> list[int]:
        """`text` as plain text, no BOS: SentencePiece never produces a control token from text."""
        return self.sp.encode(check_text(text, "the text"))

    def special_pieces(self) -> dict[str, int]:
        """{spelling: id} of the control tokens (BOS, EOS, ...): what a chat template writes to get them."""
        pieces = getattr(self, "_control_cache", None)
        if pieces is None:
            pieces = {self.sp.id_to_piece(i): i for i in range(self.vocab_size) if self.sp.is_control(i)}
            self._control_cache = pieces
        return dict(pieces)

    def matched_pieces(self) -> dict[str, int]:
        """{spelling: id} of the user-defined pieces: SentencePiece finds them whole in any text (a fine-tune's
        ChatML markers are sometimes added so)."""
        pieces = getattr(self, "_user_cache", None)
        if pieces is None:
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto.FromString(self.serialized())
            user = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
            pieces = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == user}
            self._user_cache = pieces
        return dict(pieces)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; control tokens (BOS/EOS/...) are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        n = self.vocab_size
        return self.sp.decode([int(i) for i in ids if 0 <= int(i) < n])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    @staticmethod
    def _opt(i: int) -> int | None:
        return None if i < 0 else i

    @property
    def bos_id(self) -> int | None:
        return self._opt(self.sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return self._opt(self.sp.eos_id())

    @property
    def unk_id(self) -> int | None:
        return self._opt(self.sp.unk_id())

    @property
    def pad_id(self) -> int | None:
        return self._opt(self.sp.pad_id())

    # -- serialization / export ----------------------------------------------------
    def serialized(self) -> bytes:
        """The exact model proto bytes (what ``tokenizer.model`` contains)."""
        return self._proto

    def save(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        with atomic_write(path) as fh:
            fh.write(self._proto)
        return path

    def checksum(self) -> str:
        return "sha256:" + hashlib.sha256(self._proto).hexdigest()

    def pieces(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def scores(self) -> list[float]:
        return [float(self.sp.get_score(i)) for i in range(self.vocab_size)]

    def token_type(self, i: int) -> int:
        """GGUF token_type code of id ``i``."""
        sp = self.sp
        if sp.is_unknown(i):
            return TOKEN_TYPE_UNKNOWN
        if sp.is_control(i):
            return TOKEN_TYPE_CONTROL
        if sp.is_byte(i):
            return TOKEN_TYPE_BYTE
        if sp.is_unused(i):
            return TOKEN_TYPE_UNUSED
        return TOKEN_TYPE_USER_DEFINED if i in self._user_defined_ids() else TOKEN_TYPE_NORMAL

    def _user_defined_ids(self) -> frozenset[int]:
        ids = getattr(self, "_ud_cache", None)
        if ids is None:
            ids = frozenset(_user_defined_from_proto(self._proto))
            self._ud_cache = ids
        return ids

    def token_types(self) -> list[int]:
        return [self.token_type(i) for i in range(self.vocab_size)]

    def gguf_vocab(self) -> dict[str, Any]:
        """Everything GGUF's ``tokenizer.ggml.*`` keys need, as plain Python values."""
        return {
            "model": "llama",
            "tokens": self.pieces(),
            "scores": self.scores(),
            "token_type": self.token_types(),
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "unknown_token_id": self.unk_id,
            "padding_token_id": self.pad_id,
            "add_space_prefix": self.add_dummy_prefix,
        }

    @property
    def add_dummy_prefix(self) -> bool:
        # encode(" ") starting with '▁▁' would mean a prefix was added; cheaper
        # to test directly: "a" encodes to pieces starting with '▁' iff prefix.
        pieces = self.sp.encode("a", out_type=str)
        return bool(pieces) and pieces[0].startswith("\u2581")

    def __repr__(self) -> str:
        src = self.model_path or "<bytes>"
        return f"SentencePieceTokenizer({src!r}, vocab_size={self.vocab_size})"

    def __getstate__(self):
        return {"model_path": self.model_path, "proto": self._proto, "add_bos": self.add_bos,
                "add_eos": self.add_eos}

    def __setstate__(self, state):
        self.__init__(model_proto=state["proto"])
        self.model_path = state["model_path"]
        self.add_bos, self.add_eos = state.get("add_bos", True), state.get("add_eos", False)


def _user_defined_from_proto(proto: bytes) -> list[int]:
    """Ids of USER_DEFINED pieces, read straight from the protobuf wire format.

    (The processor has no ``is_user_defined``; parsing the few fields we need
    by hand avoids a hard dependency on ``protobuf`` for plain use.)
    """
    out: list[int] = []
    pos, n, idx = 0, len(proto), 0

    def varint(p: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            b = proto[p]
            p += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, p
            shift += 7

    while pos < n:
        key, pos = varint(pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = varint(pos)
            if field == 1:  # repeated SentencePiece pieces
                sub, end, ptype = pos, pos + length, _SP_NORMAL
                while sub < end:
                    k, sub = varint(sub)
                    f, w = k >> 3, k & 7
                    if w == 0:
                        v, sub = varint(sub)
                        if f == 3:
                            ptype = v
                    elif w == 2:
                        ln, sub = varint(sub)
                        sub += ln
                    elif w == 5:
                        sub += 4
                    elif w == 1:
                        sub += 8
                    else:
                        break
                if ptype == _SP_USER_DEFINED:
                    out.append(idx)
                idx += 1
            pos += length
        elif wire == 0:
            _, pos = varint(pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            break
    return out


# --------------------------------------------------------------------------
# foreign tokenizers
# --------------------------------------------------------------------------
class TokenizerWrapper:
    """Adapts any tokenizer with ``encode``/``decode`` to our interface."""

    def __init__(self, tok: Any):
        if not (callable(getattr(tok, "encode", None)) and callable(getattr(tok, "decode", None))):
            raise TypeError(f"{type(tok).__name__} has no encode()/decode() methods")
        self.tok = tok

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        ids = self.tok.encode(text)
        if hasattr(ids, "ids"):  # `tokenizers.Encoding`
            ids = ids.ids
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bos = self.bos_id
        if bos is not None:
            has_bos = bool(ids) and ids[0] == bos
            if add_bos and not has_bos:
                ids.insert(0, bos)
            elif not add_bos and has_bos:
                ids = ids[1:]
        eos = self.eos_id
        if add_eos and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        try:
            return self.tok.decode(ids, skip_special_tokens=True)
        except TypeError:
            return self.tok.decode(ids)

    def _int_attr(self, *names: str) -> int | None:
        for name in names:
            v = getattr(self.tok, name, None)
            if callable(v):
                try:
                    v = v()
                except TypeError:
                    continue
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                return v
        return None

    @property
    def eos_id(self) -> int | None:
        return self._int_attr("eos_token_id", "eos_id", "eot_token")

    @property
    def bos_id(self) -> int | None:
        return self._int_attr("bos_token_id", "bos_id")

    @property
    def unk_id(self) -> int | None:
        return self._int_attr("unk_token_id", "unk_id")

    @property
    def vocab_size(self) -> int:
        sizes = []
        try:
            sizes.append(len(self.tok))  # HF: includes added tokens
        except TypeError:
            pass
        v = self._int_attr("vocab_size", "n_vocab", "get_vocab_size", "get_piece_size")
        if v is not None:
            sizes.append(v)
        if not sizes:
            raise AttributeError(f"cannot tell the vocabulary size of {type(self.tok).__name__}")
        return max(sizes)

    def __len__(self) -> int:
        return self.vocab_size

    def checksum(self) -> str | None:
        get_vocab = getattr(self.tok, "get_vocab", None)
        if callable(get_vocab):
            try:
                vocab = get_vocab()
                blob = json.dumps(sorted((str(k), int(v)) for k, v in vocab.items())).encode()
                return "sha256:" + hashlib.sha256(blob).hexdigest()
            except Exception:
                return None
        return None

    def __repr__(self) -> str:
        return f"TokenizerWrapper({type(self.tok).__name__})"


def load_tokenizer(obj_or_path: Any) -> SentencePieceTokenizer | TokenizerWrapper:
    """Return a tokenizer with ``encode/decode/eos_id/vocab_size``.

    Accepts a path to a SentencePiece ``tokenizer.model`` (or a directory
    containing one), serialized model bytes, a :class:`SentencePieceTokenizer`,
    a ``sentencepiece.SentencePieceProcessor``, or any object with
    ``encode()``/``decode()`` (e.g. a ``transformers`` tokenizer).
    """
    if isinstance(obj_or_path, (SentencePieceTokenizer, TokenizerWrapper)):
        return obj_or_path
    if isinstance(obj_or_path, (str, os.PathLike)):
        path = os.fspath(obj_or_path)
        if os.path.isdir(path):
            cand = os.path.join(path, "tokenizer.model")
            if not os.path.isfile(cand):
                raise FileNotFoundError(f"no tokenizer.model in directory {path}")
            path = cand
        return SentencePieceTokenizer(path)
    if isinstance(obj_or_path, (bytes, bytearray)):
        return SentencePieceTokenizer.from_bytes(bytes(obj_or_path))
    if isinstance(obj_or_path, spm.SentencePieceProcessor):
        return SentencePieceTokenizer.from_bytes(obj_or_path.serialized_model_proto())
    return TokenizerWrapper(obj_or_path)


def tokenizer_checksum(tok: Any) -> str | None:
    """A stable fingerprint of a tokenizer's vocabulary (None if unknown)."""
    fn = getattr(tok, "checksum", None)
    return fn() if callable(fn) else None
