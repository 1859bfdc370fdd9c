"""The original bLLaMa's module name (`from bllama.bllama import bLlama`), kept so its code runs as written."""
from .train.module import bLlama

__all__ = ["bLlama"]
