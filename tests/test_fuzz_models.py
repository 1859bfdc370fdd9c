"""A bounded fuzz of model files (structure, values, the tokenizers and chat templates inside them) through
Runtime.load, a short generate and a chat (issue #14): every case must end in a clean Python exception or a correct
run. Cases run in a worker subprocess, so a crash is counted rather than taking the suite down; bench/fuzz_models.py
is the same fuzz for longer."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("bllama._engine")
pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[1]


def test_fuzzed_model_files_end_in_a_clean_error_or_a_correct_run(tmp_path):
    spec = importlib.util.spec_from_file_location("fuzz_models", ROOT / "bench" / "fuzz_models.py")
    fuzz_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_models)
    c = fuzz_models.fuzz(tmp_path, seconds=45, seed=20240, timeout=20, max_cases=500, log=lambda _: None)
    assert c["tried"] >= 50, c
    assert c["crash"] == c["hang"] == c["wrong"] == 0, "\n".join(c["failures"][:20])
    assert c["ok"] > 0 and c["clean"] > 0, c  # both outcomes are exercised
