"""Building and shipping the package: the sdist holds what pip's build of the engine reads, and the build's failures
name their cause (setup.py's helpers, imported here without running setup(); CMakeLists.txt's option checks)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module: its helpers, no setup() call (that runs only as __main__)."""
    pytest.importorskip("setuptools")
    spec = importlib.util.spec_from_file_location("bllama_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_missing_build_tools_are_named(setup_py, monkeypatch):
    """No cmake was a FileNotFoundError traceback; no pybind11 (a build without isolation) ended in "ninja: error:
    unknown target '_engine'". Each is now named, with what installs it."""
    assert setup_py.missing_build_tools() == [] or shutil.which("cmake") is None or shutil.which("ninja") is None
    monkeypatch.setattr(setup_py.shutil, "which", lambda name: None)
    monkeypatch.setattr(setup_py.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(setup_py.sysconfig, "get_paths", lambda: {"include": "/nonexistent/include"})
    problems = "\n".join(setup_py.missing_build_tools())
    for words in ("CMake (>= 3.18) is not on the PATH", "Ninja is not on the PATH", "pybind11 is not installed",
                  "Python's C headers are missing (/nonexistent/include/Python.h)"):
        assert words in problems


def test_a_failed_build_step_ends_in_one_line(setup_py):
    """A failing CMake step raises setuptools' ExecError (pip prints "error: ..."), not CalledProcessError's
    traceback through setuptools under CMake's own message."""
    with pytest.raises(setup_py.ExecError, match=r"configuring the engine's build failed \(exit status 3\)"):
        setup_py.run_build_step([sys.executable, "-c", "raise SystemExit(3)"], "configuring the engine's build")


def _cache_for(build_dir: Path, source: Path) -> None:
    build_dir.mkdir(parents=True)
    (build_dir / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={source}\n")
    (build_dir / "stale.o").write_text("")


def test_a_copied_checkouts_build_folder_starts_afresh(setup_py, tmp_path):
    """`pip install .` from a copy of a checkout that kept its build/ failed: CMake refuses a cache made for another
    source folder. Our own build/release starts afresh; a BLLAMA_BUILD_DIR the user chose is named, not deleted."""
    ours = tmp_path / "release"
    _cache_for(ours, tmp_path / "old-checkout")
    setup_py.prepare_build_dir(ours, chosen=False)
    assert ours.is_dir() and not any(ours.iterdir())

    chosen = tmp_path / "shared"
    _cache_for(chosen, tmp_path / "another-tree")
    with pytest.raises(setup_py.ExecError, match="holds the CMake build of another source tree"):
        setup_py.prepare_build_dir(chosen, chosen=True)
    assert (chosen / "stale.o").exists()

    same = tmp_path / "same"
    _cache_for(same, ROOT)
    setup_py.prepare_build_dir(same, chosen=True)  # this tree's own cache: kept, objects and all
    assert (same / "stale.o").exists()


def test_empty_bllama_cuda_means_auto(setup_py, monkeypatch):
    monkeypatch.setenv("BLLAMA_CUDA", "")
    assert "-DBLLAMA_CUDA=AUTO" in setup_py.engine_cmake_args()


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None, reason="needs cmake and ninja")
def test_cmake_refuses_an_unknown_bllama_cuda(tmp_path):
    """BLLAMA_CUDA=auto (lower case) or =cpu was read as a CMake truth value: the CUDA backend was compiled where
    nvcc exists, without a GPU driver (most of the build's time). Now only AUTO / ON / OFF (and CMake's booleans)."""
    r = subprocess.run(["cmake", "-G", "Ninja", "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DBLLAMA_CUDA=cpu",
                        "-DBLLAMA_BUILD_PYTHON=OFF", "-DBLLAMA_BUILD_TESTS=OFF", "-DBLLAMA_BUILD_BENCH=OFF"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "BLLAMA_CUDA must be AUTO, ON or OFF, not 'cpu'" in r.stderr, r.stderr[-2000:]


def test_every_build_forgets_the_last_builds_environment(setup_py, monkeypatch, tmp_path):
    """A second `pip install` of a checkout failed in CMake: the cache named the ninja of the first build's isolated
    environment, which pip had deleted. Every configure now passes the ninja on this build's PATH. And the first
    build for another Python version (a 3.12 venv after a 3.11 one) found no Python headers in FindPython's cached
    state ("unknown target '_engine'"): every configure drops that state (-U_Python_*)."""
    from setuptools import Distribution

    ninja = tmp_path / "env" / "bin" / "ninja"
    commands = []
    monkeypatch.setattr(setup_py, "missing_build_tools", lambda: [])
    monkeypatch.setattr(setup_py.shutil, "which", lambda name: str(ninja) if name == "ninja" else None)
    monkeypatch.setattr(setup_py, "run_build_step", lambda cmd, what: commands.append(cmd))
    monkeypatch.setenv("BLLAMA_BUILD_DIR", str(tmp_path / "build"))
    ext = setup_py.CMakeExtension("bllama._engine")
    cmd = setup_py.CMakeBuild(Distribution({"name": "bllama", "ext_modules": [ext]}))
    cmd.ensure_finalized()
    cmd.build_extension(ext)
    configure = commands[0]
    assert configure[:2] == ["cmake", "-S"] and f"-DCMAKE_MAKE_PROGRAM={ninja}" in configure
    assert "-U_Python_*" in configure
