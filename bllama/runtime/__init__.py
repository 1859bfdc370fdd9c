"""The Python face of the C++ engine: `Runtime.load("model.gguf").generate("Once upon a time")`. Torch-free."""
from .engine import CudaUnavailableError, check_cuda, cuda_status
from .runtime import Runtime

__all__ = ["Runtime", "CudaUnavailableError", "check_cuda", "cuda_status"]
