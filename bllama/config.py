"""The original bLLaMa's module name (`from bllama.config import bLlamaConfig`), kept so its code runs as written."""
from .model.config import PRESETS, bLlamaConfig

__all__ = ["bLlamaConfig", "PRESETS"]
