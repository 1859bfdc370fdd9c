"""Interrupted saves leave nothing behind for long, exported files get the usual mode, a full disk says what it
needed (issue #14, items 5 and 7)."""
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bllama.atomic import atomic_dir, atomic_path, atomic_write

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_save_killed_with_sigkill_leaves_a_temp_that_the_next_save_removes(tmp_path):
    target = tmp_path / "last.ckpt"
    code = (f"import time; from bllama.atomic import atomic_write\n"
            f"with atomic_write({str(target)!r}) as fh:\n"
            f"    fh.write(b'x' * 4096); fh.flush(); print('writing', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".last.ckpt.") and left[0].endswith(".tmp")  # what kill -9 leaves
    with atomic_write(target) as fh:
        fh.write(b"good")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_only_our_own_stale_temps_of_that_target_are_removed(tmp_path):
    target = tmp_path / "model.gguf"
    dead, live = _dead_pid(), os.getppid()
    stale = [f".model.gguf.{dead}.abcd_123.tmp", ".model.gguf.k2j4h5g6.tmp"]  # a dead saver's; an older version's
    kept = [f".model.gguf.{live}.abcd_123.tmp",  # a live process may be saving right now
            ".other.gguf.k2j4h5g6.tmp", "model.gguf.tmp", ".model.gguf.notes", ".model.gguf.k2j4h5g6.tmp.keep",
            "notes.txt", f".model.gguf.{dead}.abcd.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".model.gguf.{dead}.zzzzzzzz.tmp").mkdir()  # a folder from an interrupted atomic_dir
    stale.append(f".model.gguf.{dead}.zzzzzzzz.tmp")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["model.gguf"])


def test_files_and_folders_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.gguf") as fh:
            fh.write(b"x")
        with atomic_dir(tmp_path / "hf") as d:
            (d / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.gguf").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "hf").stat().st_mode) == 0o755


def test_a_full_disk_names_the_file_and_the_space_needed(tmp_path):
    target = tmp_path / "big.gguf"
    with pytest.raises(OSError) as e:
        with atomic_path(target, size_hint=3 << 30) as tmp:
            tmp.write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC
    assert str(target) in str(e.value) and "3072.0 MiB" in str(e.value) and "free" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_gguf_export_says_which_file_and_how_much(tmp_path, monkeypatch, sp_tokenizer):
    import gguf
    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.convert.gguf_export import export_gguf

    torch.manual_seed(0)
    model = bLlama(bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, hidden_size=256, num_layers=1, num_heads=4,
                                ffn_size=256, seq_len=64))
    model.quantize_weights_to_ternary()

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    target = tmp_path / "m.gguf"
    with pytest.raises(OSError, match=r"m\.gguf: it needs about 0\.\d MiB") as e:
        export_gguf(model, sp_tokenizer, target)
    assert e.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
