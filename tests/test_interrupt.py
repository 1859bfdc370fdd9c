"""Ctrl-C and kill during training and the other commands: training stops after the step under way with
last.ckpt written, a second signal stops at once and keeps the previous checkpoint, the command line ends with one
line and the shell's status (130, 143), and nothing half-written is left."""
import os
import signal
import threading

import pytest
import pytorch_lightning as pl
import torch

from bllama import bLlama
from bllama.signals import Interrupted, termination_raises
from bllama.train.trainer import run
from micro_training import micro_cfg as _micro_cfg, random_dm


def micro_cfg(**kw):  # smaller and longer than the training tests' default: signals land mid-run
    return _micro_cfg(**{**dict(seq_len=16, hidden_size=32, num_heads=2, num_layers=1, ffn_size=64, batch_size=2,
                                warmup_steps=1, max_steps=50), **kw})


class _Tok:  # run() saves the tokenizer when it can; these tests need none
    pass


class SignalAt(pl.Callback):
    """Sends `signum` to this process `times` times at the start of optimizer step `step` (1-based)."""

    def __init__(self, step: int, signum: int, times: int = 1):
        self.step, self.signum, self.times = step, signum, times

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
            self.step = -1


def _step_of(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def _run(out, cfg, *callbacks, **kw):
    return run(out, bLlama(cfg), _Tok(), random_dm(cfg, n=4000, resumable=True), max_steps=cfg.max_steps, accelerator="cpu", devices=1,
               precision="32-true", enable_progress_bar=False, callbacks=list(callbacks), **kw)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_writes_last_ckpt_and_the_run_resumes(tmp_path, signum):
    """Before: Ctrl-C left no checkpoint (all steps lost without --checkpoint-every) and SIGTERM ended `bllama train`
    with status 0 as if it had finished."""
    cfg = micro_cfg()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as e:
        _run(tmp_path, cfg, SignalAt(3, signum), val_every=2, limit_val_batches=1)
    assert e.value.signum == signum and e.value.exit_status == 128 + signum
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert "stopped after step 3" in e.value.detail and str(last) in e.value.detail
    assert _step_of(last) == 3  # the step under way finished and was kept
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers are back
    trainer = _run(tmp_path, micro_cfg(max_steps=5), resume=str(last))
    assert trainer.global_step == 5 and _step_of(last) == 5


def test_a_signal_between_accumulated_micro_batches_stops_at_the_optimizer_step(tmp_path):
    cfg = micro_cfg()

    class Mid(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 2:  # the first micro-batch of step 2 (accumulate 2)
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        _run(tmp_path, cfg, Mid(), accumulate=2)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 4  # two whole steps


def test_a_second_signal_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    cfg = micro_cfg()
    with pytest.raises(Interrupted) as e:
        _run(tmp_path, cfg, SignalAt(4, signal.SIGINT, times=2), checkpoint_every=2)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert e.value.signum == signal.SIGINT and "holds step 2" in e.value.detail
    assert _step_of(last) == 2


def test_a_second_signal_during_the_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = micro_cfg()
    with pytest.raises(Interrupted):
        _run(tmp_path, cfg, SignalAt(3, signal.SIGTERM), checkpoint_every=2)
    last = tmp_path / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    real_save = torch.save

    def save_then_signal(obj, f, *a, **k):  # a second Ctrl-C arrives while the checkpoint is being written
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(1000)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(torch, "save", save_then_signal)
    with pytest.raises(Interrupted) as e:
        _run(tmp_path, micro_cfg(max_steps=9), SignalAt(4, signal.SIGINT), resume=str(last))
    assert e.value.signum == signal.SIGINT
    assert last.read_bytes() == good  # the interrupted save replaced nothing
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # and left no temporary


def test_a_signal_before_training_starts_stops_at_once(tmp_path):
    cfg = micro_cfg()

    class Early(pl.Callback):  # before StopOnSignal's own setup: the CLI's SIGTERM handler raises
        def setup(self, trainer, module, stage):
            os.kill(os.getpid(), signal.SIGTERM)

    with termination_raises(), pytest.raises(Interrupted) as e:
        _run(tmp_path, cfg, Early())
    assert e.value.signum == signal.SIGTERM and "nothing to resume from" in e.value.detail
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning had set it to SIG_IGN


def test_training_off_the_main_thread_is_left_to_lightning(tmp_path):
    """Python sets signal handlers on the main thread only: a run in a worker thread must not fail for it."""
    cfg = micro_cfg(max_steps=2)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("trainer", _run(tmp_path, cfg)))
    t.start()
    t.join(120)
    assert out["trainer"].global_step == 2


# ---- the command line: one line, the shell's status, nothing half-written ---------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _prepare_killed_by(signum, tmp_path, sp_model_path):
    """`bllama data prepare` (through main, as the console script calls it) receiving `signum` after its first chunk
    of tokens was written to the temporary file."""
    import subprocess
    import sys

    (tmp_path / "c.txt").write_text("some text to tokenize\n" * 200, encoding="utf-8")
    (tmp_path / "c.bin").write_bytes(b"the previous token file")
    script = f"""
import os, signal, sys
import bllama.data.token_files as tf
real = tf.tokenize_files
def chunks(*a, **k):
    for i, chunk in enumerate(real(*a, **k)):
        yield chunk
    os.kill(os.getpid(), {int(signum)})  # the temporary file holds the tokens by now
    import time; time.sleep(5)
    raise AssertionError("the signal did not stop the command")
tf.tokenize_files = chunks
from bllama.cli import main
sys.exit(main(["data", "prepare", {str(tmp_path / 'c.txt')!r}, "--tokenizer", {sp_model_path!r},
               "-o", {str(tmp_path / 'c.bin')!r}, ]))
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_command_with_one_line_its_status_and_no_partial_output(tmp_path, sp_model_path, signum):
    """Before: Ctrl-C printed a traceback; SIGTERM ended the process on the spot, so the temporary file stayed
    behind (until the next save of that name) and no message said what happened."""
    r = _prepare_killed_by(signum, tmp_path, sp_model_path)
    assert r.returncode == 128 + signum, (r.returncode, r.stderr[-3000:])
    name = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}[signum]
    assert r.stderr.strip().splitlines()[-1] == f"bllama data: {name}" and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "c.bin").read_bytes() == b"the previous token file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.txt"]  # no .c.bin.*.tmp, no c.bin.json


def _main_fails(monkeypatch, capsys, command: str, exc: BaseException, argv):
    import bllama.cli as cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, f"cmd_{command}", fail)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return e.value.code, capsys.readouterr().err


def test_system_errors_are_one_line_not_a_traceback(monkeypatch, capsys):
    """A file it may not read, a full disk: the system's to fix, said in one line (status 1), as bad input is."""
    code, err = _main_fails(monkeypatch, capsys, "export", PermissionError(13, "Permission denied", "run/last.ckpt"),
                            ["export", "run", "-o", "m.gguf"])
    assert code == 1 and err == "bllama export: error: run/last.ckpt: permission denied\n"
    code, err = _main_fails(monkeypatch, capsys, "export", OSError(28, "no space left on the device writing m.gguf"),
                            ["export", "run", "-o", "m.gguf"])
    assert code == 1 and err == "bllama export: error: no space left on the device writing m.gguf\n"


def test_running_out_of_memory_is_one_line_with_what_to_change(monkeypatch, capsys):
    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 50331648 bytes. Error code 12 (Cannot allocate memory)")
    code, err = _main_fails(monkeypatch, capsys, "train", oom, ["train", "d.txt"])
    assert code == 1 and err.startswith("bllama train: error: out of memory: can't allocate memory: you tried to "
                                        "allocate 50331648 bytes") and "--batch-size" in err and "\n" == err[-1:]
    code, err = _main_fails(monkeypatch, capsys, "eval", MemoryError(), ["eval", "m.gguf", "--data", "d.txt"])
    assert code == 1 and err.startswith("bllama eval: error: out of memory")
    with pytest.raises(RuntimeError, match="something else"):  # other RuntimeErrors keep their traceback
        _main_fails(monkeypatch, capsys, "eval", RuntimeError("something else"), ["eval", "m.gguf", "--data", "x"])


def test_an_output_that_cannot_be_written_fails_before_the_work(tmp_path, capsys, monkeypatch):
    """export used to load and quantize the whole model before finding out that -o could not be written."""
    import bllama.cli as cli
    import bllama.train.trainer as trainer

    monkeypatch.setattr(trainer, "load_checkpoint", lambda *a: pytest.fail("loaded the model first"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "file" / "m.gguf")])
    assert e.value.code == 1
    assert capsys.readouterr().err == (f"bllama export: error: cannot write {tmp_path / 'file' / 'm.gguf'}: "
                                       f"{tmp_path / 'file'} is a file, not a folder\n")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # what a folder without write permission answers
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "prepare", "x.txt", "--tokenizer", "t.model", "-o", str(tmp_path / "out" / "t.bin")])
    assert e.value.code == 1
    assert f"cannot write {tmp_path / 'out' / 't.bin'}: no permission to create files there" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_tokenizer_training_at_once(tmp_path, signum):
    """SentencePiece trains in C++ with the GIL released but never returns to Python until it is done, so Ctrl-C
    waited for the whole training (minutes on a large corpus). The trainer is replaced here by a C call of the same
    kind (pbkdf2: GIL released, no signal checks, minutes long); the command must end within seconds."""
    import subprocess
    import sys
    import time

    (tmp_path / "c.txt").write_text("some text to train a tokenizer on\n" * 50, encoding="utf-8")
    script = f"""
import hashlib, os, sys
import bllama.tokenizers.sentencepiece as sp
class Trainer:
    @staticmethod
    def train(**kwargs):
        print("trainer started", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)
        raise AssertionError("the signal did not stop the command")
sp.spm.SentencePieceTrainer = Trainer
from bllama.cli import main
sys.exit(main(["tokenizer", "train", {str(tmp_path / 'c.txt')!r}, "-o", {str(tmp_path / 'tok')!r},
               "--vocab-size", "300"]))
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        while p.stdout.readline() not in ("trainer started\n", ""):
            pass
        sent = time.monotonic()
        p.send_signal(signum)
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        p.kill()
    assert p.returncode == 128 + signum, (p.returncode, err[-3000:])
    assert took < 30, took  # the replaced trainer runs for minutes
    assert "Traceback" not in err and sorted(q.name for q in tmp_path.iterdir()) == ["c.txt"], err
