"""bLLaMa: train BitNet b1.58 (ternary) LLaMA models in PyTorch and run them with a packed C++ engine."""
from .config import PRESETS, bLlamaConfig
from .module import bLlama

__version__ = "0.1.0"


def __getattr__(name):
    # The engine is a compiled extension; import it only when asked so the training side works without it.
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'bllama' has no attribute {name!r}")


__all__ = ["bLlamaConfig", "bLlama", "PRESETS", "Runtime"]
