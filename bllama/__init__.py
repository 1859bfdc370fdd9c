"""bLLaMa: train BitNet b1.58 (ternary) LLaMA models in PyTorch and run them with a packed C++ engine.

Imports are lazy so that `bllama.Runtime` (the C++ engine) does not pull in torch and Lightning.
"""
from ._version import __version__
from .model.config import PRESETS, bLlamaConfig
from .sampling import SamplingParams

# Transformer: the original bLLaMa exported it here (`from bllama import Transformer`).
_LAZY = {"bLlama": ".train.module", "Runtime": ".runtime", "Transformer": ".model.transformer"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'bllama' has no attribute {name!r}")


__all__ = ["bLlamaConfig", "bLlama", "PRESETS", "Runtime", "SamplingParams"]
