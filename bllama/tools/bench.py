"""`bllama bench`: prompt and decode speed of the C++ engine, bytes per token, bandwidth use, load time, RSS.

Without a model file it writes a random-weight GGUF of a preset's shapes (speed does not depend on the values).
"""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..model.config import bLlamaConfig


def write_random_gguf(config: bLlamaConfig, path: Path, seed: int = 0, weight_type: str = "tq2_0",
                      tokenizer=None) -> Path:
    """A random b1.58 model of `config`'s shapes (weight_type: export.TERNARY_TYPES). One random code matrix per
    shape is reused by every layer (each tensor still has its own bytes in the file, so nothing is shared in memory
    or cache). With a SentencePiece `tokenizer` (its vocabulary the config's) the file carries it, so Runtime can
    load it; else a made-up vocabulary."""
    import gguf

    from ..convert.gguf_schema import (PROJECTIONS, add_bitnet_metadata, add_packed_tensor, add_tokenizer,
                                       gguf_arch, pack_ternary)

    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces, the config's vocab_size is {config.vocab_size}")

    rng = np.random.default_rng(seed)
    c = config
    kv = c.num_kv_heads * c.head_dim
    shapes = {"attn_q": (c.hidden_size, c.hidden_size), "attn_k": (kv, c.hidden_size), "attn_v": (kv, c.hidden_size),
              "attn_output": (c.hidden_size, c.hidden_size), "ffn_gate": (c.ffn_size, c.hidden_size),
              "ffn_up": (c.ffn_size, c.hidden_size), "ffn_down": (c.hidden_size, c.ffn_size)}
    packed = {}
    for name, shape in shapes.items():
        if shape not in packed:
            packed[shape] = pack_ternary(rng.integers(-1, 2, size=shape, dtype=np.int8), 0.02, weight_type)
    w = gguf.GGUFWriter(str(path), gguf_arch(c, weight_type))
    add_bitnet_metadata(w, c)
    if tokenizer is not None:
        add_tokenizer(w, tokenizer)
    else:
        add_synthetic_vocab(w, c.vocab_size)
    w.add_tensor("token_embd.weight", (rng.standard_normal((c.vocab_size, c.hidden_size), dtype=np.float32) * 0.02)
                 .astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(c.hidden_size, np.float32))
    if not c.tie_embeddings:
        w.add_tensor("output.weight", (rng.standard_normal((c.vocab_size, c.hidden_size), dtype=np.float32) * 0.02)
                     .astype(np.float16))
    for i in range(c.num_layers):
        for norm, dim in (("attn_norm", c.hidden_size), ("attn_sub_norm", c.hidden_size),
                          ("ffn_norm", c.hidden_size), ("ffn_sub_norm", c.ffn_size)):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(dim, np.float32))
        for name in PROJECTIONS.values():
            add_packed_tensor(w, f"blk.{i}.{name}.weight", *packed[shapes[name]], shapes[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_synthetic_vocab(writer, vocab_size: int) -> None:
    """A SentencePiece-style vocabulary (unk, bos, eos, 256 byte pieces, then made-up words) so that other
    engines (llama.cpp's llama-bench) load the random benchmark model too."""
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    if vocab_size < len(specials) + 1:
        return
    tokens = specials + [f"\u2581w{i}" for i in range(vocab_size - len(specials))]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab_size - len(specials))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(specials) + [-float(i) for i in range(vocab_size - len(specials))])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)


def bytes_per_token(path: Path) -> int:
    """Bytes a decode step must read: every tensor once, except the embedding table, of which only one row is
    read unless it is also the (tied) head."""
    from .. import _engine

    tensors = {t["name"]: t for t in _engine.gguf_tensors(str(path))}
    total = sum(int(t["nbytes"]) for t in tensors.values())
    if "output.weight" in tensors:
        emb = tensors["token_embd.weight"]
        total -= int(emb["nbytes"]) - int(emb["nbytes"]) // int(emb["dims"][-1])
    return total


def _median_run(engine, prompt_len: int, gen: int, repeats: int, vocab: int, seed: int = 0, sequences: int = 1):
    """Median prompt and decode tok/s; sequences > 1: that many random prompts decoded together (generate_batch),
    decode tok/s counting every sequence's tokens."""
    rng = np.random.default_rng(seed)
    pp, tg = [], []
    for _ in range(repeats):
        prompts = [rng.integers(3, vocab, size=prompt_len).tolist() for _ in range(sequences)]
        if sequences > 1:
            engine.generate_batch(prompts, gen, stop_ids=[])
        else:
            engine.generate(prompts[0], gen, stop_ids=[])
        s = engine.last_stats
        pp.append(s["prompt_tokens_per_second"])
        tg.append(s["decode_tokens_per_second"])
    return statistics.median(pp), statistics.median(tg)


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, so unlike getrusage's ru_maxrss
    it does not carry over the peak of the parent a spawned worker was forked from."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_engine(path: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int, bpt: int,
                    head: str = "q4", device: str = "cpu", sequences: int = 1) -> dict:
    from .. import _engine

    t0 = time.perf_counter()
    eng = _engine.Engine(path, None if device == "cuda" else threads, head=head, device=device,
                         max_sequences=sequences)
    load_s = time.perf_counter() - t0
    if head != "f16":  # the engine reads its requantized copy (and its scales) instead of the f16 head
        c = eng.config
        bpt = bpt - 2 * c["vocab_size"] * c["hidden_size"] + c["head_bytes"]
    pp, tg = _median_run(eng, prompt_tokens, gen_tokens, repeats, eng.vocab_size, sequences=sequences)
    rss = peak_rss_mib()  # before the bandwidth probe's buffer
    del eng
    # GPU copy bandwidth is measured by bench/bench_cuda_kernels (CUDA events), not from Python.
    bw = None if device == "cuda" else _engine.read_bandwidth(threads)
    gbs = tg / sequences * bpt / 1e9  # bytes read per step: the weights once for all sequences
    return {"threads": "cuda" if device == "cuda" else threads, "head": head, "sequences": sequences, "prompt_tok_s": round(pp, 1), "decode_tok_s": round(tg, 2), "load_s": round(load_s, 3),
            "bytes_per_token": bpt, "decode_GB_s": round(gbs, 2),
            "read_bandwidth_GB_s": round(bw, 2) if bw else None, "pct_of_bandwidth": round(100 * gbs / bw, 1) if bw else None,
            "peak_rss_MiB": round(rss, 1)}


def run_bench(model: Optional[str] = None, preset: str = "1.7b", threads: Optional[List[int]] = None,
              prompt_tokens: int = 128, gen_tokens: int = 64, repeats: int = 3, torch_compare: bool = False,
              json_out: Optional[str] = None, head: str = "q4", device: str = "cpu", sequences: int = 1) -> dict:
    if device == "cuda":
        from ..runtime import check_cuda

        check_cuda()  # before writing a 500 MB random model: says why the GPU cannot be used
    tmpdir = None
    if model is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="bllama-bench-")
        cfg = bLlamaConfig.preset(preset)
        t0 = time.perf_counter()
        path = write_random_gguf(cfg, Path(tmpdir.name) / f"random-{preset}.gguf")
        print(f"wrote a random {preset} model ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    else:
        path = Path(model)
    threads = [0] if device == "cuda" else threads or sorted({1, len(os.sched_getaffinity(0))})
    bpt = bytes_per_token(path)
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for t in threads:
        # A fresh process per measurement (honest load time and RSS). An executor, not a Pool: if the engine
        # crashes the worker, Pool.apply waits forever, while the executor raises BrokenProcessPool.
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            try:
                rows.append(pool.submit(_measure_engine, str(path), t, prompt_tokens, gen_tokens, repeats, bpt, head,
                                        device, sequences).result())
            except BrokenProcessPool as e:
                raise RuntimeError(f"the engine process died measuring {path} "
                                   f"({'cuda' if device == 'cuda' else f'{t} threads'}): {e}") from e
    result = {"model": str(path) if model else f"random {preset}", "file_MiB": round(path.stat().st_size / 2**20, 1),
              "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "repeats": repeats, "head": head,
              "device": device, "sequences": sequences,
              "engine": rows}
    if torch_compare:
        result["torch"] = torch_speed(model, preset, prompt_tokens, min(gen_tokens, 8), threads[-1])
    print(format_table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
        print(f"wrote {json_out}")
    if tmpdir is not None:
        tmpdir.cleanup()
    return result


def torch_speed(model: Optional[str], preset: str, prompt_tokens: int, gen_tokens: int, threads: int) -> dict:
    """The PyTorch quantized model (bLlama after quantize_weights_to_ternary) on the same shapes."""
    import torch

    from ..model.generate import generate_ids
    from ..model.transformer import Transformer

    if model is not None:
        raise ValueError("--torch compares on a random model of --preset; give no model file")
    torch.set_num_threads(threads)
    net = Transformer(bLlamaConfig.preset(preset)).eval()
    for _, layer in net.bitlinears():
        layer.quantize()
    ids = list(range(3, 3 + prompt_tokens))
    t0 = time.perf_counter()
    generate_ids(net, ids, 1)
    t_prompt = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate_ids(net, ids, gen_tokens + 1)
    t_all = time.perf_counter() - t0
    return {"threads": threads, "head": "f16 (fp32 in PyTorch)", "prompt_tok_s": round(prompt_tokens / t_prompt, 2),
            "decode_tok_s": round(gen_tokens / max(t_all - t_prompt, 1e-9), 3)}


def format_table(r: dict) -> str:
    lines = [f"model: {r['model']} ({r['file_MiB']} MiB), prompt {r['prompt_tokens']} tokens, "
             f"decode {r['gen_tokens']} tokens, median of {r['repeats']}, {r.get('head', 'f16')} head"
             + (f", {r['sequences']} sequences decoded together (tok/s: all of them)" if r.get("sequences", 1) > 1 else ""),
             f"{'threads':>7} {'prompt tok/s':>12} {'decode tok/s':>12} {'GB/s':>6} {'% bw':>6} {'load s':>7} "
             f"{'RSS MiB':>8}"]
    for e in r["engine"]:
        pct = f"{e['pct_of_bandwidth']:.0f}" if e["pct_of_bandwidth"] is not None else "-"
        lines.append(f"{e['threads']:>7} {e['prompt_tok_s']:>12.1f} {e['decode_tok_s']:>12.2f} {e['decode_GB_s']:>6.2f} "
                     f"{pct:>6} {e['load_s']:>7.3f} {e['peak_rss_MiB']:>8.0f}")
    if "torch" in r:
        t = r["torch"]
        best = max(e["decode_tok_s"] for e in r["engine"])
        lines.append(f"PyTorch quantized model, {t['threads']} threads: prompt {t['prompt_tok_s']} tok/s, decode "
                     f"{t['decode_tok_s']} tok/s (engine decode is {best / max(t['decode_tok_s'], 1e-9):.0f}x)")
    lines.append(f"bytes read per decoded token: {r['engine'][0]['bytes_per_token'] / 2**20:.1f} MiB")
    if r.get("device") == "cuda":
        lines.append("GPU: RSS is host memory; the GPU's copy bandwidth is in bench/bench_cuda_kernels' output")
    return "\n".join(lines)
