"""Peak memory of `bllama import` on a checkpoint of Microsoft's BitNet b1.58 2B4T shapes.

Writes a synthetic BitNetForCausalLM folder (random packed uint8 weights + weight_scale, bf16 embedding, the 2B4T
config, a small byte-level BPE tokenizer), converts it in a fresh process and reports that process's peak RSS
against the checkpoint's size. The issue asks for "well under twice its size".

    python bench/import_memory.py [--layers 30] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(d: Path, layers: int) -> int:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "tests"))
    from hf_checkpoints import bpe_tokenizer_json

    D, F, H, KV, V = 2560, 6912, 20, 5, 128256
    hd = D // H
    cfg = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_size": D,
           "intermediate_size": F, "num_hidden_layers": layers, "num_attention_heads": H, "num_key_value_heads": KV,
           "vocab_size": V, "hidden_act": "relu2", "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 4096, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 1,
           "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                   "quantization_mode": "offline"}}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.json").write_text(bpe_tokenizer_json())
    rng = np.random.default_rng(0)
    packed = {}
    for out, inp in {(D, D), (KV * hd, D), (F, D), (D, F)}:
        codes = rng.integers(0, 3, size=(4, out // 4, inp), dtype=np.uint8)  # value + 1, four row quarters
        packed[(out, inp)] = torch.from_numpy(codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6)
    shapes = {"self_attn.q_proj": (D, D), "self_attn.k_proj": (KV * hd, D), "self_attn.v_proj": (KV * hd, D),
              "self_attn.o_proj": (D, D), "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}
    total = 0
    # One shard per 10 layers, like a real multi-file checkpoint; written and released one by one.
    for shard, start in enumerate(range(0, layers, 10)):
        t = {}
        if shard == 0:
            t["model.embed_tokens.weight"] = (torch.randn(V, D) * 0.02).to(torch.bfloat16)
            t["model.norm.weight"] = torch.ones(D, dtype=torch.bfloat16)
        for i in range(start, min(start + 10, layers)):
            p = f"model.layers.{i}."
            for name, shape in shapes.items():
                t[p + name + ".weight"] = packed[shape].clone()
                t[p + name + ".weight_scale"] = torch.tensor([0.02], dtype=torch.bfloat16)
            for n, dim in (("input_layernorm", D), ("post_attention_layernorm", D),
                           ("self_attn.attn_sub_norm", D), ("mlp.ffn_sub_norm", F)):
                t[p + n + ".weight"] = torch.ones(dim, dtype=torch.bfloat16)
        f = d / f"model-{shard:05d}.safetensors"
        save_file(t, str(f))
        total += f.stat().st_size
        del t
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--keep", default=None, help="write the checkpoint here and keep it")
    a = p.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bllama-import-")
    d = Path(a.keep) if a.keep else Path(tmp.name) / "ckpt"
    d.mkdir(parents=True, exist_ok=True)
    size = write_checkpoint(d, a.layers)
    out = Path(tmp.name) / "out.gguf"
    # Peak RSS of a fresh interpreter doing only the import (VmHWM is per address space).
    code = ("from bllama.convert.hf_import import import_hf; from bllama.tools.bench import peak_rss_mib; import sys; "
            f"import_hf({str(d)!r}, {str(out)!r}, progress=False); print(peak_rss_mib())")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    secs = time.perf_counter() - t0
    peak = float(r.stdout.strip().splitlines()[-1])
    res = {"checkpoint_MiB": round(size / 2**20, 1), "gguf_MiB": round(out.stat().st_size / 2**20, 1),
           "peak_rss_MiB": round(peak, 1), "peak_over_checkpoint": round(peak * 2**20 / size, 3),
           "seconds": round(secs, 1), "layers": a.layers}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
