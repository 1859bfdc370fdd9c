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
from .datamodule import StreamDataset, StreamSampler, TextDataModule
from .datasets import GepetoDataset, JsonlDataset, PackedDataset, ShakespeareDataset
from .sources import tokenize_files
from .token_files import TokenDataset, prepare_tokens, token_dtype

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
