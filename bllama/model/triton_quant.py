"""A fused Triton kernel for BitLinear's activation quantization (issue 5: "where a Triton kernel measurably helps").

In eager PyTorch, `quantize_activations` plus the dequantized copy the matmul reads take about eight passes over
the activations (float cast, abs, amax, multiply, round, clamp, int8 cast, divide, cast back). This kernel does it
in one read and two writes per element: one program per token row loads the row, takes its absmax, and writes the
int8 codes (saved for backward) and the dequantized row in the input's dtype. Under torch.compile the inductor
fuses the eager ops by itself, so the kernel is used in eager mode only.

Every operation is the eager path's, with explicit IEEE roundings: a = (1 / max(absmax, 1e-5)) * 127 (what
PyTorch's `127.0 / tensor` computes: a reciprocal, then a product; also the C++ engine's quantizer),
q = round-half-even(x * a) by the 1.5 * 2^23 trick (exact for |x * a| <= 128), clamp to [-128, 127], then
q / a (div_rn) rounded to the input dtype. The results are bit-identical to `quantize_activations`
(tests/test_triton_quant.py, run on the CPU with TRITON_INTERPRET=1).

On by default for CUDA tensors on sm_80 or newer when Triton is installed, because on the GPUs it was measured on
it is bit-identical to the eager ops and faster (bench/NOTES-training.md, "Measurements from code comments"). BLLAMA_TRITON=0 turns it off;
BLLAMA_TRITON=1 also runs it through Triton's interpreter on the CPU (TRITON_INTERPRET=1: the tests).
"""
from __future__ import annotations

import functools
import os
from typing import Tuple

import torch

MAX_COLS = 32768  # one program holds a whole row


def enabled(x: torch.Tensor) -> bool:
    """Whether BitLinear should quantize x with the kernel: not turned off, Triton importable, x on an sm_80+ GPU
    (or the interpreter asked for), a row short enough, and not while torch.compile traces (it fuses the eager
    ops itself)."""
    if torch.compiler.is_compiling():  # first: nothing else of this function enters a compiled graph
        return False
    flag = os.environ.get("BLLAMA_TRITON")
    if flag == "0" or x.shape[-1] > MAX_COLS or x.numel() == 0:
        return False
    if x.dtype not in (torch.float32, torch.bfloat16):  # the dtypes whose rounding the kernel reproduces
        return False
    if x.is_cuda:
        if not _verified_class(x.device.index if x.device.index is not None else torch.cuda.current_device()):
            return False
    elif not (flag == "1" and os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    return _kernel() is not None


@functools.lru_cache(maxsize=None)
def _verified_class(device_index: int) -> bool:
    """sm_80 and newer: Triton's bf16 support; measured on sm_90 (H100, H200)."""
    return torch.cuda.get_device_capability(device_index) >= (8, 0)


@functools.lru_cache(maxsize=1)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def act_quant(x_ptr, q_ptr, a_ptr, d_ptr, cols, BLOCK: tl.constexpr, TO_BF16: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < cols
        base = row.to(tl.int64) * cols
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-5)
        a = tl.math.div_rn(1.0, amax) * 127.0  # as eager `127.0 / t`, which PyTorch computes as reciprocal(t) * 127
        y = x * a
        q = (y + 12582912.0) - 12582912.0  # round half to even: 1.5 * 2^23 leaves no fraction bits
        q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        tl.store(q_ptr + base + offs, q.to(tl.int8), mask=mask)
        d = tl.math.div_rn(q, a)
        if TO_BF16:  # round to nearest even on the bits (the interpreter's own bf16 cast truncates)
            bits = d.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            d = bits.to(tl.float32, bitcast=True)
        tl.store(d_ptr + base + offs, d.to(d_ptr.dtype.element_ty), mask=mask)
        tl.store(a_ptr + row, a)

    return act_quant


def quantize_activations(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 codes, per-token multiplier a [..., 1] fp32, the dequantized codes q / a in x's dtype)."""
    import triton

    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("Triton is not installed")
    cols = x.shape[-1]
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"the kernel quantizes float32 and bfloat16 rows, got {x.dtype}")
    if cols > MAX_COLS:
        raise ValueError(f"rows of {cols} values exceed the kernel's {MAX_COLS}")
    xc = x.contiguous()
    rows = xc.numel() // cols
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    d = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    a = torch.empty(x.shape[:-1] + (1,), dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(cols)
    # enable_fp_fusion=False: Triton contracts y * a + C into one FMA by default, which would round the exact
    # product where eager PyTorch rounds fl(y * a) first (tens of thousands of codes off per 2^25 on a GPU).
    kernel[(rows,)](xc, q, a, d, cols, BLOCK=block, TO_BF16=x.dtype == torch.bfloat16,
                    num_warps=4 if block <= 2048 else 8, enable_fp_fusion=False)
    return q, a, d
