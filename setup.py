"""Builds the bllama package and its C++ engine (bllama._engine) with CMake + ninja, pybind/cmake_example style."""
import os
import re
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


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("BLLAMA_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            "-DBLLAMA_BUILD_TESTS=OFF", "-DBLLAMA_BUILD_BENCH=OFF", "-DBLLAMA_BUILD_PYTHON=ON",
            "-G", "Ninja",
        ]
        # BLLAMA_CUDA=OFF builds the CPU engine only even where nvcc exists; CUDA_ARCHS picks the GPU targets.
        if "BLLAMA_CUDA" in os.environ:
            args.append(f"-DBLLAMA_CUDA={os.environ['BLLAMA_CUDA']}")
        if "CUDA_ARCHS" in os.environ:
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CUDA_ARCHS']}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_engine", "-j", jobs], check=True)


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
