"""bench/convert_shakespeare.py (issue 13's conversion benchmark) runs end to end with tiny settings: four runs,
their bits per character and the two targets in its JSON; every run completes the schedule its CPU budget bought.
The numbers themselves mean nothing at this size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_convert_benchmark_smoke(tmp_path):
    out = tmp_path / "convert.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "convert_shakespeare.py"), "-T", "0.05", "-M", "0.03", "--jobs", "2",
                        "--preset", "tiny", "--set", '{"num_layers": 1, "seq_len": 64, "batch_size": 4}',
                        "--vocab-size", "512", "--val-chars", "1000", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"teacher", "converted", "scratch-M", "scratch-TM"}
    for run in res["runs"].values():
        assert run["steps"] > 0 and 0 < run["val_bits_per_char"] < 20
        assert run["steps"] == run["schedule_steps"] and run["cpu_minutes"] > 0  # budgets in steps: no run cut short
    assert res["runs"]["converted"]["steps"] == res["runs"]["scratch-M"]["steps"]  # equal conversion budget
    assert res["threads"] == 1 and res["probed"]
    assert set(res["targets"]) == {"converted_beats_scratch_M", "converted_within_5pct_of_teacher",
                                   "converted_over_teacher"}
