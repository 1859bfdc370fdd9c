"""The training progress bar: Lightning's own, without the "Epoch 0/-2" its rich bar shows for a run that is bounded
by steps or time (Lightning sets max_epochs to -1 there and prints max_epochs - 1)."""
from __future__ import annotations

from typing import Optional

from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE


class _EpochBoundBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        text = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:  # no epoch limit: "Epoch 0", not "Epoch 0/-2"
            text = text.replace(f"Epoch {current_epoch}/{max_epochs - 1}", f"Epoch {current_epoch}", 1)
        return text


def progress_bar() -> Optional[RichProgressBar]:
    """The bar to give the Trainer: the rich one (what Lightning picks when rich is installed) without a negative
    epoch count; None where rich is absent, so Lightning's tqdm bar (which prints no epoch limit) stays."""
    return _EpochBoundBar() if _RICH_AVAILABLE else None
