"""In-memory packed datasets: documents tokenized once and cut into ``max_length + 1`` blocks (the layout every
bllama dataset serves; bllama/data/__init__.py describes it)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tokenizers.sentencepiece import load_tokenizer
from .sources import DocumentEncoder, expand_paths, file_kind, token_dtype, tokenize_files


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
        enc = DocumentEncoder(tok, add_bos=add_bos)
        docs = [d for d in documents if d]
        if not docs:
            raise ValueError(f"{source}: empty corpus (no non-empty documents)")
        obj = cls.__new__(cls)
        PackedDataset.__init__(obj, enc.documents(docs), max_length, vocab_size=enc.vocab_size, source=source)
        return obj

    @classmethod
    def from_files(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any,
                   max_length: int = 1024, *, text_field: str = "text", add_bos: bool = True,
                   progress: bool | None = None) -> "PackedDataset":
        """Text, parquet and JSON-lines files (the kind chosen by extension, as in tokenize_files) in one stream: a
        file shorter than a block is fine, and only the stream's last partial block is left out."""
        obj = cls.__new__(cls)
        obj._load_files(expand_paths(paths), tokenizer, max_length, text_field, add_bos, progress)
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
        files = expand_paths(paths_or_glob)
        self._load_files(files, tokenizer, max_length, text_column, add_bos, progress)


class JsonlDataset(PackedDataset):
    """JSON-lines files with a ``text`` field; every line is a document."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any,
                 max_length: int = 1024, *, text_field: str = "text", add_bos: bool = True,
                 progress: bool | None = None):
        files = expand_paths(paths)
        for f in files:
            if file_kind(f) == "parquet":
                raise ValueError(f"{f}: JsonlDataset reads JSON lines; use GepetoDataset for parquet")
        self._load_files(files, tokenizer, max_length, text_field, add_bos, progress, kind="jsonl")
