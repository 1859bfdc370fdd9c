"""`bllama demo`: the whole product in a few minutes on a fresh machine, with text that ships with Python.

Trains the tiny preset (b1.58) on the built-in corpus, quantizes it to ternary, exports a GGUF file and
generates through the C++ Runtime, printing the speed of both paths.
"""
from __future__ import annotations

import time
from pathlib import Path


def cpu_has_fast_bf16() -> bool:
    """bf16 autocast pays where the CPU has bf16 dot products (AVX512_BF16 or AMX) and is much slower where it has
    to emulate them (bench/NOTES-training.md)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_demo(out_dir: Path, minutes: float = 3.0, prompt: str = "The Python language", max_new_tokens: int = 100):
    import torch

    from ..model.config import bLlamaConfig
    from ..train.corpus import default_corpus_text
    from ..data import ShakespeareDataset, TextDataModule
    from ..convert.gguf_export import export_gguf
    from ..train.module import bLlama
    from ..runtime import Runtime
    from ..tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from ..train.trainer import run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    corpus = out_dir / "corpus.txt"
    corpus.write_text(default_corpus_text(), encoding="utf-8")
    print(f"[1/5] built-in corpus (Python's own documentation text): {corpus} "
          f"({corpus.stat().st_size / 1e6:.1f} MB)")
    tok = SentencePieceTokenizer(train_sentencepiece([corpus], out_dir / "tokenizer", vocab_size=2048))
    print(f"[2/5] trained a {tok.vocab_size}-piece SentencePiece BPE tokenizer: {out_dir / 'tokenizer.model'}")

    config = bLlamaConfig.preset("tiny", vocab_size=tok.vocab_size)
    dataset = ShakespeareDataset.from_file(corpus, tokenizer=tok, max_length=config.seq_len)
    dm = TextDataModule(dataset, batch_size=config.batch_size, train_test_split=0.95, seed=0)
    model = bLlama(config)
    print(f"[3/5] training the tiny b1.58 model ({model.num_parameters() / 1e6:.1f}M parameters) for "
          f"{minutes:g} min on CPU ({'bf16-mixed' if cpu_has_fast_bf16() else 'fp32'})")
    precision = "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
    trainer = run(out_dir, model, tok, dm, max_minutes=minutes, max_steps=100_000, val_every=200, limit_val_batches=8,
                  accelerator="cpu", devices=1, precision=precision)
    val = trainer.validate(model, dm, verbose=False)[0]["val_loss"]
    print(f"      validation loss {val:.3f} (perplexity {2.718281828 ** val:.1f}) after {trainer.global_step} steps")

    model.quantize_weights_to_ternary()
    gguf_path = export_gguf(model, tok, out_dir / "model.gguf")
    print(f"[4/5] exported {gguf_path} ({gguf_path.stat().st_size / 2**20:.2f} MiB, ternary TQ2_0)")

    rt = Runtime.load(gguf_path)
    # A tiny model trained for minutes often predicts a document end early; show the full continuation.
    # Sampling reads better than greedy decoding at this size (greedy falls into loops).
    text = rt.generate(prompt, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40, seed=0,
                       stop_at_eos=False)
    s = rt.stats
    t0 = time.perf_counter()
    model.generate(prompt, tok, max_len=max_new_tokens, repetition_penalty=1.1)
    torch_tps = max_new_tokens / (time.perf_counter() - t0)
    print(f"[5/5] C++ engine, sampled (temperature 0.8, top-k 40):\n{prompt}{text}\n")
    print(f"      engine: prompt {s['prompt_tokens_per_second']:.0f} tok/s, decode {s['decode_tokens_per_second']:.0f} tok/s; "
          f"PyTorch generate: about {torch_tps:.0f} tok/s (prompt + decode)")
    print(f"done: {out_dir} holds the checkpoint (checkpoints/last.ckpt), tokenizer.model and model.gguf; try\n"
          f"  bllama generate {gguf_path} \"{prompt}\" --do-sample --temperature 0.8 --top-k 40")
