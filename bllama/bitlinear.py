"""BitLinear: the b1.58 linear layer (ternary weights, per-token int8 activations).

Training mode quantizes on the fly with straight-through estimators (REFERENCE section 1).
`quantize()` switches a layer to inference mode: it keeps int8 ternary codes and one scale and
computes `(xq @ codes^T) * (s / a)` from them, the same function the C++ engine computes
(docs/architecture.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor absmean scale, rounded to fp16 because that is what the GGUF file stores.

    Rounding here (also while training) makes the trained, the quantized and the exported model one function.
    """
    s = w.detach().abs().mean().clamp(min=1e-5)
    return s.to(torch.float16).to(torch.float32)


def ternarize(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, 0, 1} (as w's dtype)."""
    return (w / s).round().clamp(-1, 1)


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-token multiplier a = 127 / absmax (fp32, last dim kept)."""
    return 127.0 / x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)


def quantize_activations(x: torch.Tensor):
    """(int-valued fp32 codes in [-128, 127], per-token multiplier a)."""
    a = activation_scale(x)
    return (x.float() * a).round().clamp(-128, 127), a


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.quantized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized:
            return self._forward_quantized(x)
        w = self.weight
        s = weight_scale(w)
        w = w + (ternarize(w, s) * s - w).detach()
        xq, a = quantize_activations(x)
        x = x + ((xq / a).to(x.dtype) - x).detach()
        return F.linear(x, w, self.bias)

    def _forward_quantized(self, x: torch.Tensor) -> torch.Tensor:
        xq, a = quantize_activations(x)
        # fp32 on purpose: integer-valued operands make the fp32 sums exact (|sum| < 2^24 for in <= 2^16),
        # so this equals the engine's int32 accumulation. Under bf16 autocast the sums would round.
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.linear(xq, self.weight_codes.float()) * (self.weight_scale / a)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)

    @torch.no_grad()
    def quantize(self) -> None:
        """Replace the latent fp weight by int8 codes + one fp32 scale (irreversible)."""
        if self.quantized:
            return
        s = weight_scale(self.weight)
        codes = ternarize(self.weight.float(), s).to(torch.int8)
        del self.weight
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_scale", s.reshape(()))
        self.quantized = True

    def ternary_codes(self) -> torch.Tensor:
        """The ternary codes this layer computes with (int8 in {-1, 0, 1})."""
        if self.quantized:
            return self.weight_codes
        w = self.weight.detach()
        return ternarize(w.float(), weight_scale(w)).to(torch.int8)

    def ternary_scale(self) -> torch.Tensor:
        return self.weight_scale if self.quantized else weight_scale(self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", quantized" if self.quantized else "")
