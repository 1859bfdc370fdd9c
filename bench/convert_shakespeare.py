"""Issue-13 conversion benchmark: is a converted full-precision model better than a b1.58 model trained from scratch?

On Tiny Shakespeare (bench/data/tinyshakespeare.txt; first 90% of the characters train, last 10% validate), with
one tokenizer trained on the training split:

1. teacher:    a full-precision (`quantize=False`) model of --preset, T minutes;
2. converted:  the teacher's weights as the latent weights of the b1.58 model, trained M more minutes with the
               quantization warm-up (bllama/train/quant_warmup.py) over the first --warmup-fraction of its steps;
3. scratch-M:  a b1.58 model from random weights, M minutes (the converted model's own training time);
4. scratch-TM: a b1.58 model from random weights, T + M minutes (the teacher's and the conversion's together).

Each run's cosine schedule is as long as the steps it is expected to take (its kind's step time, measured first,
times its minutes). Reports validation bits per character of all four (the b1.58 ones as ternary models) and the
issue's targets: converted < scratch-M, and converted within 5% of the teacher.

    python bench/convert_shakespeare.py --teacher-minutes 4 --convert-minutes 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(model, dm, minutes: float, callbacks=(), progress: bool = False) -> int:
    """Fit for `minutes` of wall time (or the model's schedule, whichever ends first); returns the steps taken."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_time={"seconds": minutes * 60},
                         max_steps=model.config.max_steps, max_epochs=1000, logger=False, enable_checkpointing=False,
                         enable_progress_bar=progress, precision="32-true", limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(model, dm)
    return trainer.global_step


def step_seconds(make_model, dm, steps: int = 6) -> float:
    """Seconds per optimizer step of a freshly built model (after two warm-up steps)."""
    import pytorch_lightning as pl

    model = make_model(max_steps=steps + 2)
    times = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, idx):
            times.append(time.perf_counter())

    train(model, dm, 10.0, [Clock()])
    return (times[-1] - times[2]) / max(1, len(times) - 3)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "bench" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--teacher-minutes", "-T", type=float, default=4.0)
    p.add_argument("--convert-minutes", "-M", type=float, default=2.0)
    p.add_argument("--preset", default="small")
    p.add_argument("--set", default=None, help='JSON config overrides, e.g. \'{"num_layers": 4}\'')
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--warmup-fraction", type=float, default=0.3,
                   help="share of the conversion's steps over which quantization is blended in")
    p.add_argument("--val-chars", type=int, default=None, help="evaluate on the first N validation characters")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.data import PackedDataset, TextDataModule
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from bllama.tools.evaluate import text_metrics, torch_logits_fn
    from bllama.train.quant_warmup import QuantWarmup

    torch.set_num_threads(args.threads)
    text = Path(args.data).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:][:args.val_chars]
    work = ROOT / "build-bench"
    work.mkdir(exist_ok=True)
    (work / "train_text.txt").write_text(train_text, encoding="utf-8")
    tok = SentencePieceTokenizer(train_sentencepiece([work / "train_text.txt"], work / "convert_tok",
                                                     vocab_size=args.vocab_size))
    overrides = json.loads(args.set) if args.set else {}
    base = bLlamaConfig.preset(args.preset, vocab_size=tok.vocab_size, **overrides)
    dm = TextDataModule(PackedDataset(tok.encode(train_text), max_length=base.seq_len, vocab_size=tok.vocab_size),
                        batch_size=base.batch_size, train_test_split=1.0, seed=args.seed)

    def make(quantize=True, **kw):
        torch.manual_seed(args.seed)
        return bLlama(bLlamaConfig.preset(args.preset, vocab_size=tok.vocab_size, quantize=quantize,
                                          **{**overrides, **kw}))

    def bits_per_char(model) -> float:
        if model.config.quantize:
            model.quantize_weights_to_ternary(verbose=False)
        return text_metrics(val_text, tok, base.seq_len, torch_logits_fn(model))["bits_per_char"]

    t_fp, t_q = step_seconds(lambda **kw: make(False, **kw), dm), step_seconds(make, dm)
    steps = lambda minutes, sec: max(10, int(minutes * 60 / sec))
    T, M = args.teacher_minutes, args.convert_minutes
    results = {"preset": args.preset, "params_M": round(make().num_parameters() / 1e6, 2), "threads": args.threads,
               "teacher_minutes": T, "convert_minutes": M, "seconds_per_step": {"fp": t_fp, "b1.58": t_q},
               "runs": {}}

    def record(name, model, minutes, taken, t0, **extra):
        bpc = bits_per_char(model)
        results["runs"][name] = {"minutes": minutes, "steps": taken, "schedule_steps": model.config.max_steps,
                                 "wall_s": round(time.perf_counter() - t0, 1), "val_bits_per_char": round(bpc, 4),
                                 **extra}
        print(name, json.dumps(results["runs"][name]), flush=True)

    t0 = time.perf_counter()
    teacher = make(False, max_steps=steps(T, t_fp))
    taken = train(teacher, dm, T, progress=args.progress)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    record("teacher", teacher, T, taken, t0)

    t0 = time.perf_counter()
    n = steps(M, t_q)
    warmup = max(1, int(args.warmup_fraction * n))
    converted = make(True, max_steps=n, warmup_steps=min(base.warmup_steps, warmup))
    converted.load_state_dict(teacher_state)
    taken = train(converted, dm, M, [QuantWarmup(warmup)], progress=args.progress)
    record("converted", converted, M, taken, t0, quant_warmup_steps=warmup)

    for name, minutes in (("scratch-M", M), ("scratch-TM", T + M)):
        t0 = time.perf_counter()
        model = make(True, max_steps=steps(minutes, t_q))
        taken = train(model, dm, minutes, progress=args.progress)
        record(name, model, minutes, taken, t0)

    r = {k: v["val_bits_per_char"] for k, v in results["runs"].items()}
    results["targets"] = {
        "converted_beats_scratch_M": r["converted"] < r["scratch-M"],
        "converted_within_5pct_of_teacher": r["converted"] <= 1.05 * r["teacher"],
        "converted_over_teacher": round(r["converted"] / r["teacher"], 4),
    }
    print(json.dumps(results["targets"]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
