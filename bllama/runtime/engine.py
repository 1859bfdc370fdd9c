"""Loading the C++ engine (bllama._engine) and telling whether its CUDA backend can run here."""
from __future__ import annotations


def engine_module():
    try:
        from .. import _engine
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError("the bllama C++ engine is not built; run `pip install -e .` in the repository") from e
    return _engine


def cuda_status() -> str:
    """Why device="cuda" can or cannot run here: "ok: <GPU>" or the reason."""
    eng = engine_module()
    if not eng.cuda_compiled():
        return "this build of bllama has no CUDA backend (CMake found no CUDA compiler when it was built)"
    if eng.cuda_device_count() == 0:
        return eng.cuda_device_description()
    return "ok: " + eng.cuda_device_description()


class CudaUnavailableError(RuntimeError):
    """device="cuda" was asked for where the CUDA backend cannot run (no CUDA in the build, no GPU)."""


def check_cuda() -> None:
    """Raises CudaUnavailableError with the reason when the CUDA backend cannot run here."""
    status = cuda_status()
    if not status.startswith("ok: "):
        raise CudaUnavailableError(f"device='cuda' is unavailable: {status}")
