"""Token files on disk: prepare_tokens tokenizes a corpus once into a flat uint16/uint32 file plus a JSON sidecar,
and TokenDataset reads it through ``np.memmap`` (corpora larger than RAM)."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_write
from ..tokenizers.sentencepiece import load_tokenizer, tokenizer_checksum
from .sources import expand_paths, token_dtype, tokenize_files

SIDECAR_SUFFIX = ".json"


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
    files = expand_paths(input_files)
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
            raise FileNotFoundError(f"token metadata not found: {meta_path}: a token file is read with the sidecar that "
                                    "`bllama data prepare` writes beside it (in Python, dtype= reads a bare one)")
        try:  # a hand-edited or foreign sidecar's dtype raised numpy's TypeError, naming no file
            self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.kind not in "ui":
            raise ValueError(f"{meta_path if os.path.isfile(meta_path) else path}: token dtype "
                             f"{self.meta['dtype']!r} is not an integer type (bllama data prepare writes uint16 or "
                             "uint32)")
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
        arr = np.array(self._tokens()[o:o + self.max_length + 1], dtype=np.int64)
        vocab = self.vocab_size
        if vocab is not None and arr.max() >= vocab:
            # a damaged file or a sidecar from another file: the embedding failed with "index out of range in self"
            # on a CPU and a device-side assert on a GPU, naming neither the file nor the place
            at = int(np.argmax(arr >= vocab))
            raise ValueError(f"{self.path}: token {int(arr[at])} at position {o + at} is outside the vocabulary of "
                             f"{vocab} named by its sidecar; the file is damaged or not from this sidecar")
        block = torch.from_numpy(arr)
        return block[:-1], block[1:]

    def split(self, train_fraction: float = 0.9) -> tuple["TokenDataset", "TokenDataset"]:
        """Two datasets over disjoint token ranges: the first ``train_fraction``
        of the tokens (same sampling) and the rest (sequential, for validation)."""
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        cut = self.start + int(round((self.end - self.start) * train_fraction))
        # Like the in-memory split, each side keeps at least one block: a small file whose validation share fell
        # short of one block failed as "corpus too short: 53 tokens" although it held several blocks.
        need = self.max_length + 1
        if self.end - self.start < 2 * need:
            raise ValueError(f"{self.path}: {self.end - self.start} tokens are too few to split into a training and a "
                             f"validation block of max_length={self.max_length} ({2 * need} tokens); use more data "
                             "or no validation split (train_test_split=1.0, --train-split 1.0)")
        cut = min(max(cut, self.start + need), self.end - need)
        dtype = self._explicit_dtype
        ns = None
        if self.num_samples != self._n_blocks:
            ns = max(1, int(round(self.num_samples * train_fraction)))
        train = TokenDataset(self.path, self.max_length, self.sampling, ns, self.seed,
                             start=self.start, end=cut, dtype=dtype)
        val = TokenDataset(self.path, self.max_length, "sequential", None, self.seed,
                           start=cut, end=self.end, dtype=dtype)
        return train, val
