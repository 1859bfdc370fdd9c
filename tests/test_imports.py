"""What the package layout promises: the engine-side modules import without torch, and the public names stay put."""
import subprocess
import sys


def test_engine_side_modules_do_not_import_torch():
    code = ("import sys, bllama; bllama.Runtime; bllama.SamplingParams; "
            "import bllama.runtime, bllama.serve.server, bllama.serve.protocol, bllama.convert.gguf_schema, "
            "bllama.tokenizers.from_gguf, bllama.train.corpus, bllama.atomic; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_public_names():
    import bllama
    import bllama.data

    assert {"bLlamaConfig", "bLlama", "PRESETS", "Runtime", "SamplingParams"} <= set(bllama.__all__)
    assert bllama.bLlama.__module__ == "bllama.train.module" and bllama.Runtime.__module__ == "bllama.runtime.runtime"
    for name in bllama.data.__all__:
        assert hasattr(bllama.data, name), name
    assert isinstance(bllama.__version__, str)
