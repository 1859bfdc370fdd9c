"""Training throughput of a preset: tokens/s, model FLOPs utilization, peak memory, loss at start and end.

    python bench/train_throughput.py --preset tiny --seq-len 256 --batch 16 --steps 20                     # CPU
    python bench/train_throughput.py --preset 1.7b --seq-len 2048 --batch 8 --accum 4 --steps 30 \\
        --device cuda --precision bf16-mixed --compile                                                    # one GPU

One optimizer step = --accum micro-batches of --batch sequences (global batch = batch x accum x seq_len tokens),
the same step as `bllama train`: the bLlama module's AdamW parameter groups (fused on CUDA), gradient clipping at
the config's grad_clip, bf16 autocast over fp32 master weights and fp32 optimizer state (--precision bf16-mixed),
per-block torch.compile (--compile, bLlama.compile_blocks) and per-block activation checkpointing
(--activation-checkpointing). The learning rate follows the module's own schedule (warm-up, then cosine) squeezed
into the run: --lr-warmup steps of warm-up to the preset's peak LR, decaying over --steps.

Data (--data): "corpus" (default) is the built-in English corpus (bllama/train/corpus.py, ~2.2 MB) as byte tokens, so the
loss has real structure to learn and falls within a few steps; "random" is uniform random tokens (the loss can only
fall by memorization).

FLOPs per token (the usual dense-transformer count, forward + backward = 3x forward):
    6 * N_matmul + 12 * layers * seq_len * hidden
where N_matmul counts the parameters of every matmul (the seven projections per block and the LM head, not the
embedding lookup or norms); the second term is attention (QK^T and AV, causal masking not discounted).
Activation checkpointing's recomputation and the BitLinear quantization work (absmean, absmax, rounding) are not
counted: they are overhead that MFU should expose.
MFU = achieved FLOP/s / peak FLOP/s (--peak-tflops; default: 989 for an H100 in bf16 dense, none on CPU).

Prints one JSON line (also written to --json). Exit status 3 and a JSON line with "error": "oom" when the device
runs out of memory, so a driver script can retry with --activation-checkpointing or a smaller micro-batch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bllama import bLlama, bLlamaConfig

PRECISIONS = {"fp32": "fp32", "32-true": "fp32", "bf16": "bf16", "bf16-mixed": "bf16"}


def flops_per_token(cfg: bLlamaConfig) -> float:
    d, f, hd, L = cfg.hidden_size, cfg.ffn_size, cfg.head_dim, cfg.num_layers
    per_block = d * d * 2 + 2 * d * cfg.num_kv_heads * hd + 3 * d * f
    matmul_params = L * per_block + cfg.vocab_size * d
    return 6 * matmul_params + 12 * L * cfg.seq_len * d


def triton_quant_used(device: str, compiled: bool) -> bool:
    """Whether BitLinear's eager forward quantizes activations with the Triton kernel here (compiled blocks never do)."""
    from bllama.model import triton_quant

    return not compiled and triton_quant.enabled(torch.zeros(1, 8, device=device))


def corpus_tokens(vocab_size: int) -> torch.Tensor:
    from bllama.train.corpus import default_corpus_text

    data = torch.frombuffer(bytearray(default_corpus_text().encode("utf-8")), dtype=torch.uint8).long()
    return data % vocab_size


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    p.add_argument("--batch", type=int, default=8, help="micro-batch (sequences)")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps per optimizer step")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps at most (the first --warmup not timed)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--lr-warmup", type=int, default=5, help="LR warm-up steps (the preset's schedule, shortened)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop timing after this many seconds of timed steps (at least 2 timed steps)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--fp-linear", action="store_true", help="full-precision nn.Linear instead of BitLinear")
    p.add_argument("--data", default="corpus", choices=["corpus", "random"])
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    precision = PRECISIONS[a.precision]
    over = {}
    if a.seq_len:
        over["seq_len"] = a.seq_len
    if a.layers:
        over["num_layers"] = a.layers
    cfg = bLlamaConfig.preset(a.preset, quantize=not a.fp_linear, activation_checkpointing=a.activation_checkpointing,
                              warmup_steps=a.lr_warmup, max_steps=a.steps, **over)
    cuda = a.device.startswith("cuda")
    tokens_per_step = a.batch * a.accum * cfg.seq_len
    result = {"preset": a.preset, "linear": "fp" if a.fp_linear else "b1.58", "device": a.device,
              "device_name": torch.cuda.get_device_name() if cuda else "cpu", "precision": precision,
              "compile": a.compile, "activation_checkpointing": a.activation_checkpointing,
              "triton_quant": triton_quant_used(a.device, a.compile), "seq_len": cfg.seq_len, "layers": cfg.num_layers, "micro_batch": a.batch, "accum": a.accum,
              "tokens_per_step": tokens_per_step, "data": a.data, "torch": torch.__version__}

    def report(extra, code=0):
        result.update(extra)
        print(json.dumps(result), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2)
        return code

    torch.manual_seed(0)
    if cuda:
        torch.set_float32_matmul_precision("high")
    try:
        with torch.device(a.device):  # initialize on the device: a 1.7B model initializes slowly on a CPU
            module = bLlama(cfg)
        model = module.model
        if a.compile:
            module.compile_blocks()
        optim = module.configure_optimizers()  # AdamW, decay on matrices only, fused on CUDA; the LR schedule
        opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
        data = (corpus_tokens(cfg.vocab_size) if a.data == "corpus"
                else torch.randint(0, cfg.vocab_size, (1 << 20,))).to(a.device)
        gen = torch.Generator().manual_seed(0)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        t_start = time.perf_counter()
        for step in range(a.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            total = 0.0
            for _ in range(a.accum):
                starts = torch.randint(0, data.numel() - cfg.seq_len - 1, (a.batch,), generator=gen)
                idx = (starts[:, None] + torch.arange(cfg.seq_len + 1)).to(a.device)
                block = data[idx]
                x, y = block[:, :-1], block[:, 1:]
                with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = model(x)
                loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), y.reshape(-1)) / a.accum
                loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(total))  # synchronizes
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            timed = times[a.warmup:]
            if a.time_limit and len(timed) >= 2 and sum(timed) > a.time_limit:
                break
    except torch.OutOfMemoryError as e:
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return report({"error": "oom", "message": str(e).splitlines()[0][:300], "peak_mem_GiB": peak}, code=3)

    timed = times[a.warmup:] if len(times) > a.warmup else times
    step_s = statistics.median(timed)
    tps = tokens_per_step / step_s
    achieved = tps * flops_per_token(cfg)
    peak = a.peak_tflops if a.peak_tflops else (989.0 if cuda and precision == "bf16" else None)
    if cuda:
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
    else:
        import resource
        peak_mem, reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, None
    return report({
        "params_M": round(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6, 2),
        "steps_run": len(times), "steps_timed": len(timed), "warmup_s": round(sum(times[:a.warmup]), 2),
        "wall_s": round(time.perf_counter() - t_start, 2), "step_s": round(step_s, 4),
        "tokens_per_s": round(tps, 1), "flops_per_token": flops_per_token(cfg),
        "achieved_TFLOPs": round(achieved / 1e12, 3),
        "mfu_pct": round(100 * achieved / (peak * 1e12), 1) if peak else None,
        "peak_mem_GiB": round(peak_mem, 2), "peak_reserved_GiB": round(reserved, 2) if reserved else None,
        "loss_start": round(losses[0], 4), "loss_end": round(losses[-1], 4),
        "losses": [round(v, 4) for v in losses], "dynamo": dynamo_counters()})


def dynamo_counters() -> dict:
    """torch.compile's graph count and graph breaks in this run (a break inside BitLinear would show here first)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - very old torch
        return {}
    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


if __name__ == "__main__":
    sys.exit(main())
