"""Loading refuses what it cannot hold with a clear Python error (issue #14, item 7): a context too large for
memory, and a safetensors index that points outside its folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_i2s import _weights, llama3_style_tokenizer, write_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def huge_context_file(tmp_path_factory):
    import gguf

    path = write_file(tmp_path_factory.mktemp("ctx") / "ctx.gguf", _weights(), "tq2_0", "bitnet",
                      llama3_style_tokenizer(), True)
    r = gguf.GGUFReader(str(path), "r+")
    field = r.fields["bitnet.context_length"]
    field.parts[field.data[0]][0] = 4 << 20  # the largest the loader accepts: a 4 GiB-plus KV cache here
    del r
    return path


def test_a_context_too_large_for_memory_is_a_clear_memory_error(huge_context_file):
    pytest.importorskip("bllama._engine")
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a machine with 3 GiB
from bllama.runtime import Runtime
try:
    Runtime.load({str(huge_context_file)!r}, threads=1)
    print("loaded")
except MemoryError as e:
    print("MemoryError:", e)
rt = Runtime.load({str(huge_context_file)!r}, threads=1, context_length=256, kv_cache_dtype="float16")
print("capped", rt.context_length, rt.config["kv_cache_dtype"])
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("MemoryError: not enough memory to load") and "context_length" in lines[0], lines
    assert lines[1] == "capped 256 float16"


def test_runtime_load_checks_context_length_and_kv_cache_dtype(huge_context_file):
    pytest.importorskip("bllama._engine")
    from bllama.runtime import Runtime

    with pytest.raises(ValueError, match="context_length"):
        Runtime.load(huge_context_file, context_length=0)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        Runtime.load(huge_context_file, kv_cache_dtype="int4")


@pytest.mark.parametrize("bad", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_a_safetensors_index_naming_files_outside_its_folder_is_refused(tmp_path, bad):
    import torch
    from safetensors.torch import save_file

    from bllama.convert.hf_import import HFImportError, _Tensors

    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    bad = str(tmp_path / "outside.safetensors") if bad == "ABSOLUTE" else bad
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": bad}}))
    with pytest.raises(HFImportError, match="not a file name inside"):
        _Tensors(folder)
