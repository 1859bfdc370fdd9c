"""Ctrl-C and kill: one exception for both, so that every `finally` (temporary files, half-written folders) runs and
the command line ends with one line and the shell's exit status (130, 143) instead of a traceback or a silent 0.

Torch-free on purpose: the engine-only commands use it too.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

NAMES = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}
if hasattr(signal, "SIGHUP"):
    NAMES[signal.SIGHUP] = "hung up (SIGHUP)"


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal: SIGINT (what KeyboardInterrupt always meant), SIGTERM or SIGHUP. A subclass of
    KeyboardInterrupt, so `except Exception` does not swallow it and Lightning shuts down as on Ctrl-C. `detail`
    says what was kept (a checkpoint, say); `exit_status` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = ""):
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum, self.detail = int(signum), detail

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        return NAMES.get(self.signum, f"signal {self.signum}") + (f": {self.detail}" if self.detail else "")


def as_interrupted(e: KeyboardInterrupt) -> Interrupted:
    """A plain KeyboardInterrupt (Python's SIGINT handler) as an Interrupted; an Interrupted as it is."""
    return e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)


def _raise(signum, frame):
    raise Interrupted(signum)


@contextmanager
def termination_raises() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise Interrupted, as SIGINT raises KeyboardInterrupt, instead of ending the
    process on the spot (which skipped every cleanup: temporaries stayed behind until the next save of that file).
    Signals whose handler is not the default (nohup's ignored SIGHUP, an embedding program's own) are left alone,
    and so is everything off the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for signum in (s for s in NAMES if s != signal.SIGINT):
        if signal.getsignal(signum) is signal.SIG_DFL:
            old[signum] = signal.signal(signum, _raise)
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
