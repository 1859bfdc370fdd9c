"""`bllama demo`: the whole product in a few minutes on a fresh machine.

First the shipped model (bllama/assets, trained by `bllama train` on Tiny Shakespeare) writes a few lines through the
C++ engine, in seconds. Then the demo trains its own tiny model for a fixed number of steps (not minutes: the result
must not depend on how busy the machine is) on the same data, measures both models on the same held-out text in
bits per character, says what text that number buys, exports the new model to GGUF and generates with it.
Only one checkpoint is left behind (checkpoints/last.ckpt).
"""
from __future__ import annotations

import time
from pathlib import Path

# The demo's model: the tiny preset (5M parameters) with the shipped model's batch and vocabulary.
VOCAB_SIZE = 1536
BATCH_SIZE = 8
HELD_OUT_CHARS = 20_000  # of the held-out text, scored for both models (seconds on the engine)
SHIPPED_STEPS = 3500  # how long the shipped model trained (bllama/assets/MODEL_CARD.md)

# What held-out bits per character on Tiny Shakespeare look like in sampled text (temperature 0.8), read off the
# samples of the shipped model's training run at several points (bllama/assets/MODEL_CARD.md). Rough bands.
QUALITY_BANDS = [
    (3.4, "letters and spaces: the look of text, few real words"),
    (2.8, "word-shaped text in the play's layout (NAMES:, short lines); common words right, little sense"),
    (2.4, "mostly real words and names; phrases that scan, no meaning across lines"),
    (0.0, "Shakespeare-like lines: real words, grammar for a line or two, speakers taking turns"),
]


def quality_of(bits_per_char: float) -> str:
    """The band of QUALITY_BANDS that `bits_per_char` (held-out, Tiny Shakespeare) falls in."""
    return next(text for floor, text in QUALITY_BANDS if bits_per_char >= floor)


def demo_corpus() -> tuple[str, str]:
    """(text, what it is): Tiny Shakespeare from the repository (bench/data) where the package runs from a clone, as
    after `pip install -e .`; else Python's own documentation text, which ships with every Python."""
    clone_copy = Path(__file__).resolve().parents[2] / "bench" / "data" / "tinyshakespeare.txt"
    if clone_copy.is_file():
        return clone_copy.read_text(encoding="utf-8"), f"Tiny Shakespeare ({clone_copy})"
    from ..train.corpus import default_corpus_text

    return default_corpus_text(), "Python's own documentation text (no clone: bench/data is absent)"


def split_lines(text: str, held_out: float = 0.1) -> tuple[str, str]:
    """(training text, held-out text): cut at the last line break before the last `held_out` of the characters,
    the split the shipped model was trained and measured on (bllama/assets/MODEL_CARD.md)."""
    cut = text.rfind("\n", 0, int(len(text) * (1 - held_out))) + 1
    return text[:cut], text[cut:]


def show(label: str, prompt: str, continuation: str) -> None:
    """Prompt and continuation, clearly apart (a continuation glued to its prompt reads as one garbled text)."""
    print(f"  {label}\n  prompt:       {prompt!r}\n  continuation: (sampled, temperature 0.8, top-k 40)")
    for line in continuation.strip("\n").splitlines() or [""]:
        print(f"    | {line}")


def sample(rt, prompt: str, max_new_tokens: int) -> str:
    return rt.generate(prompt, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40, seed=0,
                       stop_at_eos=False)


def run_demo(out_dir: Path, steps: int = 300, prompt: str = "ROMEO:", max_new_tokens: int = 80):
    import torch

    from ..assets import shakespeare_model
    from ..convert.gguf_export import export_gguf
    from ..data import ShakespeareDataset, TextDataModule
    from ..model.config import bLlamaConfig
    from ..runtime import Runtime
    from ..tokenizers.chat_templates import resolve_chat_template
    from ..tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from ..train.module import bLlama
    from ..train.trainer import resolve_precision, run

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    shipped = Runtime.load(shakespeare_model())
    t0 = time.perf_counter()
    text = sample(shipped, prompt, max_new_tokens)
    print(f"[1/5] the shipped model ({shakespeare_model().name}, 5M parameters, trained on Tiny Shakespeare; "
          f"{time.perf_counter() - t0:.2f} s):")
    show("shipped model", prompt, text)

    corpus, what = demo_corpus()
    train_text, val_text = split_lines(corpus)
    train_file, val_file = out_dir / "train.txt", out_dir / "val.txt"
    train_file.write_text(train_text, encoding="utf-8")
    val_file.write_text(val_text, encoding="utf-8")
    tok = SentencePieceTokenizer(train_sentencepiece([train_file], out_dir / "tokenizer", vocab_size=VOCAB_SIZE))
    print(f"[2/5] data: {what}, {len(train_text) / 1e6:.2f} MB to train on, the last {len(val_text) / 1e3:.0f} kB "
          f"held out; a {tok.vocab_size}-piece SentencePiece tokenizer trained on the training part")

    config = bLlamaConfig.preset("tiny", vocab_size=tok.vocab_size, batch_size=BATCH_SIZE, max_steps=steps,
                                 warmup_steps=min(100, max(steps // 10, 1)))
    dataset = ShakespeareDataset.from_file(train_file, tokenizer=tok, max_length=config.seq_len)
    dm = TextDataModule(dataset, batch_size=config.batch_size, train_test_split=1.0, seed=0, resumable=True)
    model = bLlama(config)
    precision = resolve_precision("auto", "cpu")
    print(f"[3/5] training the tiny b1.58 model ({model.num_parameters() / 1e6:.1f}M parameters) for {steps} steps "
          f"of {config.batch_size} x {config.seq_len} tokens on the CPU ({precision}); the bar counts steps")
    t0 = time.perf_counter()
    # No validation during the run: one checkpoint (last.ckpt), no second "best" copy of it.
    trainer = run(out_dir, model, tok, dm, max_steps=steps, accelerator="cpu", devices=1, precision=precision)
    minutes = (time.perf_counter() - t0) / 60
    tokens = trainer.global_step * config.batch_size * config.seq_len
    print(f"      trained {trainer.global_step} of {steps} steps ({tokens / 1e6:.1f}M tokens) in {minutes:.1f} min; "
          f"the shipped model is the same size, trained {SHIPPED_STEPS} such steps (bllama/assets/MODEL_CARD.md)")

    model.quantize_weights_to_ternary(verbose=False)
    gguf_path = export_gguf(model, tok, out_dir / "model.gguf", chat_template=resolve_chat_template("chatml"))
    print(f"[4/5] exported {gguf_path} ({gguf_path.stat().st_size / 2**20:.2f} MiB, ternary TQ2_0, ChatML template)")

    own = Runtime.load(gguf_path)
    held_out = val_text[:HELD_OUT_CHARS]
    own_bpc, shipped_bpc = (r.evaluate(held_out)["bits_per_char"] for r in (own, shipped))
    text = sample(own, prompt, max_new_tokens)
    s = own.stats
    print(f"[5/5] held-out bits per character (first {len(held_out) / 1e3:.0f} kB of the held-out text; lower is "
          f"better, uniform over 65 letters would be 6.0):\n"
          f"      your model {own_bpc:.2f}, the shipped model {shipped_bpc:.2f}")
    if "Shakespeare" in what:
        print(f"      at {own_bpc:.2f} bits/char expect {quality_of(own_bpc)}")
    show("your model", prompt, text)
    print(f"      engine: decode {s['decode_tokens_per_second']:.0f} tok/s")
    print(f"done: {out_dir} holds checkpoints/last.ckpt, tokenizer.model and model.gguf; try\n"
          f"  bllama generate {gguf_path} \"{prompt}\" --do-sample --temperature 0.8 --top-k 40\n"
          f"  bllama generate {shakespeare_model()} \"{prompt}\" --do-sample --temperature 0.8 --top-k 40\n"
          f"  bllama demo --steps {steps * 4}   (longer training, better text)")
