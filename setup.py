"""Builds the bllama package and its C++ engine (bllama._engine) with CMake + ninja, pybind/cmake_example style."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import ExecError

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    """bllama/_version.py's __version__, read as text: importing bllama here would need torch at build time."""
    text = (ROOT / "bllama" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("bllama/_version.py has no __version__ line")
    return match.group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def cuda_choice() -> str:
    """$BLLAMA_CUDA, AUTO where unset or empty (CMakeLists.txt refuses values other than AUTO, ON and OFF)."""
    return os.environ.get("BLLAMA_CUDA") or "AUTO"


def engine_cmake_args() -> list:
    """The configuration of build/release, shared by pip's extension build and tests/run_all.sh's ctest build
    (`python setup.py --print-cmake-args` prints it): one configuration, so the engine compiles once for both.
    BLLAMA_CUDA (AUTO by default: the CUDA backend where a GPU driver exists or CI=true), CUDA_ARCHS and
    BLLAMA_BUILD_TYPE come from the environment; ccache is used where installed."""
    args = [
        f"-DCMAKE_BUILD_TYPE={os.environ.get('BLLAMA_BUILD_TYPE', 'Release')}",
        f"-DBLLAMA_CUDA={cuda_choice()}",
        "-DBLLAMA_BUILD_TESTS=ON", "-DBLLAMA_BUILD_BENCH=ON", "-DBLLAMA_BUILD_PYTHON=ON",
        "-G", "Ninja",
    ]
    if "CUDA_ARCHS" in os.environ:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CUDA_ARCHS']}")
    if shutil.which("ccache"):  # a launcher changes every compile command, so both builds must agree on it
        args += [f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache" for lang in ("C", "CXX", "CUDA")]
    return args


def missing_build_tools() -> List[str]:
    """What the engine's build needs and this machine lacks, one sentence each (empty: nothing). Checked before
    CMake runs: without pybind11 or Python's headers CMake only notes "skipping the Python module" and the build
    then fails on "unknown target '_engine'", and a missing cmake was a FileNotFoundError traceback."""
    problems = []
    if shutil.which("cmake") is None:
        problems.append("CMake (>= 3.18) is not on the PATH: `pip install cmake`, or your system's package")
    if shutil.which("ninja") is None:
        problems.append("Ninja is not on the PATH: `pip install ninja`, or your system's package (ninja-build)")
    if importlib.util.find_spec("pybind11") is None:  # pip's isolated build brings it (pyproject.toml)
        problems.append(f"pybind11 is not installed for {sys.executable} (a build without build isolation?): "
                        "`pip install pybind11`")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        problems.append(f"Python's C headers are missing ({headers}): install python3-dev (Debian, Ubuntu) or "
                        "python3-devel (Fedora, RHEL)")
    return problems


def cmake_cache_source(build_dir: Path) -> Optional[Path]:
    """The source folder build_dir's CMake cache was configured for; None where there is no cache yet."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return None
    match = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache.read_text(errors="replace"), re.MULTILINE)
    return Path(match.group(1)) if match else None


def prepare_build_dir(build_dir: Path, chosen: bool) -> None:
    """Creates build_dir. A cache configured for another source folder (a copied or moved checkout that kept its
    build/) makes CMake refuse to run ("does not match the source ... used to generate cache"): our own
    build/release is only a cache of this tree's objects, so it starts afresh; a folder the user chose
    (BLLAMA_BUILD_DIR, chosen=True) may hold another tree's build, so it is left alone and named instead."""
    source = cmake_cache_source(build_dir)
    if source is not None and source.resolve() != ROOT:
        if chosen:
            raise ExecError(f"BLLAMA_BUILD_DIR={build_dir} holds the CMake build of another source tree ({source}); "
                            "point BLLAMA_BUILD_DIR at another folder, or empty this one")
        print(f"bllama: {build_dir} was configured for {source} (a copied or moved checkout): starting it afresh",
              flush=True)
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)


def run_build_step(cmd: List[str], what: str) -> None:
    """Runs one CMake step; a failure ends the build with one line that says which step failed (not a traceback
    of setuptools' internals under CMake's own message, which names the cause)."""
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise ExecError(f"bllama: {what} failed (exit status {result.returncode}); the CMake or compiler error above "
                        "says why")


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        problems = missing_build_tools()
        if problems:
            raise ExecError("bllama: cannot build the C++ engine (bllama._engine):\n  - " + "\n  - ".join(problems))
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # build/release in the source tree (BLLAMA_BUILD_DIR elsewhere), not setuptools' throw-away temporary folder:
        # tests/run_all.sh builds its C++ tests in the same folder with the same configuration, so the engine's
        # objects compile once, and a reinstall recompiles only what changed.
        chosen = os.environ.get("BLLAMA_BUILD_DIR")
        build_dir = Path(chosen or ROOT / "build" / "release").resolve()
        prepare_build_dir(build_dir, chosen=bool(chosen))
        # This build's ninja, every time: pip's isolated build environment is deleted afterwards, and a cache that
        # still named the last one's ninja made every later `pip install` of this checkout fail in CMake.
        # FindPython's cached findings (_Python_*) are dropped: after a build for another Python version (a 3.11
        # venv, then a 3.12 one) the first configure found no Python headers, so "pybind11 not found, skipping
        # the Python module" and "unknown target '_engine'". Found again, the same interpreter gives the same
        # compile commands, so nothing recompiles.
        args = [f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}", f"-DPython_EXECUTABLE={sys.executable}",
                "-U_Python_*", f"-DCMAKE_MAKE_PROGRAM={shutil.which('ninja')}", *engine_cmake_args()]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        print(f"bllama: building the engine module bllama._engine in {build_dir} (shared with tests/run_all.sh's "
              f"ctest build; BLLAMA_CUDA={cuda_choice()})", flush=True)
        run_build_step(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], "configuring the engine's build")
        run_build_step(["cmake", "--build", str(build_dir), "--target", "_engine", "-j", jobs],
                       "compiling the engine")


# Only when run as setup.py (pip's build backend runs it as __main__ too): tests import this file for its helpers.
if __name__ == "__main__" and sys.argv[1:] == ["--print-cmake-args"]:  # tests/run_all.sh: one argument a line
    print("\n".join(engine_cmake_args()))
    sys.exit(0)


if __name__ == "__main__":
    setup(
        name="bllama",
        version=read_version(),
        description="Train BitNet b1.58 (ternary) LLaMA models in PyTorch and run them with a packed C++ engine",
        packages=find_packages(include=["bllama", "bllama.*"]),
        package_data={"bllama": ["*.txt", "assets/*", "tokenizers/chat_templates/*.jinja"]},
        python_requires=">=3.9",
        # The README and CI pin torch==2.13.0 (the README says how to get its CPU build); any torch >= 2.5 works.
        install_requires=["torch>=2.5", "pytorch-lightning>=2.2", "sentencepiece>=0.2", "protobuf", "numpy",
                          "gguf>=0.10", "pyarrow", "tqdm", "matplotlib", "tokenizers>=0.19", "safetensors>=0.4",
                          "jinja2"],  # chat templates (bllama/tokenizers/chat.py); torch brings it too
        # transformers (+ accelerate, which its bitnet quantizer requires) is only the reference in tests: neither
        # pulls another torch when torch is already installed (checked with `pip install --dry-run -e ".[test]"`).
        # triton: the fused activation quantizer's test runs its kernel on the CPU through Triton's interpreter.
        # serve: `bllama serve`'s HTTP layer (ASGI: Starlette on uvicorn); the tests run it, so test brings it too.
        extras_require={"serve": ["starlette>=0.40", "uvicorn>=0.30"],
                        "test": ["pytest", "ninja", "cmake>=3.18", "transformers>=4.52", "accelerate",
                                 "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
                                 "starlette>=0.40", "uvicorn>=0.30"]},
        ext_modules=[CMakeExtension("bllama._engine")],
        cmdclass={"build_ext": CMakeBuild},
        entry_points={"console_scripts": ["bllama=bllama.cli:main"]},
        zip_safe=False,
    )
