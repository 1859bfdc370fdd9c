"""What a user of an installed (or not yet built) package meets: `python -m bllama`, and one-line errors that say
what to install when the engine or an optional extra is missing, instead of import tracebacks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "bllama" / "assets" / "shakespeare-5m.gguf"


def run_python(code: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def cli_without(module: str, argv) -> subprocess.CompletedProcess:
    """The command line with `module` unimportable (None in sys.modules: what an install without it sees)."""
    return run_python(f"import sys; sys.modules[{module!r}] = None\nfrom bllama.cli import main; main({argv!r})")


def test_python_dash_m_bllama_is_the_command_line():
    """`python -m bllama` said "No module named bllama.__main__"."""
    r = subprocess.run([sys.executable, "-m", "bllama", "--version"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("bllama "), r.stderr


def test_serve_without_the_serve_extra_says_what_to_install():
    """`bllama serve` without Starlette / uvicorn (a plain `pip install .`) ended in a ModuleNotFoundError traceback."""
    for module in ("uvicorn", "starlette"):
        r = cli_without(module, ["serve", str(SHIPPED)])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"bllama serve: error: {module} is not installed" in r.stderr and ".[serve]" in r.stderr


def test_an_unbuilt_engine_is_one_line_naming_the_fix():
    """A source checkout that pip has not built: the engine's commands said so under two chained tracebacks."""
    r = cli_without("bllama._engine", ["generate", str(SHIPPED), "hi"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "bllama generate: error: the bllama C++ engine (bllama._engine) is not built: `pip install -e .`" in r.stderr


def test_an_engine_that_does_not_load_says_why():
    """A built engine that fails to load is not "not built": the loader's reason is in the message."""
    r = run_python("""
import importlib.abc, sys
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "bllama._engine":
            raise ImportError("undefined symbol: _ZN6bllama6EngineC1Ev")
sys.meta_path.insert(0, Broken())
from bllama.runtime import EngineUnavailableError
from bllama.runtime.engine import engine_module
try:
    engine_module()
except EngineUnavailableError as e:
    print(e)
""")
    assert r.returncode == 0 and "does not load: undefined symbol: _ZN6bllama6EngineC1Ev" in r.stdout, r.stderr


def test_the_readmes_relative_shipped_model_path_points_at_the_installed_copy(tmp_path):
    """The README's `bllama generate bllama/assets/shakespeare-5m.gguf ...` is relative to a clone; run elsewhere
    (an installed package) the error now names this installation's copy."""
    r = run_python("from bllama.cli import main; main(['generate', 'bllama/assets/shakespeare-5m.gguf', 'hi'])",
                   cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"the shipped model of this installation is {SHIPPED}" in r.stderr
