"""Checkpoints are untrusted input: loading one must never run code from its pickle (issue #14, item 1)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bllama.model.config import bLlamaConfig
from bllama.train.module import bLlama
from bllama.train.trainer import AtomicCheckpointIO, UnsafeCheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    cfg = bLlamaConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, ffn_size=32, seq_len=8)
    torch.save({"state_dict": bLlama(cfg).state_dict(), "hyper_parameters": {"config": cfg.to_dict()},
                "payload": _RunsCode(marker), "pytorch-lightning_version": "2.6.0"}, path)
    return path


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load.*could run code"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):  # --resume reads through the CheckpointIO
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert not marker.exists()


def test_a_sharded_checkpoint_whose_meta_pt_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"")
    _evil_checkpoint(folder / "meta.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match="meta.pt"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_the_cli_refuses_a_hostile_checkpoint_with_a_clear_message(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    (tmp_path / "tokenizer.model").write_bytes(b"")  # never reached
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "export", str(ckpt), "-o", str(tmp_path / "out.gguf")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "refusing to load" in r.stderr
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path):
    """A text file (`bllama generate notes.txt ...`) went to the unpickler and ended in `KeyError: 105`; a truncated
    checkpoint must say it is incomplete."""
    text = tmp_path / "input.txt"
    text.write_text("hello world\n")
    with pytest.raises(ValueError, match="input.txt is not a model: give a .gguf file"):
        load_checkpoint(text)
    cfg = bLlamaConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, ffn_size=32, seq_len=8)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": bLlama(cfg).state_dict(), "hyper_parameters": {"config": cfg.to_dict()},
                "pytorch-lightning_version": "2.6.0"}, good)
    assert isinstance(load_checkpoint(good), bLlama)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.ckpt is not a complete checkpoint"):
        load_checkpoint(cut)


def test_resume_refuses_a_hostile_checkpoint_before_training(tmp_path, sp_model_path):
    """--resume reads the checkpoint's config first (to refuse another shape): that read is weights-only too."""
    marker = tmp_path / "pwned"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    _evil_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    (tmp_path / "run" / "tokenizer.model").write_bytes(Path(sp_model_path).read_bytes())
    (tmp_path / "d.txt").write_text("some text " * 200)
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "train", str(tmp_path / "d.txt"), "--out",
                        str(tmp_path / "run"), "--resume", "last", "--max-steps", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "refusing to load" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not marker.exists()
