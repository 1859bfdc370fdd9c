"""Building and shipping the package: the sdist holds what pip's build of the engine reads."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tree_files(*folders: str):
    return {p.relative_to(ROOT).as_posix() for f in folders for p in (ROOT / f).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_sdist_holds_what_the_engine_build_reads(tmp_path):
    """The sdist lists every C++ source, the bindings, the bandwidth probe the module links and the tests CMake
    configures, besides the package and its data (it held bllama/ and tests/test_*.py only: installing it failed
    in CMake, which found no CMakeLists.txt). egg_info's SOURCES.txt is the sdist's file list."""
    pytest.importorskip("setuptools")
    if list(importlib.metadata.entry_points(group="setuptools.file_finders")):
        pytest.skip("a setuptools file-finder plugin (setuptools-scm?) adds files that pip's isolated build would not")
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    listed = set((tmp_path / "bllama.egg-info" / "SOURCES.txt").read_text(encoding="utf-8").split())
    needed = tree_files("csrc", "python", "cmake", "tests/cpp", "tests/support", "bllama/assets") | {
        "CMakeLists.txt", "setup.py", "pyproject.toml", "bench/membw.cpp", "bench/membw.h",
        "bllama/tokenizers/chat_templates/chatml.jinja"}
    assert not needed - listed, sorted(needed - listed)[:20]
