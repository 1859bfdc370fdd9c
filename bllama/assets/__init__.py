"""Files that ship inside the package: the small pretrained model (see MODEL_CARD.md beside it)."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

# A 5M-parameter b1.58 model trained by `bllama train` on Tiny Shakespeare, TQ2_0, with the ChatML chat template.
SHAKESPEARE_MODEL = HERE / "shakespeare-5m.gguf"


def shakespeare_model() -> Path:
    """The shipped model's path; FileNotFoundError naming it when an install left it out."""
    if not SHAKESPEARE_MODEL.is_file():
        raise FileNotFoundError(f"the shipped model {SHAKESPEARE_MODEL} is missing (a source install without "
                                "package data?); reinstall with `pip install -e .` from a clone")
    return SHAKESPEARE_MODEL


def shipped_model_hint(path) -> str:
    """For a model path that does not exist but names the shipped model (the README's `bllama/assets/...` is relative
    to a clone, which an installed package is not): where this installation's copy is; else ""."""
    if Path(path).name == SHAKESPEARE_MODEL.name and SHAKESPEARE_MODEL.is_file():
        return f" (the shipped model of this installation is {SHAKESPEARE_MODEL})"
    return ""
