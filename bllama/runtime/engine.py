"""Loading the C++ engine (bllama._engine) and telling whether its CUDA backend can run here."""
from __future__ import annotations


class EngineUnavailableError(ImportError):
    """bllama._engine cannot be imported: not built (a source checkout that pip has not installed) or broken. The
    command line prints its message as one line; PyTorch training and generation do not need the engine."""


def engine_module():
    try:
        from .. import _engine
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == f"{__package__.rpartition('.')[0]}._engine":
            raise EngineUnavailableError("the bllama C++ engine (bllama._engine) is not built: `pip install -e .` in "
                                         "the repository builds it (PyTorch training does not need it)") from e
        # It exists but does not load (a missing shared library, an undefined symbol): say what the loader said.
        raise EngineUnavailableError(f"the bllama C++ engine (bllama._engine) does not load: {e}; rebuild it with "
                                     "`pip install -e .` in the repository") from e
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
