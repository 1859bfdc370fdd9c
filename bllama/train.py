"""Training driver shared by `bllama train`, `bllama demo` and the benchmarks: a thin layer over pl.Trainer."""
from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .config import bLlamaConfig
from .module import bLlama


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file beside the target and renamed into place, so an interrupted
    save never leaves a truncated checkpoint where a good one was."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def dataset_from_paths(paths: Sequence[str], tokenizer, max_length: int):
    """One packed dataset from text (.txt), parquet, JSONL or prepared token files (.bin)."""
    from torch.utils.data import ConcatDataset

    from .data import GepetoDataset, JsonlDataset, ShakespeareDataset, TokenDataset

    parts = []
    parquet = [p for p in paths if str(p).endswith(".parquet")]
    if parquet:
        parts.append(GepetoDataset(parquet, tokenizer=tokenizer, max_length=max_length))
    for p in paths:
        s = str(p)
        if s.endswith(".parquet"):
            continue
        if s.endswith(".jsonl") or s.endswith(".json"):
            parts.append(JsonlDataset([p], tokenizer=tokenizer, max_length=max_length))
        elif s.endswith(".bin"):
            parts.append(TokenDataset(p, max_length=max_length))
        else:
            parts.append(ShakespeareDataset.from_file(p, tokenizer=tokenizer, max_length=max_length))
    if not parts:
        raise ValueError("no training data given")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def make_trainer(out_dir: Path, max_steps: Optional[int] = None, max_minutes: Optional[float] = None,
                 precision: str = "32-true", accelerator: str = "auto", devices="auto", strategy="auto",
                 val_every: Optional[int] = None, limit_val_batches=None, callbacks: Optional[List] = None,
                 enable_progress_bar: bool = True, log_every: int = 10) -> pl.Trainer:
    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0 if val_every is None else 1,
                           monitor="val_loss" if val_every else None)
    kwargs = {}
    if val_every:
        kwargs.update(val_check_interval=val_every, check_val_every_n_epoch=None)
    return pl.Trainer(
        default_root_dir=str(out_dir), max_steps=max_steps if max_steps else -1,
        max_epochs=None if max_steps or max_minutes else 1,
        max_time=timedelta(minutes=max_minutes) if max_minutes else None,
        precision=precision, accelerator=accelerator, devices=devices, strategy=strategy,
        logger=CSVLogger(str(out_dir), name="logs"), callbacks=[ckpt, *(callbacks or [])],
        plugins=[AtomicCheckpointIO()], enable_progress_bar=enable_progress_bar, log_every_n_steps=log_every,
        limit_val_batches=limit_val_batches, num_sanity_val_steps=0, **kwargs)


def save_run_files(out_dir: Path, config: bLlamaConfig, tokenizer) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    if hasattr(tokenizer, "save"):
        tokenizer.save(out_dir / "tokenizer.model")


def load_checkpoint(path) -> bLlama:
    """A bLlama from a Lightning checkpoint written by bllama train (or any bLlama checkpoint)."""
    path = Path(path)
    if path.is_dir():
        cand = path / "checkpoints" / "last.ckpt"
        if not cand.exists():
            raise FileNotFoundError(f"no checkpoints/last.ckpt under {path}")
        path = cand
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return bLlama.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)


def tokenizer_beside(checkpoint_path):
    """The tokenizer.model that bllama train wrote next to its checkpoints."""
    from .tokenizer import SentencePieceTokenizer

    p = Path(checkpoint_path)
    for d in [p] + list(p.parents)[:3]:
        cand = d / "tokenizer.model"
        if cand.exists():
            return SentencePieceTokenizer(cand)
    raise FileNotFoundError(f"no tokenizer.model next to {checkpoint_path}; pass --tokenizer")
