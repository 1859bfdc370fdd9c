"""Issue-2 learning benchmark: the tiny preset on Tiny Shakespeare for a fixed wall time.

First 90% of the characters train, last 10% validate. Reports validation loss, bits per character
(validation nats/token x tokens / characters / ln 2, over the whole held-out text), training tokens/s,
and optionally the same run with full-precision nn.Linear layers (--twin) for comparison.

    python bench/train_shakespeare.py --minutes 10 --twin
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from shakespeare_split import DEFAULT_DATA, split_text, train_tokenizer


def run(args, quantize: bool, tok_path: str, result_q=None):
    import pytorch_lightning as pl
    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.data import PackedDataset, TextDataModule
    from bllama.tools.evaluate import text_metrics, torch_logits_fn
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_text, val_text = split_text(args.data)
    tok = SentencePieceTokenizer(tok_path)
    overrides = json.loads(args.set) if args.set else {}
    if args.steps:
        overrides["max_steps"] = args.steps  # the schedule's length: LR decays to its floor at the end of the run
    cfg = bLlamaConfig.preset(args.preset, vocab_size=tok.vocab_size, quantize=quantize, **overrides)
    train_ids = tok.encode(train_text)
    val_ids = tok.encode(val_text)
    dm = TextDataModule(PackedDataset(train_ids, max_length=cfg.seq_len, vocab_size=tok.vocab_size),
                        batch_size=cfg.batch_size, train_test_split=1.0, seed=args.seed,
                        val_dataset=PackedDataset(val_ids, max_length=cfg.seq_len, vocab_size=tok.vocab_size))
    model = bLlama(cfg)
    params = model.num_parameters()  # before quantization turns weights into buffers
    steps_estimate = cfg.max_steps

    class Clock(pl.Callback):
        tokens = 0
        t0 = None

        def on_train_batch_start(self, trainer, module, batch, idx):
            if idx == min(5, steps_estimate // 2) and self.t0 is None:  # skip warm-up steps (fewer in short runs)
                self.t0, self.tokens = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, module, out, batch, idx):
            if self.t0 is not None:
                self.tokens += batch[0].numel()

    clock = Clock()
    curve = []

    class Curve(pl.Callback):
        def on_validation_end(self, trainer, module):
            if "val_loss" in trainer.callback_metrics:
                curve.append((trainer.global_step, round(float(trainer.callback_metrics["val_loss"]), 4)))
                print(f"step {trainer.global_step}: val_loss {curve[-1][1]}", flush=True)

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_time={"minutes": args.minutes}, max_steps=steps_estimate,
                         max_epochs=1000, logger=False, enable_checkpointing=False, enable_progress_bar=args.progress,
                         precision=args.precision, val_check_interval=args.val_every, check_val_every_n_epoch=None,
                         limit_val_batches=args.val_batches, num_sanity_val_steps=0, callbacks=[clock, Curve()])
    t_start = time.perf_counter()
    trainer.fit(model, dm)
    train_s = time.perf_counter() - clock.t0
    if quantize:
        model.quantize_weights_to_ternary()
    m = text_metrics(val_text, tok, cfg.seq_len, torch_logits_fn(model))
    result = {"linear": "b1.58 BitLinear" if quantize else "full precision", "preset": args.preset,
              "params_M": round(params / 1e6, 2), "steps": trainer.global_step,
              "train_tokens_per_s": round(clock.tokens / train_s, 1), "minutes": round((time.perf_counter() - t_start) / 60, 2),
              "val_nll_per_token": round(m["nll_per_token"], 4), "val_bits_per_char": round(m["bits_per_char"], 4),
              "val_tokens": m["tokens"], "val_chars": m["chars"], "threads": args.threads, "precision": args.precision,
              "schedule_steps": cfg.max_steps, "val_curve": curve}
    print(json.dumps(result), flush=True)
    if result_q is not None:
        result_q.put(result)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", default=None, help='JSON config overrides, e.g. \'{"num_layers": 4}\'')
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--twin", action="store_true", help="also train the full-precision twin (after, same settings)")
    p.add_argument("--parallel", action="store_true", help="run both at once, --threads each (same conditions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="bf16-mixed", help="Lightning precision (bf16-mixed: ~1.8x faster here)")
    p.add_argument("--steps", type=int, default=None, help="schedule length in optimizer steps (default: preset's)")
    p.add_argument("--val-every", type=int, default=200, help="validation (loss curve) every N steps")
    p.add_argument("--val-batches", type=int, default=10, help="batches per periodic validation")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    tok_path = train_tokenizer(split_text(args.data)[0], "shakespeare_tok", args.vocab_size)
    results = []
    if args.twin and args.parallel:
        q = mp.get_context("spawn").Queue()
        procs = [mp.get_context("spawn").Process(target=run, args=(args, qz, tok_path, q)) for qz in (True, False)]
        for pr in procs:
            pr.start()
        results = [q.get() for _ in procs]
        for pr in procs:
            pr.join()
    else:
        results.append(run(args, True, tok_path))
        if args.twin:
            results.append(run(args, False, tok_path))
    if len(results) == 2:
        b = next(r for r in results if r["linear"].startswith("b1.58"))
        f = next(r for r in results if r["linear"] == "full precision")
        print(f"b1.58 / full-precision training throughput: {b['train_tokens_per_s'] / f['train_tokens_per_s']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
