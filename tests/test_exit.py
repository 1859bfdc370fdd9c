"""A script that exits while a daemon thread is inside the engine must exit cleanly (status 0), not abort.

CPython (before 3.14) ends a daemon thread that takes the GIL back during finalization with pthread_exit; that
unwinding through the bindings' GIL guard (a noexcept destructor) aborted the process with "terminate called without
an active exception" (status 134, every run of the first script below before the fix)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_slots import model_path  # noqa: F401 - the same random chat model the engine's slot tests use

ROOT = Path(__file__).resolve().parents[1]  # this tree's bllama


def run_script(tmp_path, text: str) -> subprocess.CompletedProcess:
    script = tmp_path / "exits.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_exit_while_a_daemon_thread_generates(model_path, tmp_path):  # noqa: F811
    """The running generation stops at its next token (the engine's exit hook) and says why; nothing aborts."""
    p = run_script(tmp_path, f"""
import threading, time
from bllama import Runtime
rt = Runtime.load({model_path!r}, threads=2)
started = threading.Event()
def run():
    while True:
        rt.generate("hello there", max_new_tokens=400, stop_at_eos=False)
        started.set()
threading.Thread(target=run, daemon=True).start()
started.wait(60)
time.sleep(0.05)
print("exiting", flush=True)
""")
    assert p.returncode == 0 and p.stdout.strip() == "exiting", (p.returncode, p.stderr)
    assert "terminate" not in p.stderr and "FATAL" not in p.stderr, p.stderr
    if "Traceback" in p.stderr and "Error:" in p.stderr:  # the thread's exception, when it got to print it
        assert "the Python interpreter is exiting" in p.stderr, p.stderr


def test_exit_while_a_call_outlasts_the_exit_hook(tmp_path):
    """A call still in the engine when the interpreter finalizes (a 4 s doorbell wait, past the hook's 2 s; a
    module-level __del__ holds finalization open until it returns) ends its thread quietly. The thread runs the
    bound method itself: a thread running a __main__ function would keep __main__'s globals, and `keep`, alive."""
    p = run_script(tmp_path, """
import os, threading, time
class SlowTeardown:
    def __del__(self):
        os.write(1, b"finalizing\\n")
        time.sleep(5)
keep = SlowTeardown()
from bllama import _engine
bell = _engine.Doorbell()
threading.Thread(target=bell.wait, args=(bell.rings(), 4.0), daemon=True).start()
time.sleep(0.2)
print("exiting", flush=True)
""")
    assert p.returncode == 0 and p.stdout.split() == ["exiting", "finalizing"], (p.returncode, p.stdout, p.stderr)
    assert "terminate" not in p.stderr and "FATAL" not in p.stderr, p.stderr


def test_calls_after_the_exit_hook_are_refused(model_path, tmp_path):  # noqa: F811
    """An engine call made from an atexit hook that runs after the engine's (registered before it) is refused with
    a RuntimeError that says why, instead of starting work the interpreter cannot wait for."""
    p = run_script(tmp_path, f"""
import atexit
def late():
    try:
        rt.generate("hello", max_new_tokens=2)
    except RuntimeError as e:
        print("refused:", e, flush=True)
atexit.register(late)  # before the engine module is imported: runs after its hook
from bllama import Runtime
rt = Runtime.load({model_path!r}, threads=1)
print(len(rt.generate("hello", max_new_tokens=2, stop_at_eos=False)) >= 0, flush=True)
""")
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert p.stdout.splitlines() == ["True", "refused: the Python interpreter is exiting: engine calls are stopped"], \
        p.stdout
