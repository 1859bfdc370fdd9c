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


@pytest.fixture
def nearly_full(monkeypatch):
    """The disk as a writer that just ran out of space sees it: a few KiB free."""
    import shutil

    import bllama.atomic as atomic

    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, (1 << 30) - 4096, 4096))


@pytest.mark.parametrize("error", [
    OSError("50688 requested and 23872 written"),  # numpy's tofile (GGUF tensors): no errno
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 30756288 vs 30756176"),  # torch.save
    RuntimeError('INTERNAL: src/trainer_interface.cc(783) [output->WriteLine(absl::StrCat(piece.piece(), "\\t"'),
])
def test_a_full_disk_is_named_whatever_the_writer_called_it(tmp_path, nearly_full, error):
    """Before, only an OSError with errno ENOSPC was recognized; the real writers' failures went out as tracebacks
    ending in the lines above."""
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good")
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 100)
            raise error
    assert e.value.errno == errno.ENOSPC and f"no space left on the device writing {target}" in str(e.value)
    assert str(error).splitlines()[0][:40] in str(e.value)  # the writer's own words are kept
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_other_failures_stay_what_they_are_even_on_a_full_disk(tmp_path, nearly_full):
    with pytest.raises(ValueError, match="empty corpus"):
        with atomic_path(tmp_path / "t.bin"):
            raise ValueError("empty corpus")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "t.bin"):
            raise KeyboardInterrupt


def test_an_io_error_with_space_left_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(OSError, match="^50688 requested") as e:
        with atomic_path(tmp_path / "m.gguf"):
            raise OSError("50688 requested and 23872 written")
    assert e.value.errno is None


def test_a_full_disk_while_writing_a_folder_says_so_and_how_much(tmp_path):
    from safetensors import SafetensorError

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(OSError) as e:
        with atomic_dir(tmp_path / "hf", size_hint=5 << 20) as d:
            (d / "model.safetensors").write_bytes(b"x" * 10)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert e.value.errno == errno.ENOSPC and "writing " + str(tmp_path / "hf") in str(e.value)
    assert "about 5.0 MiB" in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "hf"]


def test_a_checkpoint_save_on_a_full_disk_names_the_checkpoint(tmp_path, nearly_full, monkeypatch):
    import torch

    from bllama.train.trainer import AtomicCheckpointIO

    def short_write(obj, f, *a, **k):
        Path(f).write_bytes(b"PK" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 30756288 vs 30756176")

    monkeypatch.setattr(torch, "save", short_write)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError, match="no space left on the device writing .*last.ckpt"):
        AtomicCheckpointIO().save_checkpoint({"x": 1}, target)
    assert list(target.parent.iterdir()) == []


def test_a_folder_it_may_not_write_is_named_not_the_temporary(tmp_path, monkeypatch):
    import tempfile

    def denied(prefix, suffix, dir):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abcdefgh" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError) as e:
        with atomic_path(tmp_path / "m.gguf"):
            pass
    assert str(e.value) == f"[Errno 13] cannot write {tmp_path / 'm.gguf'}: Permission denied"


@pytest.mark.parametrize("failure", ["full disk", "Ctrl-C"])
def test_tokenizer_training_that_fails_while_writing_keeps_the_previous_tokenizer(tmp_path, monkeypatch,
                                                                                  sp_model_path, sp_corpus_text,
                                                                                  failure):
    """SentencePiece wrote PREFIX.model in place: a full disk left a truncated tokenizer.model (one that no longer
    loads) where the good one was, a traceback ending in 'INTERNAL: ... WriteLine', and an empty PREFIX.vocab."""
    import builtins

    import sentencepiece as spm

    import bllama.tokenizers.sentencepiece as sp_module
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece

    good = Path(sp_model_path).read_bytes()
    (tmp_path / "tok.model").write_bytes(good)
    (tmp_path / "c.txt").write_text(sp_corpus_text[:20_000], encoding="utf-8")
    if failure == "full disk":  # the trainer finishes; the disk fills while the files are written
        class Full:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                self.fh.write(data[:10])
                self.fh.flush()
                raise OSError(errno.ENOSPC, "No space left on device")

            writelines = lambda self, lines: self.write("".join(lines))

        real_open = builtins.open
        monkeypatch.setattr(sp_module, "open", lambda f, mode="r", *a, **k: Full(real_open(f, mode, *a, **k))
                            if "w" in mode and str(f).endswith(".vocab") else real_open(f, mode, *a, **k),
                            raising=False)
        with pytest.raises(OSError, match="no space left on the device writing .*tok.model") as e:
            train_sentencepiece([tmp_path / "c.txt"], tmp_path / "tok", vocab_size=400)
        assert e.value.errno == errno.ENOSPC
    else:  # Ctrl-C while SentencePiece trains
        def interrupted(**kw):
            raise KeyboardInterrupt

        monkeypatch.setattr(spm.SentencePieceTrainer, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_sentencepiece([tmp_path / "c.txt"], tmp_path / "tok", vocab_size=300, texts=["more text"])
    assert (tmp_path / "tok.model").read_bytes() == good
    SentencePieceTokenizer(tmp_path / "tok.model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "tok.model"]  # no .vocab, temp or texts file


def test_a_trained_tokenizer_does_not_record_where_it_was_written(tmp_path, sp_corpus_text):
    """With the temporary folder the model would name it (trainer_spec.model_prefix), so two trainings of the same
    corpus would differ; written through model_writer it names no output path at all."""
    from bllama.tokenizers.sentencepiece import train_sentencepiece

    (tmp_path / "c.txt").write_text(sp_corpus_text[:20_000], encoding="utf-8")
    a = Path(train_sentencepiece([tmp_path / "c.txt"], tmp_path / "a" / "secret_name", vocab_size=400)).read_bytes()
    b = Path(train_sentencepiece([tmp_path / "c.txt"], tmp_path / "b" / "other", vocab_size=400)).read_bytes()
    assert a == b and b"secret_name" not in a and b".tmp" not in a


def test_tokenizer_training_writes_model_and_vocab_with_the_usual_mode(tmp_path, sp_corpus_text):
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece

    (tmp_path / "c.txt").write_text(sp_corpus_text[:20_000], encoding="utf-8")
    old = os.umask(0o022)
    try:
        path = train_sentencepiece([tmp_path / "c.txt"], tmp_path / "sub" / "tok", vocab_size=400, texts=["extra"])
    finally:
        os.umask(old)
    assert path == str(tmp_path / "sub" / "tok.model")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["tok.model", "tok.vocab"]
    assert stat.S_IMODE((tmp_path / "sub" / "tok.model").stat().st_mode) == 0o644
    assert SentencePieceTokenizer(path).vocab_size == 400
