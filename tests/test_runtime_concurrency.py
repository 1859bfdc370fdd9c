"""A Runtime shared by threads, or by interleaved streams of one thread, never hangs (issue #14, item 2): callers
take turns, and a thread that would wait for itself gets RuntimeBusyError. The scenarios run in a subprocess with a
timeout, so a deadlock fails the test instead of hanging the suite."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bllama._engine")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, sp_tokenizer):
    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.convert.gguf_export import export_gguf

    torch.manual_seed(0)
    cfg = bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, hidden_size=256, num_layers=2, num_heads=4, ffn_size=256,
                       seq_len=128)
    model = bLlama(cfg)
    model.quantize_weights_to_ternary()
    return export_gguf(model, sp_tokenizer, tmp_path_factory.mktemp("conc") / "tiny.gguf")


def test_threads_and_interleaved_streams_never_hang(tiny_gguf):
    try:
        r = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "runtime_concurrency.py"),
                            str(tiny_gguf)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})  # this tree's bllama
    except subprocess.TimeoutExpired:
        pytest.fail("the Runtime deadlocked: the scenarios did not finish in 120 s")
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-2000:] + r.stderr[-4000:]


def test_stream_left_open_by_a_finished_thread_makes_others_wait(tmp_path):
    """The turn's holder was threading.get_ident(), which a new thread reuses once the old one ended: a thread
    started after one that left a stream open got RuntimeBusyError "this same thread" instead of its turn."""
    import threading

    from bllama import Runtime
    from bllama.assets import SHAKESPEARE_MODEL

    rt = Runtime.load(SHAKESPEARE_MODEL, threads=1)
    left_open = rt.stream("ROMEO:", max_new_tokens=50)
    t = threading.Thread(target=lambda: next(left_open))
    t.start()
    t.join()
    out, errors = [], []

    def later():
        try:
            out.append(rt.generate("ROMEO:", max_new_tokens=3))
        except Exception as e:
            errors.append(e)

    waiting = threading.Thread(target=later)
    waiting.start()
    waiting.join(1.0)
    assert not errors and waiting.is_alive()  # waits its turn
    left_open.close()
    waiting.join(30)
    assert not errors and len(out) == 1
