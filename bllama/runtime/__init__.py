"""The Python face of the C++ engine: `Runtime.load("model.gguf").generate("Once upon a time")`. Torch-free."""
from .engine import CudaUnavailableError, EngineUnavailableError, check_cuda, cuda_status
from .runtime import Runtime, RuntimeBusyError
from .slots import SlotEvent, Slots, SlotsFullError

__all__ = ["Runtime", "RuntimeBusyError", "CudaUnavailableError", "EngineUnavailableError", "check_cuda", "cuda_status",
           "Slots", "SlotEvent", "SlotsFullError"]
