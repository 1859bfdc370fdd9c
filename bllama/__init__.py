"""bLLaMa: train BitNet b1.58 (ternary) LLaMA models in PyTorch and run them with a packed C++ engine.

Imports are lazy so that `bllama.Runtime` (the C++ engine) does not pull in torch and Lightning.
"""
from .config import PRESETS, bLlamaConfig

__version__ = "0.1.0"

_LAZY = {"bLlama": ".module", "Runtime": ".runtime"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'bllama' has no attribute {name!r}")


__all__ = ["bLlamaConfig", "bLlama", "PRESETS", "Runtime"]
