"""Builds the bllama package and its C++ engine (bllama._engine) with CMake + ninja, pybind/cmake_example style."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

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


def engine_cmake_args() -> list:
    """The configuration of build/release, shared by pip's extension build and tests/run_all.sh's ctest build
    (`python setup.py --print-cmake-args` prints it): one configuration, so the engine compiles once for both.
    BLLAMA_CUDA (AUTO by default: the CUDA backend where a GPU driver exists or CI=true), CUDA_ARCHS and
    BLLAMA_BUILD_TYPE come from the environment; ccache is used where installed."""
    args = [
        f"-DCMAKE_BUILD_TYPE={os.environ.get('BLLAMA_BUILD_TYPE', 'Release')}",
        f"-DBLLAMA_CUDA={os.environ.get('BLLAMA_CUDA', 'AUTO')}",
        "-DBLLAMA_BUILD_TESTS=ON", "-DBLLAMA_BUILD_BENCH=ON", "-DBLLAMA_BUILD_PYTHON=ON",
        "-G", "Ninja",
    ]
    if "CUDA_ARCHS" in os.environ:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CUDA_ARCHS']}")
    if shutil.which("ccache"):  # a launcher changes every compile command, so both builds must agree on it
        args += [f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache" for lang in ("C", "CXX", "CUDA")]
    return args


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # build/release in the source tree (BLLAMA_BUILD_DIR elsewhere), not setuptools' throw-away temporary folder:
        # tests/run_all.sh builds its C++ tests in the same folder with the same configuration, so the engine's
        # objects compile once, and a reinstall recompiles only what changed.
        build_dir = Path(os.environ.get("BLLAMA_BUILD_DIR", ROOT / "build" / "release")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}", f"-DPython_EXECUTABLE={sys.executable}",
                *engine_cmake_args()]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        print(f"bllama: building the engine module bllama._engine in {build_dir} (shared with tests/run_all.sh's "
              f"ctest build; BLLAMA_CUDA={os.environ.get('BLLAMA_CUDA', 'AUTO')})", flush=True)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_engine", "-j", jobs], check=True)


if sys.argv[1:] == ["--print-cmake-args"]:  # for tests/run_all.sh: the configuration, one argument a line
    print("\n".join(engine_cmake_args()))
    sys.exit(0)


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
                      "jinja2"],  # chat templates (bllama/chat.py); torch brings it too
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
