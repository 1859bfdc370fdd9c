"""Training throughput of a preset: tokens/s, model FLOPs utilization, peak memory, loss at start and end.

    python bench/train_throughput.py --preset tiny --seq-len 256 --batch 16 --steps 20            # CPU
    python bench/train_throughput.py --preset 1.7b --seq-len 2048 --batch 8 --accum 4 --steps 30 \\
        --device cuda --precision bf16 --compile                                                 # one GPU

FLOPs per token (the usual dense-transformer count, forward + backward = 3x forward):
    6 * N_matmul + 12 * layers * seq_len * hidden
where N_matmul counts the parameters of every matmul (the seven projections per block and the LM head, not the
embedding lookup or norms); the second term is attention (QK^T and AV, causal masking not discounted).
BitLinear quantization work (absmean, absmax, rounding) is not counted: it is overhead MFU should expose.
MFU = achieved FLOP/s / peak FLOP/s (--peak-tflops; default: 989 for an H100 in bf16 dense, none on CPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from bllama import bLlama, bLlamaConfig


def flops_per_token(cfg: bLlamaConfig) -> float:
    d, f, hd, L = cfg.hidden_size, cfg.ffn_size, cfg.head_dim, cfg.num_layers
    per_block = d * d * 2 + 2 * d * cfg.num_kv_heads * hd + 3 * d * f
    matmul_params = L * per_block + cfg.vocab_size * d
    return 6 * matmul_params + 12 * L * cfg.seq_len * d


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch", type=int, default=8, help="micro-batch (sequences)")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps per optimizer step")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (the first 3 are warm-up, not timed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--fp-linear", action="store_true", help="full-precision nn.Linear instead of BitLinear")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    over = {"seq_len": a.seq_len} if a.seq_len else {}
    cfg = bLlamaConfig.preset(a.preset, quantize=not a.fp_linear, **over)
    torch.manual_seed(0)
    model = bLlama(cfg).model.to(a.device)
    step_model = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                            fused=a.device.startswith("cuda"))
    # A fixed random corpus is enough for speed; the loss still falls as the model memorizes it.
    data = torch.randint(0, cfg.vocab_size, (64, cfg.seq_len + 1), device=a.device)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for micro in range(a.accum):
            idx = torch.randint(0, data.shape[0], (a.batch,))
            x, y = data[idx, :-1], data[idx, 1:]
            with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), y.reshape(-1)) / a.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item() * a.accum)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tokens_per_step = a.batch * a.accum * cfg.seq_len
    step_s = statistics.median(times[3:]) if len(times) > 3 else statistics.median(times)
    tps = tokens_per_step / step_s
    achieved = tps * flops_per_token(cfg)
    peak = a.peak_tflops if a.peak_tflops else (989.0 if cuda and a.precision == "bf16" else None)
    if cuda:
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    r = {"preset": a.preset, "linear": "fp" if a.fp_linear else "b1.58", "device": a.device,
         "device_name": torch.cuda.get_device_name() if cuda else "cpu", "precision": a.precision,
         "compile": a.compile, "seq_len": cfg.seq_len, "tokens_per_step": tokens_per_step,
         "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "step_s": round(step_s, 4),
         "tokens_per_s": round(tps, 1), "achieved_TFLOPs": round(achieved / 1e12, 3),
         "mfu_pct": round(100 * achieved / (peak * 1e12), 1) if peak else None,
         "peak_mem_GiB": round(peak_mem, 2), "loss_start": round(losses[0], 4), "loss_end": round(losses[-1], 4)}
    print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
