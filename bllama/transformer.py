"""The original bLLaMa's module name (`from bllama.transformer import Transformer`), kept so its code runs as
written."""
from .model.transformer import Transformer

__all__ = ["Transformer"]
