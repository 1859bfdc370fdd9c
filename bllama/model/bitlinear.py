"""BitLinear: the b1.58 linear layer (ternary weights, per-token int8 activations).

Training mode quantizes on the fly with straight-through estimators, as in the BitNet b1.58 papers.
`quantize()` switches a layer to inference mode: it keeps int8 ternary codes and one scale and
computes `(xq @ codes^T) * (s / a)` from them, the same function the C++ engine computes
(docs/architecture.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import triton_quant


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


class BitLinearFunction(torch.autograd.Function):
    """Fake-quant linear with straight-through gradients that saves int8 tensors for backward.

    Forward: y = (xq / a) @ (Wq * s)^T. Backward (STE): dx = dy @ (Wq * s), dW = dy^T @ (xq / a): the gradients
    of a plain linear layer evaluated at the quantized point. Saving int8 codes and int8 activations plus their
    scales instead of float copies cuts the activation memory of every projection by 4x (fp32) or 2x (bf16).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        s = weight_scale(weight)
        codes = ternarize(weight.detach().float(), s).to(torch.int8)
        w_deq = (codes.to(x.dtype) * s.to(x.dtype))
        if triton_quant.enabled(x):  # one fused pass, the same bits (bllama/model/triton_quant.py; BLLAMA_TRITON=0 turns it off)
            xq8, a, x_deq = triton_quant.quantize_activations(x)
        else:
            xq, a = quantize_activations(x)
            xq8, x_deq = xq.to(torch.int8), (xq / a).to(x.dtype)
        y = F.linear(x_deq, w_deq, bias)
        ctx.save_for_backward(xq8, a, codes, s)
        ctx.x_dtype, ctx.w_dtype, ctx.has_bias = x.dtype, weight.dtype, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        xq, a, codes, s = ctx.saved_tensors
        dt = dy.dtype
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (dy @ (codes.to(dt) * s.to(dt))).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            x_deq = (xq.float() / a).to(dt)
            dw = (dy.reshape(-1, dy.shape[-1]).T @ x_deq.reshape(-1, x_deq.shape[-1])).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.reshape(-1, dy.shape[-1]).sum(0)
        return dx, dw, db


class BitLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.quantized = False
        self.lean = True  # BitLinearFunction (int8 saved for backward); False: the textbook STE graph
        # Quantization warm-up (bllama/train/quant_warmup.py): lambda in [0, 1) blends the full-precision layer into
        # the quantized one; None means fully quantized.
        self.quant_mix = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized:
            return self._forward_quantized(x)
        if self.quant_mix is not None and self.quant_mix < 1:
            return self._forward_blend(x, float(self.quant_mix))
        if self.lean:
            return BitLinearFunction.apply(x, self.weight, self.bias)
        return self._forward_ste(x)

    def _forward_ste(self, x: torch.Tensor) -> torch.Tensor:
        """The textbook straight-through form `x + (q(x) - x).detach()`; the reference for BitLinearFunction."""
        w = self.weight
        s = weight_scale(w)
        w = w + (ternarize(w, s) * s - w).detach()
        xq, a = quantize_activations(x)
        x = x + ((xq / a).to(x.dtype) - x).detach()
        return F.linear(x, w, self.bias)

    def _forward_blend(self, x: torch.Tensor, lam: float) -> torch.Tensor:
        """`x + lam * (q(x) - x).detach()` for the weight and the activations: the full-precision layer at lam = 0,
        the straight-through b1.58 layer at lam = 1, with the gradient of a plain linear layer throughout."""
        w = self.weight
        s = weight_scale(w)
        w = w + lam * (ternarize(w, s) * s - w).detach()
        xq, a = quantize_activations(x)
        x = x + lam * ((xq / a).to(x.dtype) - x).detach()
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
