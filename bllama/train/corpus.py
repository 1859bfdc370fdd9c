"""A built-in English corpus that ships with every Python installation.

Used for demos on a fresh machine with no data: the Python reference manual
text from ``pydoc_data.topics`` (about 0.45 MB), the Zen of Python (the
``this`` module, rot13-decoded without importing it) and the docstrings of the
standard library's pure-Python modules (parsed with :mod:`ast`, nothing is
imported or executed; about 1.7 MB on CPython 3.11).  Together about 2.2 MB of
mostly natural English prose.  Deterministic for a given Python version.
"""

from __future__ import annotations

import ast
import codecs
import functools
import os
import sysconfig

__all__ = ["default_corpus_text", "default_corpus_documents"]

# Directories of the stdlib that hold tests, demos or vendored code.
_SKIP_DIRS = {
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
    "lib2to3", "turtledemo", "ensurepip", "_vendor",
}
_MIN_DOC_CHARS = 40


def _zen() -> str:
    import importlib.util

    spec = importlib.util.find_spec("this")
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return ""
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:  # `s = """..."""` holds the rot13 text
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return codecs.decode(node.value.value, "rot13").strip() + "\n"
    return ""


def _topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split it off
        return []
    return [topics[k].strip() + "\n" for k in sorted(topics)]


def _stdlib_docstrings() -> list[str]:
    root = sysconfig.get_paths().get("stdlib")
    if not root or not os.path.isdir(root):
        return []
    docs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                continue
            parts = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    d = ast.get_docstring(node)
                    if d and len(d) >= _MIN_DOC_CHARS:
                        parts.append(d.strip())
            if parts:
                docs.append("\n\n".join(parts) + "\n")
    return docs


@functools.lru_cache(maxsize=1)
def default_corpus_documents() -> tuple[str, ...]:
    """The corpus as separate documents (Zen, one per manual topic, one per stdlib file)."""
    docs = [_zen()] + _topics() + _stdlib_docstrings()
    return tuple(d for d in docs if d)


def _head_documents(max_chars: int) -> list[str]:
    """The leading documents covering ``max_chars``, without parsing the stdlib if not needed."""
    if default_corpus_documents.cache_info().currsize:
        return list(default_corpus_documents())
    docs = [d for d in [_zen()] + _topics() if d]
    if sum(len(d) + 1 for d in docs) >= max_chars:
        return docs
    return list(default_corpus_documents())


def default_corpus_text(max_chars: int | None = None) -> str:
    """The whole built-in corpus as one string (optionally cut to ``max_chars``).

    Takes about 2 s the first time (parsing the stdlib), cached afterwards.
    """
    if max_chars is None:
        return "\n".join(default_corpus_documents())
    return "\n".join(_head_documents(max_chars))[:max_chars]
