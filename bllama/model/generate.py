"""Autoregressive generation in PyTorch with a KV cache (the prefix is never recomputed)."""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import torch

from .transformer import KVCache, Transformer


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive logits of already-seen tokens by `penalty`, multiply negative ones (CTRL paper rule)."""
    if penalty == 1.0:
        return logits
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def filter_top_k_top_p(logits: torch.Tensor, top_k: Optional[int], top_p: Optional[float]) -> torch.Tensor:
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def next_tokens(logits, seen, do_sample, temperature, top_k, top_p, repetition_penalty, generator):
    logits = apply_repetition_penalty(logits.float(), seen, repetition_penalty)
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    logits = filter_top_k_top_p(logits / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate_ids(model: Transformer, prompt_ids: Sequence[int], max_new_tokens: int, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 repetition_penalty: float = 1.0, num_return_sequences: int = 1, seed: Optional[int] = None,
                 eos_id: Optional[int] = None, use_cache: bool = True) -> List[List[int]]:
    """New token ids (EOS excluded) for each of num_return_sequences continuations of prompt_ids."""
    cfg = model.config
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token")
    bad = [t for t in prompt_ids if not 0 <= t < cfg.vocab_size]
    if bad:
        raise IndexError(f"prompt token ids out of range [0, {cfg.vocab_size}): {bad[:5]}")
    if len(prompt_ids) >= cfg.seq_len:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context length is {cfg.seq_len}")
    if len(prompt_ids) + max_new_tokens > cfg.seq_len:
        warnings.warn(f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) exceeds the context "
                      f"length {cfg.seq_len}; generating {cfg.seq_len - len(prompt_ids)} tokens at most")
        max_new_tokens = cfg.seq_len - len(prompt_ids)
    if num_return_sequences < 1:
        raise ValueError("num_return_sequences must be >= 1")

    was_training = model.training
    model.eval()
    device = next(model.buffers()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    B = num_return_sequences
    tokens = torch.tensor([prompt_ids] * B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = KVCache(cfg, B, device) if use_cache else None
    logits = model(tokens, cache, 0)[:, -1]
    for _ in range(max_new_tokens):
        nxt = next_tokens(logits, tokens, do_sample, temperature, top_k, top_p, repetition_penalty, generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if bool(done.all()) or tokens.shape[1] >= cfg.seq_len:
            break
        if use_cache:
            logits = model(nxt[:, None], cache, tokens.shape[1] - 1)[:, -1]
        else:
            logits = model(tokens)[:, -1]
    model.train(was_training)
    out = []
    for row in tokens[:, len(prompt_ids):].tolist():
        out.append(row[:row.index(eos_id)] if eos_id is not None and eos_id in row else row)
    return out
