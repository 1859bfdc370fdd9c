"""The BitNet b1.58 "subln" LLaMA (docs/architecture.md), as a plain nn.Module.

Every block: pre-norm attention with a sub-norm before the output projection, and a gated FFN with a
sub-norm before the down projection (config.sub_norms=False drops both: a plain LLaMA block).
All seven projections are BitLinear; the LM head is full precision.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .bitlinear import BitLinear
from .config import bLlamaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def linear_class(config: bLlamaConfig):
    return BitLinear if config.quantize else nn.Linear


def rope_divisors(head_dim: int, theta: float, scaling: Optional[dict]) -> torch.Tensor:
    """What each RoPE frequency is divided by (float64 [head_dim / 2]): ones, or Llama-3.1's scaling (frequencies
    whose wavelength is past the original context divided by `factor`, short ones kept, a smooth blend between);
    GGUF files carry them as rope_freqs.weight."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    s = scaling
    if s is None:
        return torch.ones_like(inv_freq)
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])).clamp(0, 1)
    # smooth 0 (wavelength past old / low_freq_factor): divided by factor; 1 (under old / high_freq_factor): kept
    return 1.0 / ((1 - smooth) / s["factor"] + smooth)


def rope_cache(config: bLlamaConfig, device=None):
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd))
    inv_freq = inv_freq / rope_divisors(hd, config.rope_theta, config.rope_scaling).to(device)
    angles = torch.outer(torch.arange(config.seq_len, dtype=torch.float64, device=device), inv_freq)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NEOX-style rotation of x [B, heads, T, hd]: pair i is (x[i], x[i + hd/2])."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


class KVCache:
    """Preallocated keys/values for every layer: [layers, B, kv_heads, seq_len, head_dim]."""

    def __init__(self, config: bLlamaConfig, batch: int, device, dtype=torch.float32):
        shape = (config.num_layers, batch, config.num_kv_heads, config.seq_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # positions filled so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, config: bLlamaConfig):
        super().__init__()
        Linear = linear_class(config)
        self.config = config
        hd, kv = config.head_dim, config.num_kv_heads * config.head_dim
        qkv_bias = config.bias or config.qkv_bias
        self.q_proj = Linear(config.hidden_size, config.attn_dim, bias=qkv_bias)
        self.k_proj = Linear(config.hidden_size, kv, bias=qkv_bias)
        self.v_proj = Linear(config.hidden_size, kv, bias=qkv_bias)
        self.o_proj = Linear(config.attn_dim, config.hidden_size, bias=config.bias)
        self.sub_norm = RMSNorm(config.attn_dim, config.rms_eps) if config.sub_norms else nn.Identity()
        self.head_dim = hd
        if config.qk_norm:  # Qwen3: each head of q and k RMS-normed over its head_dim before RoPE
            self.q_norm = RMSNorm(hd, config.rms_eps)
            self.k_norm = RMSNorm(hd, config.rms_eps)

    def forward(self, x, cos, sin, cache: Optional[KVCache], layer: int, start: int):
        B, T, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(B, T, c.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, c.num_kv_heads, self.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            mask, causal = None, True
        else:
            k, v = cache.update(layer, k, v, start)
            # query at absolute position start+i sees keys 0..start+i
            qpos = torch.arange(start, start + T, device=x.device)[:, None]
            mask, causal = torch.arange(k.shape[2], device=x.device)[None, :] <= qpos, False
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=causal,
                                           dropout_p=c.dropout if self.training else 0.0,
                                           enable_gqa=c.num_kv_heads != c.num_heads)
        y = y.transpose(1, 2).reshape(B, T, c.attn_dim)
        return self.o_proj(self.sub_norm(y))


class FeedForward(nn.Module):
    def __init__(self, config: bLlamaConfig):
        super().__init__()
        Linear = linear_class(config)
        self.gate_proj = Linear(config.hidden_size, config.ffn_size, bias=config.bias)
        self.up_proj = Linear(config.hidden_size, config.ffn_size, bias=config.bias)
        self.down_proj = Linear(config.ffn_size, config.hidden_size, bias=config.bias)
        self.sub_norm = RMSNorm(config.ffn_size, config.rms_eps) if config.sub_norms else nn.Identity()
        self.relu2 = config.activation == "relu2"

    def forward(self, x):
        g = self.gate_proj(x)
        g = F.relu(g).square() if self.relu2 else F.silu(g)
        return self.down_proj(self.sub_norm(g * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, config: bLlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_eps)
        self.attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_eps)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, start=0):
        x = x + self.dropout(self.attn(self.input_layernorm(x), cos, sin, cache, layer, start))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    def __init__(self, config: bLlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_cache(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear) and hasattr(module, "weight"):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, cache: Optional[KVCache] = None, start: int = 0) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids idx [B, T] at positions start..start+T-1."""
        B, T = idx.shape
        if start + T > self.config.seq_len:
            raise ValueError(f"positions {start}..{start + T - 1} exceed the context length {self.config.seq_len}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise IndexError(f"token ids must be in [0, {self.config.vocab_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.embed_tokens(idx)
        recompute = self.config.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            # A block that a strategy has wrapped (an FSDP unit, Lightning's checkpoint wrapper) is no longer a
            # Block and is left to that strategy: FSDP checkpoints through activation_checkpointing_policy.
            if recompute and isinstance(layer, Block):
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i, start)
        return self.lm_head(self.norm(x))

    def bitlinears(self):
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BitLinear)]


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tied head counts once); works on the meta device."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
