"""The training progress bar: Lightning's own, without the "Epoch 0/-2" its rich bar shows for a run that is bounded
by steps or time (Lightning sets max_epochs to -1 there and prints max_epochs - 1); and, where stdout is no terminal
(a log file, `nohup`, a job scheduler), progress lines instead of a bar."""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Optional

from pytorch_lightning.callbacks import ProgressBar, RichProgressBar
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE


class _EpochBoundBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        text = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:  # no epoch limit: "Epoch 0", not "Epoch 0/-2"
            text = text.replace(f"Epoch {current_epoch}/{max_epochs - 1}", f"Epoch {current_epoch}", 1)
        return text


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class LineProgress(ProgressBar):
    """Progress as plain lines, flushed: one after the first optimizer step, then one every `every_s` seconds, one
    per validation and one at the end. Rich's bar draws nothing into a file until the run ends (it redraws only on a
    terminal), so a redirected run said nothing for hours; tqdm's would fill the file with carriage returns."""

    def __init__(self, every_s: float = 30.0, stream=None):
        super().__init__()
        self.every_s, self.stream = every_s, stream
        self._enabled = True
        self._t0 = self._last = None
        self._first_step = self._last_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _say(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def _total(self, trainer) -> Optional[int]:
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        batches = self.total_train_batches
        if batches == float("inf"):
            return None
        return int(batches) // max(trainer.accumulate_grad_batches, 1) * max(trainer.max_epochs or 1, 1)

    def _metrics(self, trainer, pl_module, names) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        out = []
        for name in names:
            value = metrics.get(name)
            if isinstance(value, (int, float)):
                out.append(f"{name} {value:.4g}" if name != "tokens_per_s" else f"{value:,.0f} tokens/s")
        return ", ".join(out)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._last, self._first_step = time.monotonic(), None, trainer.global_step
        self._last_step = trainer.global_step
        total = self._total(trainer)
        limit = f" of {total}" if total else ""
        start = f" (resumed at step {trainer.global_step})" if trainer.global_step else ""
        self._say(f"training: step {trainer.global_step}{limit}{start}; a line every {self.every_s:g} s")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return
        if trainer.global_step == self._last_step:  # between accumulated micro-batches: no new step
            return
        self._last, self._last_step = now, trainer.global_step
        self._say(self._line(trainer, pl_module, now))

    def _line(self, trainer, pl_module, now: float) -> str:
        step, total = trainer.global_step, self._total(trainer)
        elapsed = now - self._t0
        done = step - self._first_step
        text = f"step {step}" + (f"/{total} ({100 * step / total:.1f}%)" if total else "")
        metrics = self._metrics(trainer, pl_module, ("train_loss", "val_loss", "tokens_per_s"))
        text += f", {metrics}" if metrics else ""
        text += f", {_clock(elapsed)} elapsed"
        if total and done > 0 and step < total:
            text += f", ~{_clock(elapsed / done * (total - step))} left"
        return text

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            metrics = self._metrics(trainer, pl_module, ("val_loss", "val_ppl"))
            if metrics:
                self._say(f"validation at step {trainer.global_step}: {metrics}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._say("end: " + self._line(trainer, pl_module, time.monotonic()))


def _interactive() -> bool:
    """Whether stdout shows a redrawn bar: a terminal, or a notebook (rich's own test)."""
    if _RICH_AVAILABLE:
        from rich.console import Console

        console = Console()
        return console.is_terminal or console.is_jupyter
    return sys.stdout.isatty()


def progress_bar() -> Optional[ProgressBar]:
    """The bar to give the Trainer: on a terminal, the rich one (what Lightning picks when rich is installed) without
    a negative epoch count, or None where rich is absent, so Lightning's tqdm bar (which prints no epoch limit) stays;
    anywhere else (a log file) LineProgress."""
    if not _interactive():
        return LineProgress()
    return _EpochBoundBar() if _RICH_AVAILABLE else None
