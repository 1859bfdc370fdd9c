"""Quantization warm-up for converting a full-precision model to b1.58 (`bllama train --quant-warmup-steps N`).

Over the first N optimizer steps every BitLinear computes `x + lambda * (q(x) - x).detach()` for its weight and its
input activations, lambda rising linearly from 0 to 1 (Hugging Face's "Fine-tuning LLMs to 1.58bit" recipe), so a
model trained in full precision is not thrown into the ternary function in one step. lambda is a function of the
global step only, so a resumed run blends exactly as an uninterrupted one.
"""
from __future__ import annotations

import sys

import pytorch_lightning as pl

from ..model.bitlinear import BitLinear


def warmup_lambda(step: int, steps: int) -> float:
    return 1.0 if steps <= 0 else min(1.0, step / steps)


def set_quant_mix(model, lam) -> None:
    """Set every BitLinear's blend (None or >= 1: fully quantized)."""
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.quant_mix = None if lam is None or lam >= 1 else float(lam)


class QuantWarmup(pl.Callback):
    def __init__(self, steps: int):
        if steps < 0:
            raise ValueError(f"quant warm-up steps must be >= 0, got {steps}")
        self.steps = steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lam = warmup_lambda(trainer.global_step, self.steps)
        set_quant_mix(pl_module, lam)
        pl_module.log("quant_lambda", lam)

    def on_validation_start(self, trainer, pl_module):  # validate the model as it trains now
        set_quant_mix(pl_module, warmup_lambda(trainer.global_step, self.steps))

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step >= self.steps:
            set_quant_mix(pl_module, None)
        elif trainer.is_global_zero:  # else export writes a fully ternary model that was never trained as one
            lam = warmup_lambda(trainer.global_step, self.steps)
            print(f"warning: training stopped at step {trainer.global_step} of the {self.steps} quantization warm-up "
                  f"steps (the model is {lam:.0%} ternary); an export of this checkpoint is fully ternary, the function "
                  f"it was not trained as: continue with --resume last and a --max-steps past {self.steps}",
                  file=sys.stderr)
