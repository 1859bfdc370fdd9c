"""Shared fixtures: a small SentencePiece tokenizer trained once per session."""

import pytest

# A few paragraphs of self-made English with digits, punctuation, whitespace
# runs and non-ASCII text, so that training needs no external data.
_SELF_MADE = """\
The quick brown fox jumps over the lazy dog. A small model learns to predict the next token.
Tokenizers split text into pieces; pieces map to integer ids, and ids map back to text.
In 2024, ternary weights (-1, 0, +1) made large models cheaper to run on ordinary CPUs.
    Indented lines, tabs\tand  double  spaces should survive a round trip unchanged.
Numbers like 3.14159, 2718 and 65536 are split into single digits by the tokenizer.
Café, naïve, façade, über and résumé contain accented letters; 東京 and 😀 need bytes.
"""


@pytest.fixture(scope="session")
def sp_corpus_text() -> str:
    """The text the session tokenizer was trained on (self-made + built-in corpus)."""
    from bllama.train.corpus import default_corpus_text

    return _SELF_MADE * 20 + default_corpus_text(max_chars=200_000)


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, sp_corpus_text) -> str:
    from bllama.tokenizers.sentencepiece import train_sentencepiece

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    corpus.write_text(sp_corpus_text, encoding="utf-8")
    return train_sentencepiece([str(corpus)], str(d / "tokenizer"), vocab_size=384)


@pytest.fixture(scope="session")
def sp_tokenizer(sp_model_path):
    """A SentencePieceTokenizer (BPE, byte fallback, vocab 384, LLaMA ids)."""
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer

    return SentencePieceTokenizer(sp_model_path)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, sp_tokenizer):
    """A small b1.58 model trained briefly on Tiny Shakespeare (bench/data, shipped with the repository),
    shared by the learning test and the engine-vs-PyTorch tests. Returns a dict with the trained (not yet
    quantized) bLlama, the tokenizer, held-out text, and the validation loss before and after training."""
    from pathlib import Path

    import pytorch_lightning as pl
    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.data import ShakespeareDataset, TextDataModule

    text = (Path(__file__).resolve().parents[1] / "bench" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    d = tmp_path_factory.mktemp("trained_tiny")
    train_text, held_out = text[:300_000], text[-20_000:]
    (d / "train.txt").write_text(train_text, encoding="utf-8")
    torch.manual_seed(0)
    cfg = bLlamaConfig.preset("tiny", vocab_size=sp_tokenizer.vocab_size, seq_len=128, num_layers=2,
                              warmup_steps=20, max_steps=120, batch_size=16)
    ds = ShakespeareDataset.from_file(d / "train.txt", tokenizer=sp_tokenizer, max_length=cfg.seq_len)
    dm = TextDataModule(ds, batch_size=cfg.batch_size, train_test_split=0.9, seed=0)
    model = bLlama(cfg)
    trainer = pl.Trainer(max_steps=120, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=10)
    start = trainer.validate(model, dm, verbose=False)[0]["val_loss"]
    trainer.fit(model, dm)
    end = trainer.validate(model, dm, verbose=False)[0]["val_loss"]
    return {"model": model, "tokenizer": sp_tokenizer, "held_out": held_out, "start_loss": start, "end_loss": end,
            "dir": d}
