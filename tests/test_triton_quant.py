"""The Triton activation quantizer (bllama/model/triton_quant.py) against the eager path, on the CPU through Triton's
interpreter (TRITON_INTERPRET=1, set in a child process before Triton is imported): the int8 codes, the per-token
multipliers and the dequantized rows must be bit-identical for float32 and bfloat16 inputs, and BitLinear's
forward output and gradients must not change when BLLAMA_TRITON=1 routes it through the kernel.
Skipped where Triton is not installed (it is optional: `pip install triton`)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHILD = textwrap.dedent("""
    import torch
    from bllama.model import triton_quant
    from bllama.model.bitlinear import BitLinear, quantize_activations

    torch.manual_seed(0)
    bad = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((3, 100), (2, 5, 256), (4, 777), (1, 2048)):
            x = (torch.randn(shape) * 3).to(dtype)
            x.view(-1, shape[-1])[0].zero_()          # absmax clamped at 1e-5
            x.view(-1, shape[-1])[-1, 1] = 1e4         # one outlier: the rest of its row rounds to 0
            assert triton_quant.enabled(x)
            q, a, d = triton_quant.quantize_activations(x)
            xq, a_ref = quantize_activations(x)
            same = (torch.equal(q, xq.to(torch.int8)), torch.equal(a, a_ref), torch.equal(d, (xq / a_ref).to(dtype)))
            if not all(same):
                bad.append((str(dtype), shape, same))
    assert not bad, bad

    import os
    for dtype in (torch.float32, torch.bfloat16):
        grads = []
        for flag in ("0", "1"):
            os.environ["BLLAMA_TRITON"] = flag
            torch.manual_seed(1)
            layer = BitLinear(96, 40)
            x = torch.randn(3, 7, 96, dtype=dtype, requires_grad=True)
            y = layer.to(dtype)(x)
            y.float().square().sum().backward()
            grads.append((y.detach(), x.grad, layer.weight.grad))
        for u, v in zip(*grads):
            assert torch.equal(u, v), (dtype, (u - v).abs().max())
    print("triton quantizer: bit-identical")
""")


def test_triton_quantizer_matches_eager_bit_for_bit():
    env = dict(os.environ, TRITON_INTERPRET="1", BLLAMA_TRITON="1")
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bit-identical" in r.stdout


def test_triton_path_is_off_unless_asked(monkeypatch):
    import torch

    from bllama.model import triton_quant

    x = torch.randn(2, 8)
    monkeypatch.delenv("BLLAMA_TRITON", raising=False)
    assert not triton_quant.enabled(x)
    monkeypatch.setenv("BLLAMA_TRITON", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_quant.enabled(x)  # a CPU tensor without the interpreter: the eager path
    assert not triton_quant.enabled(x.half())


def test_kernel_is_used_only_where_it_was_measured(monkeypatch):
    """The default: CUDA tensors only (where it was measured bit-identical and faster); BLLAMA_TRITON=0 wins
    everywhere; the CPU runs it only through the interpreter and only when asked (BLLAMA_TRITON=1)."""
    import torch
    from bllama.model import triton_quant

    x = torch.ones(2, 64)
    monkeypatch.delenv("BLLAMA_TRITON", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not triton_quant.enabled(x)  # interpreter present but not asked for
    monkeypatch.setenv("BLLAMA_TRITON", "1")
    assert triton_quant.enabled(x)
    assert not triton_quant.enabled(x.half())  # a dtype whose rounding it does not reproduce
    assert not triton_quant.enabled(torch.ones(2, triton_quant.MAX_COLS + 1))
    monkeypatch.setenv("BLLAMA_TRITON", "0")
    assert not triton_quant.enabled(x)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("BLLAMA_TRITON", "1")
    assert not triton_quant.enabled(x)  # a CPU tensor without the interpreter
