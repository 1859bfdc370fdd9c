"""Issue-13 conversion benchmark: is a converted full-precision model better than a b1.58 model trained from scratch?

On Tiny Shakespeare (bench/data/tinyshakespeare.txt; first 90% of the characters train, last 10% validate), with
one tokenizer trained on the training split and one batch order (the same data seed) for every run:

1. teacher:    a full-precision (`quantize=False`) model of --preset, T CPU minutes;
2. converted:  the teacher's weights as the latent weights of the b1.58 model, trained M more CPU minutes with the
               quantization warm-up (bllama/train/quant_warmup.py) over the first --warmup-fraction of its steps;
3. scratch-M:  a b1.58 model from random weights, M CPU minutes (the converted model's own training budget);
4. scratch-TM: a b1.58 model from random weights, T + M CPU minutes (the teacher's and the conversion's together).

Budgets are in PROCESS CPU TIME on ONE thread, not wall time: the machine this runs on is shared, and wall minutes
there buy a number of steps that depends on everyone else's load. A probe first measures the CPU seconds per
optimizer step of each kind (full precision, b1.58), and each run is then given `budget / probe` steps; its cosine
schedule is exactly that long and every run finishes its schedule (the converted and scratch-M runs take the same
number of steps). Each run's actual CPU minutes are reported next to its budget. --jobs 2 runs the independent
runs (teacher then converted | scratch-TM | scratch-M) in parallel processes of one thread each; their step counts
do not change, only the wall time (CPU seconds per step may grow a little where processes share caches and memory
bandwidth, which the reported CPU minutes show).

Reports validation bits per character of all four (the b1.58 ones as ternary models, after
`quantize_weights_to_ternary()`) and the issue's targets: converted < scratch-M, converted within 5% of the teacher.

    python bench/convert_shakespeare.py --preset small -T 12 -M 6 --jobs 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from shakespeare_split import DEFAULT_DATA, split_text, train_tokenizer


def fit(model, dm, precision: str, callbacks=(), progress: bool = False) -> dict:
    """Train `model` for its whole schedule (config.max_steps); returns the steps, CPU seconds and wall seconds."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=model.config.max_steps, max_epochs=1000,
                         logger=False, enable_checkpointing=False, enable_progress_bar=progress, precision=precision,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks))
    c0, w0 = time.process_time(), time.perf_counter()
    trainer.fit(model, dm)
    return {"steps": trainer.global_step, "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0}


class Setup:
    """What every run shares: the split, the tokenizer, the packed training data and the model config."""

    def __init__(self, args):
        import torch

        from bllama import bLlamaConfig
        from bllama.data import PackedDataset, TextDataModule
        from bllama.tokenizers.sentencepiece import SentencePieceTokenizer

        torch.set_num_threads(args.threads)
        self.args = args
        train_text, val_text = split_text(args.data)
        self.val_text = val_text[:args.val_chars]
        self.tok = SentencePieceTokenizer(args.tokenizer)
        self.overrides = json.loads(args.set) if args.set else {}
        self.base = bLlamaConfig.preset(args.preset, vocab_size=self.tok.vocab_size, **self.overrides)
        self.dm = TextDataModule(PackedDataset(self.tok.encode(train_text), max_length=self.base.seq_len,
                                               vocab_size=self.tok.vocab_size),
                                 batch_size=self.base.batch_size, train_test_split=1.0, seed=args.seed)

    def make(self, quantize: bool, steps: int, **kw):
        """A model whose schedule is `steps` long (LR warm-up: the preset's, at most 10% of the steps)."""
        import torch

        from bllama import bLlama, bLlamaConfig

        torch.manual_seed(self.args.seed)
        warm = min(self.base.warmup_steps, max(1, steps // 10))
        cfg = {**self.overrides, "quantize": quantize, "max_steps": steps, "warmup_steps": warm, **kw}
        return bLlama(bLlamaConfig.preset(self.args.preset, vocab_size=self.tok.vocab_size, **cfg))

    def bits_per_char(self, model) -> float:
        from bllama.tools.evaluate import text_metrics, torch_logits_fn

        if model.config.quantize:
            model.quantize_weights_to_ternary(verbose=False)
        return text_metrics(self.val_text, self.tok, self.base.seq_len, torch_logits_fn(model))["bits_per_char"]


def cpu_seconds_per_step(setup: Setup, quantize: bool, steps: int = 6) -> float:
    """Process CPU seconds per optimizer step of a freshly built model (after two warm-up steps)."""
    import pytorch_lightning as pl

    marks = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, idx):
            marks.append(time.process_time())

    fit(setup.make(quantize, steps + 3), setup.dm, setup.args.precision, [Clock()])
    return (marks[-1] - marks[2]) / max(1, len(marks) - 3)


def run_chain(args, chain: list[tuple[str, int]]) -> dict:
    """Run named runs in order in this process (the converted run needs the teacher of the same chain)."""
    from bllama.train.quant_warmup import QuantWarmup

    setup = Setup(args)
    out, teacher_state = {}, None
    for name, steps in chain:
        callbacks, extra = [], {}
        if name == "teacher":
            model = setup.make(False, steps)
        elif name == "converted":
            warmup = max(1, int(args.warmup_fraction * steps))
            model = setup.make(True, steps)
            model.load_state_dict(teacher_state)
            callbacks, extra = [QuantWarmup(warmup)], {"quant_warmup_steps": warmup}
        else:
            model = setup.make(True, steps)
        taken = fit(model, setup.dm, args.precision, callbacks, args.progress)
        if name == "teacher":
            teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
        c0 = time.process_time()
        bpc = setup.bits_per_char(model)
        out[name] = {"steps": taken["steps"], "schedule_steps": model.config.max_steps,
                     "cpu_minutes": round(taken["cpu_s"] / 60, 2), "wall_minutes": round(taken["wall_s"] / 60, 2),
                     "eval_cpu_s": round(time.process_time() - c0, 1), "val_bits_per_char": round(bpc, 4), **extra}
        print(name, json.dumps(out[name]), flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--teacher-minutes", "-T", type=float, default=12.0, help="teacher's budget, CPU minutes")
    p.add_argument("--convert-minutes", "-M", type=float, default=6.0, help="conversion's budget, CPU minutes")
    p.add_argument("--preset", default="small")
    p.add_argument("--set", default='{"batch_size": 8, "seq_len": 256}',
                   help="JSON config overrides (default: 8 x 256-token batches, so a CPU budget buys enough steps)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--warmup-fraction", type=float, default=0.3,
                   help="share of the conversion's steps over which quantization is blended in")
    p.add_argument("--val-chars", type=int, default=None, help="evaluate on the first N validation characters")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (budgets assume 1)")
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2, 3), help="processes running independent runs")
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision of every run")
    p.add_argument("--cpu-seconds-per-step", default=None, metavar="FP,B158",
                   help="skip the probe and use these CPU seconds per step (a previous run's cpu_seconds_per_step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    args.tokenizer = train_tokenizer(split_text(args.data)[0], "convert_tok", args.vocab_size)
    setup = Setup(args)
    if args.cpu_seconds_per_step:
        c_fp, c_q = (float(v) for v in args.cpu_seconds_per_step.split(","))
    else:
        c_fp, c_q = cpu_seconds_per_step(setup, False), cpu_seconds_per_step(setup, True)
    steps = lambda minutes, sec: max(10, int(minutes * 60 / sec))
    T, M = args.teacher_minutes, args.convert_minutes
    plan = {"teacher": steps(T, c_fp), "converted": steps(M, c_q), "scratch-M": steps(M, c_q),
            "scratch-TM": steps(T + M, c_q)}
    results = {"preset": args.preset, "overrides": setup.overrides, "params_M": round(setup.make(True, 10)
               .num_parameters() / 1e6, 2), "threads": args.threads, "jobs": args.jobs, "precision": args.precision,
               "budget": "process CPU time on one thread per run; steps = budget / probed CPU s per step",
               "teacher_cpu_minutes": T, "convert_cpu_minutes": M,
               "cpu_seconds_per_step": {"fp": round(c_fp, 3), "b1.58": round(c_q, 3)},
               "probed": not args.cpu_seconds_per_step, "steps": plan, "runs": {}}
    print(json.dumps({k: results[k] for k in ("cpu_seconds_per_step", "steps")}), flush=True)
    chains = [[("teacher", plan["teacher"]), ("converted", plan["converted"])],
              [("scratch-TM", plan["scratch-TM"])], [("scratch-M", plan["scratch-M"])]]
    w0 = time.perf_counter()
    if args.jobs == 1:
        for chain in chains:
            results["runs"].update(run_chain(args, chain))
    else:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for part in pool.starmap(run_chain, [(args, c) for c in chains]):
                results["runs"].update(part)
    results["wall_minutes"] = round((time.perf_counter() - w0) / 60, 1)
    results["runs"] = {k: results["runs"][k] for k in plan}
    r = {k: v["val_bits_per_char"] for k, v in results["runs"].items()}
    results["targets"] = {
        "converted_beats_scratch_M": r["converted"] < r["scratch-M"],
        "converted_within_5pct_of_teacher": r["converted"] <= 1.05 * r["teacher"],
        "converted_over_teacher": round(r["converted"] / r["teacher"], 4),
    }
    print(json.dumps(results["targets"]), flush=True)
    if args.json:
        from bllama.atomic import atomic_write

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
