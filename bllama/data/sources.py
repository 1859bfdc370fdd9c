"""Reading documents: expanding paths and globs, and streaming text files, parquet rows and JSON lines as token
arrays (``BOS doc EOS`` per document) with bounded memory."""
from __future__ import annotations

import glob as _glob
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..tokenizers.sentencepiece import SentencePieceTokenizer
from ..tokenizers.text import not_utf8

_PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar from 1 MiB of input on
_TEXT_CHUNK_CHARS = 1 << 20  # plain text files are read and encoded in ~1 MiB pieces
_LONG_RUN_CHUNKS = 4  # a text with neither newline nor lone space over this many chunks is cut anywhere
_PARQUET_BATCH_ROWS = 1024
_JSONL_BATCH_DOCS = 1024
_JSONL_EXT = (".jsonl", ".ndjson", ".json")
_PARQUET_EXT = (".parquet", ".pq")
# .json files are read as JSON lines too; a whole-file array or a pretty-printed object fails on its first line
_JSONL_FORM = "JSON lines are read: one object per line, e.g. jq -c '.[]' in.json > out.jsonl for an array"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def expand_paths(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
    if not items:
        raise ValueError("no input files given")
    out: list[str] = []
    for item in items:
        p = os.fspath(item)
        if any(c in p for c in "*?["):
            matches = sorted(_glob.glob(p, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no files match {p!r}")
            out.extend(matches)
        elif os.path.isdir(p):
            raise ValueError(f"{p} is a directory; pass files or a glob such as {os.path.join(p, '*.parquet')!r}")
        elif not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
        else:
            out.append(p)
    return out


def file_kind(path: str) -> str:
    low = path.lower()
    if low.endswith(_PARQUET_EXT):
        return "parquet"
    if low.endswith(_JSONL_EXT):
        return "jsonl"
    return "text"


# Compressed corpora (.jsonl.gz, .txt.zst) are common downloads; read as text they were reported as "not UTF-8
# text ... convert it, e.g. iconv -f latin1", which sends the user the wrong way.
_COMPRESSED = ((b"\x1f\x8b", "gzip", "gunzip -k"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
               (b"\xfd7zXZ\x00", "xz", "unxz -k"), (b"BZh", "bzip2", "bunzip2 -k"))


def _refuse_compressed(path: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, name, tool in _COMPRESSED:
        if head.startswith(magic) and (name != "bzip2" or head[3:4].isdigit()):
            raise ValueError(f"{path} is {name}-compressed; decompress it first ({tool} {os.path.basename(path)})")


def _iter_parquet_batches(path: str, field: str) -> Iterator[tuple[list[str], float]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from e
    import pyarrow as pa

    names = pf.schema_arrow.names
    if field not in names:
        raise ValueError(f"{path}: no {field!r} column (columns: {names}); another column is read with "
                         "--text-field NAME (text_column= or text_field= in Python)")
    # The type is checked on the schema, not on the values: an int column of zeros (falsy, so skipped as empty) was
    # read as a corpus of no documents without a word.
    typ = pf.schema_arrow.field(field).type
    value_type = typ.value_type if pa.types.is_dictionary(typ) else typ
    if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type) or pa.types.is_null(value_type)
            or getattr(pa.types, "is_string_view", lambda t: False)(value_type)):
        raise ValueError(f"{path}: column {field!r} is {typ}, not text (a string column is needed)")
    total_rows = max(pf.metadata.num_rows, 1)
    size = os.path.getsize(path)
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field]):
            col = batch.column(0).to_pylist()
            yield [t for t in col if t], size * len(col) / total_rows
    except (OSError, pa.ArrowException) as e:  # a damaged page said only "Corrupt snappy compressed data."
        raise ValueError(f"{path}: not a readable parquet file ({e})") from e


def _iter_jsonl_batches(path: str, field: str) -> Iterator[tuple[list[str], float]]:
    docs: list[str] = []
    nbytes = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            nbytes += len(raw)
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except UnicodeDecodeError as e:  # the codec's message named neither the file nor the line
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason}: byte 0x{e.object[e.start]:02x}); "
                                 "convert the file, e.g. iconv -f latin1 -t utf-8") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e}); {_JSONL_FORM}") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: a JSON {type(obj).__name__}, not an object with a {field!r} field; "
                                 f"{_JSONL_FORM}")
            if field not in obj:
                raise ValueError(f"{path}:{lineno}: no {field!r} field (fields: {', '.join(map(repr, obj)) or 'none'}); "
                                 "another field is read with --text-field NAME (text_field= in Python)")
            text = obj[field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field {field!r} is {type(text).__name__}, not text")
            if text:
                docs.append(text)
            if len(docs) >= _JSONL_BATCH_DOCS:
                yield docs, nbytes
                docs, nbytes = [], 0
    yield docs, nbytes


def _iter_text_chunks(path: str, chunk_chars: int) -> Iterator[str]:
    """Read a text file in pieces that each (but the first) start with '\\n'; ValueError naming it if not UTF-8."""
    try:
        yield from _text_chunks(path, chunk_chars)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def _text_chunks(path: str, chunk_chars: int) -> Iterator[str]:
    # utf-8-sig: a byte-order mark (Windows editors write one) is not text and was trained on as a U+FEFF token
    with open(path, encoding="utf-8-sig") as fh:
        carry = ""
        while True:
            block = fh.read(chunk_chars)
            if not block:
                break
            buf = carry + block
            cut = buf.rfind("\n")
            if cut <= 0:
                # A line longer than a chunk is cut before a lone space (exact, see text_chunk): waiting for a
                # newline held the whole line, and a 19 MB one-line file took 1 GB to encode (and quadratic time).
                cut = _space_cut(buf)
            if cut <= 0 and len(buf) >= _LONG_RUN_CHUNKS * chunk_chars:
                # nothing to cut at for several chunks (base64, text without spaces): cut anyway, which may tokenize
                # these few characters differently from whole-text encoding
                cut = len(buf)
            if cut <= 0:
                carry = buf
                continue
            yield buf[:cut]
            carry = buf[cut:]
        if carry:
            yield carry


def _space_cut(buf: str) -> int:
    """The index of the last space with a non-space on both sides, or -1."""
    i = len(buf) - 1
    while True:
        i = buf.rfind(" ", 1, i)
        if i <= 0:
            return -1
        if not buf[i - 1].isspace() and not buf[i + 1].isspace():
            return i


class DocumentEncoder:
    """Encodes documents as ``BOS doc EOS`` id arrays (exact for chunked text); ``doc EOS`` where the tokenizer adds
    no BOS (a Hugging Face folder's add_bos_token, e.g. SmolLM): training then sees what the model always saw."""

    def __init__(self, tokenizer: Any, add_bos: bool = True, add_eos: bool = True):
        self.tok = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.dtype = token_dtype(self.vocab_size)
        self.bos = getattr(tokenizer, "bos_id", None) if add_bos and getattr(tokenizer, "add_bos", True) else None
        self.eos = tokenizer.eos_id if add_eos else None
        # For a text cut just before a '\n', SentencePiece adds a dummy '▁'
        # prefix that whole-text encoding would not have; no piece contains
        # '\n', so dropping those leading ids makes chunked encoding exact.
        self.cont_prefix: list[int] | None = None
        if isinstance(tokenizer, SentencePieceTokenizer):
            nl = tokenizer.encode("\n", add_bos=False)
            if nl and nl[-1] == tokenizer.piece_to_id("<0x0A>"):
                self.cont_prefix = nl[:-1]
        # A text cut before a lone space (_text_chunks): SentencePiece pieces never span a lone space, and its
        # dummy prefix stands for that space, so the piece text starts without it.
        self.space_is_prefix = isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.add_dummy_prefix

    def _enc(self, texts: list[str]) -> list[list[int]]:
        batch = getattr(self.tok, "encode_batch", None)
        if batch is not None and len(texts) > 1:
            return batch(texts, add_bos=False, add_eos=False)
        return [self.tok.encode(t, add_bos=False, add_eos=False) for t in texts]

    def _array(self, ids: Iterable[int], n: int) -> np.ndarray:
        arr = np.fromiter(ids, dtype=np.int64, count=n)
        if n and (arr.min() < 0 or arr.max() >= np.iinfo(self.dtype).max + 1):
            raise ValueError(f"token id out of range for {self.dtype} (vocab_size {self.vocab_size})")
        return arr.astype(self.dtype)

    def documents(self, texts: list[str]) -> np.ndarray:
        seqs = self._enc(texts)
        pre = [] if self.bos is None else [self.bos]
        post = [] if self.eos is None else [self.eos]
        flat: list[int] = []
        for s in seqs:
            flat.extend(pre)
            flat.extend(s)
            flat.extend(post)
        return self._array(flat, len(flat))

    def text_chunk(self, text: str, first: bool, last: bool) -> np.ndarray:
        newline_cut = text.startswith("\n")
        if not first and self.space_is_prefix and text.startswith(" "):
            text = text[1:]
        ids = self.tok.encode(text, add_bos=False, add_eos=False)
        if not first and newline_cut and self.cont_prefix is not None:
            k = len(self.cont_prefix)
            if ids[:k] == self.cont_prefix:
                ids = ids[k:]
        if first and self.bos is not None:
            ids = [self.bos] + ids
        if last and self.eos is not None:
            ids = ids + [self.eos]
        return self._array(ids, len(ids))


def record_documents(path: str, text_field: str = "text") -> Iterator[str]:
    """The documents of a parquet or JSON-lines file, one at a time (what tokenize_files reads from it)."""
    kind = file_kind(path)
    if kind == "text":
        raise ValueError(f"{path}: not a parquet or JSON-lines file")
    if kind != "parquet":
        _refuse_compressed(path)
    batches = _iter_parquet_batches(path, text_field) if kind == "parquet" else _iter_jsonl_batches(path, text_field)
    for docs, _ in batches:
        yield from docs


def tokenize_files(
    files: Sequence[str],
    tokenizer: Any,
    *,
    text_field: str = "text",
    add_bos: bool = True,
    add_eos: bool = True,
    progress: bool | None = None,
    chunk_chars: int = _TEXT_CHUNK_CHARS,
    kind: str | None = None,
) -> Iterator[tuple[np.ndarray, int]]:
    """Stream ``(token_array, n_documents_finished)`` pieces from input files.

    Plain text files are one document each; parquet files (``text_field``
    column) and JSON-lines files (``text_field`` key) hold one document per
    row / line (the kind is chosen by extension: .parquet/.pq, .jsonl/.ndjson/.json,
    anything else is text; ``kind`` forces one).  Memory is bounded by one
    batch, whatever the corpus size.
    """
    if kind not in (None, "text", "parquet", "jsonl"):
        raise ValueError(f"unknown file kind {kind!r}")
    enc = DocumentEncoder(tokenizer, add_bos=add_bos, add_eos=add_eos)
    total = sum(os.path.getsize(f) for f in files)
    show = total >= _PROGRESS_MIN_BYTES if progress is None else progress
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not show,
              dynamic_ncols=True, leave=False) as bar:
        for path in files:
            fkind = kind or file_kind(path)
            if fkind != "parquet":
                _refuse_compressed(path)
            if fkind == "text":
                pending: str | None = None
                first = True
                for chunk in _iter_text_chunks(path, chunk_chars):
                    if pending is not None:
                        yield enc.text_chunk(pending, first, last=False), 0
                        bar.update(len(pending.encode("utf-8")))
                        first = False
                    pending = chunk
                if pending is not None:
                    yield enc.text_chunk(pending, first, last=True), 1
                    bar.update(len(pending.encode("utf-8")))
            else:
                it = _iter_parquet_batches(path, text_field) if fkind == "parquet" else _iter_jsonl_batches(path, text_field)
                for docs, nbytes in it:
                    if docs:
                        yield enc.documents(docs), len(docs)
                    bar.update(nbytes)
