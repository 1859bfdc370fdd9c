"""The split and tokenizer the Tiny Shakespeare benchmarks share: the first 90% of the characters to train on, the
rest held out, and a SentencePiece tokenizer trained on the training part only (written under build-bench/)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "bench" / "data" / "tinyshakespeare.txt"


def split_text(path) -> tuple[str, str]:
    """(train, held-out) text of the file at `path`."""
    text = Path(path).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def train_tokenizer(train_text: str, name: str, vocab_size: int) -> str:
    """Trains build-bench/<name>.model on the training text; returns its path."""
    from bllama.tokenizers.sentencepiece import train_sentencepiece

    work = ROOT / "build-bench"
    work.mkdir(exist_ok=True)
    (work / "train_text.txt").write_text(train_text, encoding="utf-8")
    return str(train_sentencepiece([work / "train_text.txt"], work / name, vocab_size=vocab_size))
