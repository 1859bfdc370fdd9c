"""Long steps say how far they are: `bllama eval` counted nothing while it scored a large file."""
import io
import sys

import numpy as np

from bllama.tools.evaluate import windowed_nll


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_eval_shows_a_bar_on_a_terminal_and_nothing_in_a_log(monkeypatch):
    logits = lambda ids: np.zeros((len(ids), 8))
    ids = list(range(8)) * 40
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    plain = windowed_nll(ids, 16, logits)
    assert term.getvalue() == ""  # off unless asked
    assert windowed_nll(ids, 16, logits, progress=True) == plain
    assert "scoring:   0%|          | 0/20" in term.getvalue()  # then redrawn, and wiped at the end (leave=False)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    windowed_nll(ids, 16, logits, progress=True)
    assert log.getvalue() == ""  # a file is not a terminal: no carriage-return lines
