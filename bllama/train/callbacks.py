"""Lightning callbacks for bLLaMa training."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any

import torch

try:
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_info
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl  # type: ignore
    from lightning.pytorch.utilities import rank_zero_info  # type: ignore

from ..atomic import atomic_path

__all__ = ["WeightDistributionCallback", "ternary_fractions", "plot_ternary_distribution"]

_NUM = re.compile(r"\.(\d+)(?=\.|$)")


def ternary_fractions(module: torch.nn.Module) -> "OrderedDict[str, tuple[float, float, float]]":
    """``{name: (frac_-1, frac_0, frac_+1)}`` for every submodule with ``ternary_codes()``."""
    out: "OrderedDict[str, tuple[float, float, float]]" = OrderedDict()
    with torch.no_grad():
        for name, mod in module.named_modules():
            fn = getattr(mod, "ternary_codes", None)
            if not callable(fn):
                continue
            codes = fn()
            n = codes.numel()
            if n == 0:
                continue
            neg = int((codes == -1).sum().item())
            pos = int((codes == 1).sum().item())
            zero = int((codes == 0).sum().item())
            if neg + pos + zero != n:
                raise ValueError(f"{name}.ternary_codes() returned values outside {{-1, 0, 1}}")
            out[name or type(mod).__name__] = (neg / n, zero / n, pos / n)
    return out


def _group(name: str) -> tuple[str, str]:
    """Split ``model.layers.3.self_attn.q_proj`` into (``self_attn.q_proj``, ``3``)."""
    nums = _NUM.findall(name)
    if not nums:
        return name.rsplit(".", 1)[-1] if "." in name else name, "-"
    last = list(_NUM.finditer(name))[-1]
    suffix = name[last.end():].lstrip(".")
    prefix = name[: last.start()]
    key = suffix or prefix.rsplit(".", 1)[-1]
    return key, ".".join(nums)


def plot_ternary_distribution(fractions: "OrderedDict[str, tuple[float, float, float]]", path: str,
                              title: str = "") -> str:
    """Write a PNG: one row per projection type, one stacked bar (-1/0/+1) per layer."""
    # Figure + Agg canvas directly: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups: "OrderedDict[str, list[tuple[str, tuple[float, float, float]]]]" = OrderedDict()
    for name, fr in fractions.items():
        key, layer = _group(name)
        groups.setdefault(key, []).append((layer, fr))
    if not groups:
        raise ValueError("no layers with ternary_codes() to plot")

    max_bars = max(len(v) for v in groups.values())
    rows = len(groups)
    fig = Figure(figsize=(max(6.0, 0.28 * max_bars + 2.5), 1.35 * rows + 1.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    colors = ("#3b6fb6", "#c8c8c8", "#c8453b")
    labels = ("-1", "0", "+1")
    for ax, (key, items) in zip(axes, groups.items()):
        x = list(range(len(items)))
        neg = [fr[0] for _, fr in items]
        zero = [fr[1] for _, fr in items]
        pos = [fr[2] for _, fr in items]
        ax.bar(x, neg, color=colors[0], width=0.85, label=labels[0])
        ax.bar(x, zero, bottom=neg, color=colors[1], width=0.85, label=labels[1])
        ax.bar(x, pos, bottom=[a + b for a, b in zip(neg, zero)], color=colors[2], width=0.85, label=labels[2])
        mean_zero = sum(zero) / len(zero)
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.6, max_bars - 0.4)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
        ax.set_ylabel(key, fontsize=8, rotation=0, ha="right", va="center")
        ax.text(1.005, 0.5, f"0: {mean_zero:.0%}", transform=ax.transAxes, fontsize=7, va="center")
        ax.set_xticks(x)
        ax.set_xticklabels([layer for layer, _ in items], fontsize=6)
    axes[-1].set_xlabel("layer", fontsize=8)
    axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=3, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9, x=0.99, ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class WeightDistributionCallback(pl.Callback):
    """Every ``every_n_steps`` optimizer steps, plot the ternary code mix of each BitLinear.

    Layers are found by duck typing: any submodule with a ``ternary_codes()``
    method returning codes in {-1, 0, 1}.  One PNG per plotted step is written
    to ``out_dir`` as ``ternary_step{step:07d}.png`` (rank 0 only); the path is
    printed.  Set ``log_zero_fraction`` to also log the mean fraction of zeros.
    """

    def __init__(self, every_n_steps: int = 100, out_dir: str = "weight_plots", *,
                 on_train_end: bool = True, log_zero_fraction: bool = False):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.out_dir = os.fspath(out_dir)
        self.plot_at_end = on_train_end
        self.log_zero_fraction = log_zero_fraction
        self._last_step: int | None = None
        self.written: list[str] = []

    def path_for_step(self, step: int) -> str:
        return os.path.join(self.out_dir, f"ternary_step{step:07d}.png")

    def _write(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", can_log: bool = True) -> str | None:
        step = int(trainer.global_step)
        if step == self._last_step:
            return None
        self._last_step = step
        fractions = ternary_fractions(pl_module)
        if not fractions:
            rank_zero_info("WeightDistributionCallback: no module has ternary_codes(); nothing to plot")
            return None
        if self.log_zero_fraction and can_log:
            z = sum(f[1] for f in fractions.values()) / len(fractions)
            pl_module.log("ternary/zero_fraction", z, on_step=True, on_epoch=False, rank_zero_only=True)
        if not trainer.is_global_zero:
            return None
        path = plot_ternary_distribution(
            fractions, self.path_for_step(step),
            title=f"ternary weight codes at step {step} ({len(fractions)} layers)")
        self.written.append(path)
        rank_zero_info(f"WeightDistributionCallback: wrote {path}")
        return path

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step > 0 and step % self.every_n_steps == 0:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.plot_at_end and trainer.global_step > 0:
            self._write(trainer, pl_module, can_log=False)
