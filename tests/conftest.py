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
    from bllama.corpus import default_corpus_text

    return _SELF_MADE * 20 + default_corpus_text(max_chars=200_000)


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory, sp_corpus_text) -> str:
    from bllama.tokenizer import train_sentencepiece

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    corpus.write_text(sp_corpus_text, encoding="utf-8")
    return train_sentencepiece([str(corpus)], str(d / "tokenizer"), vocab_size=384)


@pytest.fixture(scope="session")
def sp_tokenizer(sp_model_path):
    """A SentencePieceTokenizer (BPE, byte fallback, vocab 384, LLaMA ids)."""
    from bllama.tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(sp_model_path)
