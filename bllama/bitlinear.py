"""The original bLLaMa's module name (`from bllama.bitlinear import BitLinear`), kept so its code runs as written."""
from .model.bitlinear import BitLinear

__all__ = ["BitLinear"]
