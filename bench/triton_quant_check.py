"""The fused Triton activation quantizer on a GPU (issue 5): bit-identical to the eager path, and how long each
takes on the activation shapes of 1.7B training (16 x 1024 tokens; rows of 2048 and 8192), bf16 and fp32.

    python bench/triton_quant_check.py [--json PATH]      # run by bench/gpu_train_check.sh

Times are CUDA-event medians over 50 calls after 5 warm-up calls; "eager" is quantize_activations plus the
dequantized copy BitLinear's matmul reads (what BitLinearFunction computes without the kernel). Exit status 1 when
the two disagree on any bit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from bllama.model import triton_quant
from bllama.model.bitlinear import quantize_activations


def eager(x):
    xq, a = quantize_activations(x)
    return xq.to(torch.int8), a, (xq / a).to(x.dtype)


def time_us(fn, x, reps=50, warmup=5):
    for _ in range(warmup):
        fn(x)
    ms = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn(x)
        e1.record()
        torch.cuda.synchronize()
        ms.append(e0.elapsed_time(e1))
    return statistics.median(ms) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 0
    torch.manual_seed(0)
    rows, ok = [], True
    for dtype in (torch.bfloat16, torch.float32):
        for cols in (2048, 8192):
            x = (torch.randn(16 * 1024, cols, device="cuda") * 3).to(dtype)
            got, want = triton_quant.quantize_activations(x), eager(x)
            same = all(torch.equal(g, w) for g, w in zip(got, want))
            ok &= same
            te, tt = time_us(eager, x), time_us(triton_quant.quantize_activations, x)
            rows.append({"dtype": str(dtype).split(".")[-1], "rows": x.shape[0], "cols": cols, "bit_identical": same,
                         "eager_us": round(te, 1), "triton_us": round(tt, 1), "speedup": round(te / tt, 2)})
            print(f"{rows[-1]['dtype']:>8} {x.shape[0]} x {cols:<5} identical {same!s:<5} eager {te:9.1f} us  "
                  f"triton {tt:9.1f} us  {te / tt:5.2f}x", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device_name": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
