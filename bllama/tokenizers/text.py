"""What every tokenizer needs of its input text."""
from __future__ import annotations


def check_text(value: str, what: str) -> str:
    """`value`, or ValueError when it holds a lone UTF-16 surrogate ("\\ud800": a Python str and JSON allow one), which
    no UTF-8 tokenizer can encode (SentencePiece answered with a RuntimeError about a C++ cast)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds a lone UTF-16 surrogate at index {e.start}, which is not text") from None
    return value
