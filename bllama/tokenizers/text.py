"""What every tokenizer needs of its input text, and of the text files it reads."""
from __future__ import annotations


def check_text(value: str, what: str) -> str:
    """`value`, or ValueError when it holds a lone UTF-16 surrogate ("\\ud800": a Python str and JSON allow one), which
    no UTF-8 tokenizer can encode (SentencePiece answered with a RuntimeError about a C++ cast)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds a lone UTF-16 surrogate at index {e.start}, which is not text") from None
    return value


def not_utf8(path, error: UnicodeDecodeError) -> ValueError:
    """The error for a text file that is not UTF-8, naming the file (the codec's own message names only a byte)."""
    return ValueError(f"{path} is not UTF-8 text ({error.reason}: byte 0x{error.object[error.start]:02x}); "
                      f"convert it, e.g. iconv -f latin1 -t utf-8")


def read_text_file(path) -> str:
    """A UTF-8 text file's contents; ValueError naming the file when it is not UTF-8."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
