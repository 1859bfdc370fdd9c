"""Held-out perplexity of a TRAINED model with each LM head format the engine offers (issue 20).

Random weights make perplexity meaningless, so this trains the tiny preset on Tiny Shakespeare (bench/data; the
first 90% trains, the last 10% is held out) for a fixed number of steps on one thread, exports it, and evaluates
the held-out text through Runtime with head="f16" (the file's head, the reference), "q8" (int8, one scale per
row) and "q4" (4-bit, one f16 scale per 32 columns). --simulate adds formats the engine does not run, by writing
their dequantized values into an f16 head (weights only: it leaves out the int8 activation rounding that the
engine's q8/q4 add), to show what a format would cost before writing its kernel.

    python bench/head_accuracy.py --steps 600 --out bench/results/2026-12-06-cpu-head-accuracy

--model FILE skips training and scores that file instead, on the held-out lines of the split the shipped model
was trained and measured on (bllama/assets/MODEL_CARD.md: the lines after the last line break before 90% of the
characters), all of them unless --chars is given:

    python bench/head_accuracy.py --model bllama/assets/shakespeare-5m.gguf --chars 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's bllama (and its built engine), not whichever one is installed


def fake_quant(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Symmetric absmax quantization of each `block` columns of each row to `bits` (block = -1: per row), f16
    scale, the value of largest magnitude mapped to -2^(bits-1) as llama.cpp's q4_0 does (2^bits levels)."""
    rows, cols = w.shape
    b = cols if block < 0 else block
    x = w.reshape(rows, cols // b, b).astype(np.float32)
    idx = np.abs(x).argmax(-1)[..., None]
    m = np.take_along_axis(x, idx, -1)
    lo = -(1 << (bits - 1))
    d = (m / lo).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(x / np.where(d == 0, 1, d)), lo, -lo - 1)
    return (q * d).reshape(rows, cols)


def train(args, tok):
    import pytorch_lightning as pl
    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.data import PackedDataset, TextDataModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    text = (ROOT / "bench" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    cfg = bLlamaConfig.preset("tiny", vocab_size=tok.vocab_size, tie_embeddings=False, max_steps=args.steps,
                              warmup_steps=min(100, args.steps // 10))
    ids = tok.encode(text[:cut])
    dm = TextDataModule(PackedDataset(ids, max_length=cfg.seq_len, vocab_size=tok.vocab_size),
                        batch_size=cfg.batch_size, train_test_split=1.0, seed=0,
                        val_dataset=PackedDataset(ids[:4096], max_length=cfg.seq_len, vocab_size=tok.vocab_size))
    model = bLlama(cfg)
    pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, limit_val_batches=0).fit(model, dm)
    model.quantize_weights_to_ternary()
    return model, text[cut:]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="training steps (tiny preset, batch 16, one thread)")
    p.add_argument("--chars", type=int, default=60_000, help="held-out characters to score (0: all)")
    p.add_argument("--model", default=None, help="score this .gguf on the shipped model's held-out lines instead "
                                                 "of training one")
    p.add_argument("--threads", type=int, default=1, help="engine threads")
    p.add_argument("--simulate", action="store_true", help="also score weight-only formats through an f16 head")
    p.add_argument("--heads", nargs="+", default=["f16", "q8", "q4"], help="engine head formats (f16 first)")
    p.add_argument("--work", default=None, help="folder for the tokenizer and model (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for results.json")
    args = p.parse_args()

    import tempfile

    from bllama.convert.gguf_export import export_gguf
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece

    if args.model:
        from bllama.tools.demo import split_lines

        gguf = Path(args.model)
        held = split_lines((ROOT / "bench" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8"))[1]
        if args.simulate:
            raise SystemExit("--simulate needs a fresh training run, not --model")
        print(f"model {gguf}, {len(held)} held-out characters of the model card's split", flush=True)
        return score(args, gguf, held[: args.chars or None], None, None, None)

    work = Path(args.work or tempfile.mkdtemp(prefix="head_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "bench" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    if not (work / "sp.model").exists():
        train_sentencepiece(None, work / "sp", vocab_size=2048, texts=[text[: int(len(text) * 0.9)]])
    tok = SentencePieceTokenizer(str(work / "sp.model"))
    gguf = work / f"tiny-{args.steps}.gguf"
    t0 = time.process_time()
    model, held = None, text[int(len(text) * 0.9):]
    if not gguf.exists():
        model, held = train(args, tok)
        export_gguf(model, tok, gguf)
    held = held[: args.chars or None]
    print(f"model {gguf} (training CPU {time.process_time() - t0:.0f} s)", flush=True)
    return score(args, gguf, held, model, tok, work)


def score(args, gguf, held, model, tok, work):
    import torch

    from bllama import Runtime
    from bllama.convert.gguf_export import export_gguf

    rows = []
    for head in args.heads:
        rt = Runtime.load(gguf, threads=args.threads, head=head)
        r = rt.evaluate(held)
        rows.append({"head": head, "engine": True, "perplexity": r["perplexity"], "tokens": r["tokens"],
                     "head_bytes": rt.config["head_bytes"]})
        del rt
    if args.simulate:
        if model is None:
            raise SystemExit("--simulate needs a fresh training run (remove the cached .gguf or use a new --work)")
        w = model.model.lm_head.weight.detach().float().numpy().copy()
        V, D = w.shape
        for name, bits, block in [("w8 per row", 8, -1), ("w8 /32", 8, 32), ("w6 /16", 6, 16), ("w6 /32", 6, 32),
                                  ("w5 /32", 5, 32), ("w4 /32", 4, 32), ("w4 /16", 4, 16), ("w4 per row", 4, -1)]:
            with torch.no_grad():
                model.model.lm_head.weight.copy_(torch.from_numpy(fake_quant(w, bits, block)))
            path = export_gguf(model, tok, work / "sim.gguf")
            r = Runtime.load(path, threads=1).evaluate(held)
            per = bits + (0 if block < 0 else 16 / block)
            rows.append({"head": name, "engine": False, "perplexity": r["perplexity"], "tokens": r["tokens"],
                         "head_bytes": int(V * D * per / 8)})
        with torch.no_grad():
            model.model.lm_head.weight.copy_(torch.from_numpy(w))
    ref = rows[0]["perplexity"]
    print(f"{'head':<12} {'bytes':>10} {'perplexity':>11} {'vs f16':>8}")
    for r in rows:
        r["change"] = r["perplexity"] / ref - 1
        print(f"{r['head']:<12} {r['head_bytes']:>10} {r['perplexity']:>11.4f} {100 * r['change']:>+7.3f}%"
              + ("" if r["engine"] else "  (simulated, weights only)"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"model": str(args.model) if args.model else None,
                                                      "steps": None if args.model else args.steps,
                                                      "chars": len(held), "tokens": rows[0]["tokens"],
                                                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
