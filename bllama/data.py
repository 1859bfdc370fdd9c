"""Datasets for language-model training.

All datasets serve *packed* blocks: documents are tokenized as
``BOS doc EOS`` and concatenated (no padding anywhere), and the token stream
is cut into windows of ``max_length + 1`` tokens with a stride of
``max_length``: block ``i`` is ``tokens[i*L : i*L + L + 1]`` (consecutive
blocks share one boundary token, so every token is a training target exactly
once).  Item ``i`` is ``(inputs, labels) = (block[:-1], block[1:])`` as int64
tensors of length ``max_length``.

* :class:`ShakespeareDataset` - one plain text file, one document.
* :class:`GepetoDataset` - parquet files with a ``text`` column (a row = a document).
* :class:`JsonlDataset` - JSON-lines files with a ``text`` field (a line = a document).
* :func:`prepare_tokens` + :class:`TokenDataset` - a flat token file on disk read
  through ``np.memmap``, for corpora larger than RAM.
* :class:`TextDataModule` - the LightningDataModule (train/val split, loaders).
"""

from __future__ import annotations

import glob as _glob
import json
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl  # type: ignore

from tqdm.auto import tqdm

from .atomic import atomic_write
from .tokenizer import SentencePieceTokenizer, load_tokenizer, tokenizer_checksum

__all__ = [
    "token_dtype",
    "PackedDataset",
    "ShakespeareDataset",
    "GepetoDataset",
    "JsonlDataset",
    "TokenDataset",
    "TextDataModule",
    "StreamDataset",
    "StreamSampler",
    "prepare_tokens",
    "tokenize_files",
]

_PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar from 1 MiB of input on
_TEXT_CHUNK_CHARS = 1 << 20  # plain text files are read and encoded in ~1 MiB pieces
_PARQUET_BATCH_ROWS = 1024
_JSONL_BATCH_DOCS = 1024
_JSONL_EXT = (".jsonl", ".ndjson", ".json")
_PARQUET_EXT = (".parquet", ".pq")
SIDECAR_SUFFIX = ".json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------
# reading documents
# --------------------------------------------------------------------------
def _expand_paths(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
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


def _file_kind(path: str) -> str:
    low = path.lower()
    if low.endswith(_PARQUET_EXT):
        return "parquet"
    if low.endswith(_JSONL_EXT):
        return "jsonl"
    return "text"


def _iter_parquet_batches(path: str, field: str) -> Iterator[tuple[list[str], float]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from e
    names = pf.schema_arrow.names
    if field not in names:
        raise ValueError(f"{path}: no {field!r} column (columns: {names})")
    total_rows = max(pf.metadata.num_rows, 1)
    size = os.path.getsize(path)
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field]):
        col = batch.column(0).to_pylist()
        docs = [t for t in col if t]
        for t in docs:
            if not isinstance(t, str):
                raise ValueError(f"{path}: column {field!r} holds {type(t).__name__}, not text")
        yield docs, size * len(col) / total_rows


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
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from e
            if not isinstance(obj, dict) or field not in obj:
                raise ValueError(f"{path}:{lineno}: no {field!r} field")
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
    """Read a text file in pieces that each (but the first) start with '\\n'."""
    with open(path, encoding="utf-8") as fh:
        carry = ""
        while True:
            block = fh.read(chunk_chars)
            if not block:
                break
            buf = carry + block
            cut = buf.rfind("\n")
            if cut <= 0:  # no newline to cut at (or only at 0): keep reading
                carry = buf
                continue
            yield buf[:cut]
            carry = buf[cut:]
        if carry:
            yield carry


class _Encoder:
    """Encodes documents as ``BOS doc EOS`` id arrays (exact for chunked text)."""

    def __init__(self, tokenizer: Any, add_bos: bool = True, add_eos: bool = True):
        self.tok = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.dtype = token_dtype(self.vocab_size)
        self.bos = getattr(tokenizer, "bos_id", None) if add_bos else None
        self.eos = tokenizer.eos_id if add_eos else None
        # For a text cut just before a '\n', SentencePiece adds a dummy '▁'
        # prefix that whole-text encoding would not have; no piece contains
        # '\n', so dropping those leading ids makes chunked encoding exact.
        self.cont_prefix: list[int] | None = None
        if isinstance(tokenizer, SentencePieceTokenizer):
            nl = tokenizer.encode("\n", add_bos=False)
            if nl and nl[-1] == tokenizer.piece_to_id("<0x0A>"):
                self.cont_prefix = nl[:-1]

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
        ids = self.tok.encode(text, add_bos=False, add_eos=False)
        if not first and self.cont_prefix is not None:
            k = len(self.cont_prefix)
            if ids[:k] == self.cont_prefix:
                ids = ids[k:]
        if first and self.bos is not None:
            ids = [self.bos] + ids
        if last and self.eos is not None:
            ids = ids + [self.eos]
        return self._array(ids, len(ids))


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
    enc = _Encoder(tokenizer, add_bos=add_bos, add_eos=add_eos)
    total = sum(os.path.getsize(f) for f in files)
    show = total >= _PROGRESS_MIN_BYTES if progress is None else progress
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not show,
              dynamic_ncols=True, leave=False) as bar:
        for path in files:
            fkind = kind or _file_kind(path)
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


# --------------------------------------------------------------------------
# in-memory packed datasets
# --------------------------------------------------------------------------
class PackedDataset(Dataset):
    """A token stream served as ``(inputs, labels)`` blocks of ``max_length``."""

    def __init__(self, tokens: np.ndarray | Sequence[int], max_length: int = 1024, *,
                 vocab_size: int | None = None, source: str = "tokens"):
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)
        if not isinstance(tokens, np.ndarray):
            arr = np.asarray(tokens, dtype=np.int64)
            vs = vocab_size if vocab_size is not None else (int(arr.max()) + 1 if arr.size else 1)
            tokens = arr.astype(token_dtype(vs))
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        self.source = source
        if tokens.size == 0:
            raise ValueError(f"{source}: empty corpus (no tokens)")
        need = self.max_length + 1
        if tokens.size < need:
            raise ValueError(
                f"{source}: corpus too short: {tokens.size} tokens, but one block of "
                f"max_length={self.max_length} needs {need}"
            )
        self.tokens = tokens
        self.vocab_size = vocab_size

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def __len__(self) -> int:
        return (self.tokens.size - 1) // self.max_length

    def block(self, idx: int) -> np.ndarray:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"block index {idx} out of range for {n} blocks")
        start = idx * self.max_length
        return self.tokens[start:start + self.max_length + 1]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = torch.from_numpy(self.block(int(idx)).astype(np.int64))
        return block[:-1], block[1:]

    # -- constructors --------------------------------------------------------------
    @classmethod
    def from_documents(cls, documents: Iterable[str], tokenizer: Any, max_length: int = 1024, *,
                       add_bos: bool = True, source: str = "documents") -> "PackedDataset":
        tok = load_tokenizer(tokenizer)
        enc = _Encoder(tok, add_bos=add_bos)
        docs = [d for d in documents if d]
        if not docs:
            raise ValueError(f"{source}: empty corpus (no non-empty documents)")
        obj = cls.__new__(cls)
        PackedDataset.__init__(obj, enc.documents(docs), max_length, vocab_size=enc.vocab_size, source=source)
        return obj

    def _load_files(self, files: Sequence[str], tokenizer: Any, max_length: int, text_field: str,
                    add_bos: bool, progress: bool | None, kind: str | None = None) -> None:
        tok = load_tokenizer(tokenizer)
        parts: list[np.ndarray] = []
        ndocs = 0
        for arr, nd in tokenize_files(files, tok, text_field=text_field, add_bos=add_bos,
                                          progress=progress, kind=kind):
            parts.append(arr)
            ndocs += nd
        source = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
        if ndocs == 0:
            raise ValueError(f"{source}: empty corpus (no non-empty documents)")
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=token_dtype(tok.vocab_size))
        self.num_documents = ndocs
        self.files = list(files)
        PackedDataset.__init__(self, tokens, max_length, vocab_size=int(tok.vocab_size), source=source)


class ShakespeareDataset(PackedDataset):
    """A plain text file (e.g. tinyshakespeare.txt) as one document."""

    def __init__(self, path: str | os.PathLike, tokenizer: Any, max_length: int = 1024, *,
                 add_bos: bool = True, progress: bool | None = None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"text file not found: {path}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: empty corpus (file is empty)")
        self._load_files([path], tokenizer, max_length, "text", add_bos, progress)

    @classmethod
    def from_file(cls, path: str | os.PathLike, tokenizer: Any, max_length: int = 1024,
                  **kwargs: Any) -> "ShakespeareDataset":
        return cls(path, tokenizer, max_length, **kwargs)


class GepetoDataset(PackedDataset):
    """Parquet files with a ``text`` column; every row is a document."""

    def __init__(self, paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any,
                 max_length: int = 1024, *, text_column: str = "text", add_bos: bool = True,
                 progress: bool | None = None):
        files = _expand_paths(paths_or_glob)
        self._load_files(files, tokenizer, max_length, text_column, add_bos, progress)


class JsonlDataset(PackedDataset):
    """JSON-lines files with a ``text`` field; every line is a document."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any,
                 max_length: int = 1024, *, text_field: str = "text", add_bos: bool = True,
                 progress: bool | None = None):
        files = _expand_paths(paths)
        for f in files:
            if _file_kind(f) == "parquet":
                raise ValueError(f"{f}: JsonlDataset reads JSON lines; use GepetoDataset for parquet")
        self._load_files(files, tokenizer, max_length, text_field, add_bos, progress, kind="jsonl")


# --------------------------------------------------------------------------
# on-disk token files
# --------------------------------------------------------------------------
def prepare_tokens(
    input_files: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Any,
    out_path: str | os.PathLike,
    *,
    text_field: str = "text",
    add_bos: bool = True,
    progress: bool | None = None,
    flush_tokens: int = 1 << 22,
) -> dict[str, Any]:
    """Tokenize files into a flat token file for :class:`TokenDataset`.

    Writes ``out_path`` (raw little-endian uint16, or uint32 when the
    vocabulary exceeds 65536) and ``out_path + ".json"`` (dtype, count,
    vocab_size, tokenizer checksum, ...).  Documents are streamed (plain text
    files = one document each, parquet rows, JSON lines) as ``BOS doc EOS``;
    memory stays bounded whatever the corpus size.  Both files are written to
    temporary names and renamed into place only on success, so an interrupted
    run leaves no partial output.  Returns the metadata.
    """
    files = _expand_paths(input_files)
    tok = load_tokenizer(tokenizer)
    vocab_size = int(tok.vocab_size)
    dtype = token_dtype(vocab_size)
    out_path = os.fspath(out_path)
    meta_path = out_path + SIDECAR_SUFFIX

    # Both files land only on success; the meta file is replaced last, so it never describes a token file that
    # is not there yet.
    with atomic_write(meta_path, "w", encoding="utf-8") as mh:
        count = 0
        ndocs = 0
        with atomic_write(out_path) as fh:
            pending: list[np.ndarray] = []
            npending = 0
            for arr, nd in tokenize_files(files, tok, text_field=text_field, add_bos=add_bos, progress=progress):
                pending.append(arr)
                npending += arr.size
                ndocs += nd
                if npending >= flush_tokens:
                    np.concatenate(pending).astype(dtype.newbyteorder("<"), copy=False).tofile(fh)
                    count += npending
                    pending, npending = [], 0
            if pending:
                np.concatenate(pending).astype(dtype.newbyteorder("<"), copy=False).tofile(fh)
                count += npending
            if count == 0:
                raise ValueError(f"empty corpus: no tokens in {files}")
        meta = {
            "format": "bllama-tokens",
            "version": 1,
            "dtype": dtype.name,
            "count": int(count),
            "documents": int(ndocs),
            "vocab_size": vocab_size,
            "bos_id": getattr(tok, "bos_id", None) if add_bos else None,
            "eos_id": tok.eos_id,
            "tokenizer_checksum": tokenizer_checksum(tok),
            "sources": [os.path.abspath(f) for f in files],
        }
        json.dump(meta, mh, indent=2)
        mh.write("\n")
    print(f"bllama: wrote {count:,} tokens ({ndocs:,} documents, {dtype.name}) to {out_path} (+ {os.path.basename(meta_path)})")
    return meta


class TokenDataset(Dataset):
    """Blocks of ``max_length`` from a token file written by :func:`prepare_tokens`.

    ``sampling="sequential"``: block ``i`` starts at token ``i*max_length``
    (like :class:`PackedDataset`); ``"random"``: block ``i`` starts at a
    uniformly random offset drawn from ``(seed, epoch, i)`` only, so it is
    reproducible and identical in any DataLoader worker.  ``num_samples``
    defaults to the number of sequential blocks.  ``start``/``end`` restrict
    the dataset to a token range (used by :meth:`split`).  The memmap is opened
    lazily in each process, so the dataset pickles cheaply to workers.
    """

    def __init__(self, path: str | os.PathLike, max_length: int = 1024, sampling: str = "sequential",
                 num_samples: int | None = None, seed: int = 0, *, start: int = 0, end: int | None = None,
                 dtype: str | np.dtype | None = None):
        path = os.fspath(path)
        if path.endswith(SIDECAR_SUFFIX) and os.path.isfile(path[: -len(SIDECAR_SUFFIX)]):
            path = path[: -len(SIDECAR_SUFFIX)]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"token file not found: {path}")
        meta_path = path + SIDECAR_SUFFIX
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as fh:
                try:
                    self.meta = json.load(fh)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{meta_path}: invalid JSON ({e})") from e
            for key in ("dtype", "count"):
                if key not in self.meta:
                    raise ValueError(f"{meta_path}: missing {key!r}")
        elif dtype is not None:
            self._explicit_dtype = np.dtype(dtype)
            itemsize = np.dtype(dtype).itemsize
            self.meta = {"dtype": np.dtype(dtype).name, "count": os.path.getsize(path) // itemsize}
        else:
            raise FileNotFoundError(f"token metadata not found: {meta_path} (pass dtype= to read a bare token file)")
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        count = int(self.meta["count"])
        size = os.path.getsize(path)
        if size != count * self.dtype.itemsize:
            raise ValueError(
                f"{path}: size {size} bytes does not match {count} {self.dtype.name} tokens "
                f"({count * self.dtype.itemsize} bytes); the file is truncated or not from this sidecar"
            )
        if sampling not in ("sequential", "random"):
            raise ValueError(f"sampling must be 'sequential' or 'random', got {sampling!r}")
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        end = count if end is None else int(end)
        start = int(start)
        if not 0 <= start < end <= count:
            raise ValueError(f"bad token range [{start}, {end}) for {count} tokens")
        self.path = path
        self.max_length = int(max_length)
        self.sampling = sampling
        self.seed = int(seed)
        self.epoch = 0
        self.start, self.end = start, end
        need = self.max_length + 1
        if end - start < need:
            raise ValueError(
                f"{path}: corpus too short: {end - start} tokens, but one block of "
                f"max_length={self.max_length} needs {need}"
            )
        self._n_blocks = (end - start - 1) // self.max_length
        if num_samples is not None and int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = self._n_blocks if num_samples is None else int(num_samples)
        if sampling == "sequential" and self.num_samples > self._n_blocks:
            raise ValueError(f"num_samples={num_samples} exceeds the {self._n_blocks} sequential blocks")
        self._mm: np.memmap | None = None
        self._explicit_dtype = getattr(self, "_explicit_dtype", None)

    @property
    def vocab_size(self) -> int | None:
        return self.meta.get("vocab_size")

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    def _tokens(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(int(self.meta["count"]),))
        return self._mm

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Change the random offsets (random sampling) for a new epoch."""
        self.epoch = int(epoch)

    def offset(self, idx: int) -> int:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} samples")
        if self.sampling == "sequential":
            return self.start + idx * self.max_length
        high = self.end - self.start - (self.max_length + 1)  # inclusive
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        return self.start + int(rng.integers(0, high + 1))

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.offset(int(idx))
        block = torch.from_numpy(np.array(self._tokens()[o:o + self.max_length + 1], dtype=np.int64))
        return block[:-1], block[1:]

    def split(self, train_fraction: float = 0.9) -> tuple["TokenDataset", "TokenDataset"]:
        """Two datasets over disjoint token ranges: the first ``train_fraction``
        of the tokens (same sampling) and the rest (sequential, for validation)."""
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        cut = self.start + int(round((self.end - self.start) * train_fraction))
        dtype = self._explicit_dtype
        ns = None
        if self.num_samples != self._n_blocks:
            ns = max(1, int(round(self.num_samples * train_fraction)))
        train = TokenDataset(self.path, self.max_length, self.sampling, ns, self.seed,
                             start=self.start, end=cut, dtype=dtype)
        val = TokenDataset(self.path, self.max_length, "sequential", None, self.seed,
                           start=cut, end=self.end, dtype=dtype)
        return train, val


# --------------------------------------------------------------------------
# resumable training stream
# --------------------------------------------------------------------------
class StreamDataset(Dataset):
    """Sample number ``g = 0, 1, 2, ...`` of an endless stream over ``base``: pass ``e = g // len(base)`` is a fresh
    seeded permutation of the blocks (``shuffle``), so every block is seen once per pass. What sample ``g`` is
    depends on ``(seed, g)`` only: not on the batch size, the number of processes, workers or restarts. A base with
    ``set_epoch`` (a randomly sampled :class:`TokenDataset`) is told the pass, so its random offsets change too."""

    def __init__(self, base: Dataset, seed: int = 0, shuffle: bool = True):
        if len(base) < 1:
            raise ValueError("the training set is empty")
        self.base, self.seed, self.shuffle = base, int(seed), shuffle
        self._pass, self._perm = -1, None

    def __len__(self) -> int:  # one pass; the sampler decides how far the stream goes
        return len(self.base)

    def index(self, g: int) -> tuple[int, int]:
        """(pass, block index in base) of sample g."""
        e, i = divmod(int(g), len(self.base))
        if self.shuffle:
            if e != self._pass:
                self._perm = np.random.default_rng([self.seed, e]).permutation(len(self.base))
                self._pass = e
            i = int(self._perm[i])
        return e, i

    def __getitem__(self, g: int):
        e, i = self.index(g)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(e)
        return self.base[i]


class StreamSampler(torch.utils.data.distributed.DistributedSampler):
    """This rank's share ``start + rank, start + rank + world, ...`` of the global sample numbers
    ``[0, world * length)``, beginning at global sample ``start`` (the samples a resumed run has already trained on).

    ``len()`` is the whole run's share (``length``) even when resuming, because that is how Lightning counts a
    resumed epoch: the batches it restored as done plus the ones this sampler still yields. A DistributedSampler
    subclass so that Lightning does not wrap it in one of its own."""

    def __init__(self, length: int, rank: int = 0, world: int = 1, start: int = 0):
        # no super().__init__: it wants a dataset and a process group; only the attributes are shared
        if start % world:
            raise ValueError(f"start {start} is not a multiple of the world size {world}")
        self.length, self.rank, self.num_replicas, self.start = int(length), int(rank), int(world), int(start)
        self.epoch, self.shuffle, self.seed, self.drop_last = 0, False, 0, True

    def __iter__(self):
        end = self.length * self.num_replicas
        return iter(range(self.start + self.rank, end, self.num_replicas))

    def __len__(self) -> int:
        return self.length


class _StreamLoader(DataLoader):
    """The loader of a :class:`StreamSampler`. Its position is the trainer's global step, which Lightning restores
    before it builds the loader, so there is nothing of its own to save; having ``state_dict``/``load_state_dict``
    tells Lightning that it resumes mid-epoch (no "dataloader is not resumable" warning)."""

    def state_dict(self) -> dict:
        return {"start": self.sampler.start}

    def load_state_dict(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------
# Lightning data module
# --------------------------------------------------------------------------
class TextDataModule(pl.LightningDataModule):
    """Train/validation split and loaders around one of the datasets above.

    ``split="contiguous"`` (default): the first ``train_test_split`` fraction of
    the blocks (by position in the corpus) is training data and the rest is
    validation, so validation text is held out rather than interleaved; for a
    :class:`TokenDataset` the token range is split.  ``split="random"``:
    a seeded random partition of the blocks.  Pass ``val_dataset`` to use a
    separate validation set and no split.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 8, train_test_split: float = 0.9, seed: int = 42,
                 num_workers: int = 0, *, split: str = "contiguous", val_dataset: Dataset | None = None,
                 pin_memory: bool = False, drop_last: bool = False, resumable: bool = False):
        super().__init__()
        self.resumable = resumable
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in ("contiguous", "random"):
            raise ValueError(f"split must be 'contiguous' or 'random', got {split!r}")
        if not 0.0 < train_test_split <= 1.0:
            raise ValueError(f"train_test_split must be in (0, 1], got {train_test_split}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train_test_split = float(train_test_split)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.split = split
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self._generator = torch.Generator().manual_seed(self.seed)

        if val_dataset is not None:
            self.train_dataset, self.val_dataset = dataset, val_dataset
        elif self.train_test_split >= 1.0:
            self.train_dataset, self.val_dataset = dataset, Subset(dataset, [])
        elif split == "contiguous" and isinstance(dataset, TokenDataset):
            self.train_dataset, self.val_dataset = dataset.split(self.train_test_split)
        else:
            n = len(dataset)
            if n < 2:
                raise ValueError(f"dataset has {n} block(s); need at least 2 to split into train and validation")
            n_train = min(max(int(round(n * self.train_test_split)), 1), n - 1)
            if split == "contiguous":
                train_idx = list(range(n_train))
                val_idx = list(range(n_train, n))
            else:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
                train_idx, val_idx = perm[:n_train], perm[n_train:]
            self.train_dataset = Subset(dataset, train_idx)
            self.val_dataset = Subset(dataset, val_idx)

    def setup(self, stage: str | None = None) -> None:  # split is done eagerly in __init__
        pass

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=self._generator if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer if self.resumable else None
        if trainer is None or trainer.max_steps is None or trainer.max_steps < 1:
            return self._loader(self.train_dataset, shuffle=True)
        return self._stream_loader(trainer)

    def _stream_loader(self, trainer) -> DataLoader:
        """``resumable=True`` under a Trainer with max_steps: the whole run is one Lightning epoch over a
        :class:`StreamDataset` (reshuffled passes over the training blocks), and a run resumed from a checkpoint
        starts at the first sample that the checkpointed steps did not train on, in any process count.

        Lightning restores the trainer's global step before it asks for this loader; a plain shuffled loader
        would restart the epoch from its first batch (training on those batches twice and never on the last ones).
        """
        per_step = self.batch_size * trainer.accumulate_grad_batches  # samples per rank per optimizer step
        world, rank = trainer.world_size, trainer.global_rank
        sampler = StreamSampler(trainer.max_steps * per_step, rank=rank, world=world,
                                start=trainer.global_step * per_step * world)
        return _StreamLoader(StreamDataset(self.train_dataset, seed=self.seed), batch_size=self.batch_size,
                          sampler=sampler, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
