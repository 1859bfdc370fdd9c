"""Perplexity and bits per character, computed the same way for the engine and for PyTorch."""
from __future__ import annotations

import math
import sys
from typing import Callable, Sequence

import numpy as np


def windowed_nll(ids: Sequence[int], context: int, logits_fn: Callable[[list], np.ndarray], progress: bool = False):
    """Sum of next-token negative log-likelihoods and their count over non-overlapping windows of `context`
    tokens; each window is evaluated from scratch (no carried state), so any two engines agree on the recipe.
    progress: a bar on stderr (where it is a terminal) counting the windows."""
    ids = list(ids)
    if len(ids) < 2:
        raise ValueError("need at least 2 tokens to measure perplexity")
    total, count = 0.0, 0
    starts = range(0, len(ids) - 1, context)
    if progress:
        from tqdm import tqdm

        # disable=None: no bar where stderr is not a terminal (a log file would get one line per refresh)
        starts = tqdm(starts, desc="scoring", unit="window", disable=None, leave=False, file=sys.stderr)
    for start in starts:
        inputs = ids[start:start + context]
        targets = ids[start + 1:start + context + 1]
        inputs = inputs[:len(targets)]
        logits = np.asarray(logits_fn(inputs), dtype=np.float64)
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
        total += float((lse - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return total, count


def text_metrics(text: str, tokenizer, context: int, logits_fn, progress: bool = False) -> dict:
    ids = tokenizer.encode(text)
    nll, n = windowed_nll(ids, context, logits_fn, progress=progress)
    return {"tokens": n, "chars": len(text), "nll_per_token": nll / n, "perplexity": math.exp(nll / n),
            "bits_per_char": nll / math.log(2) / max(len(text), 1)}


def torch_logits_fn(model):
    """logits_fn for a bllama Transformer (or bLlama) in PyTorch."""
    import torch

    net = getattr(model, "model", model)

    @torch.no_grad()
    def fn(ids):
        net.eval()
        return net(torch.tensor([ids]))[0].float().numpy()

    return fn
