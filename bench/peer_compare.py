"""bLLaMa against ik_llama.cpp (the fastest CPU BitNet engine we know) in one run, on the same weights.

Builds ik_llama.cpp's llama-bench and llama-quantize from its public source OUTSIDE this repository (a git URL
or a local source folder; -j2, CPU only, flash attention only for the default KV types: with it off entirely,
libggml still calls its kernels and llama-bench fails to link), writes random-weight models of each preset (speed does not depend on the values) as TQ2_0 for us and as I2_S
for ik_llama.cpp, which requantizes it to IQ2_BN (its TQ2_0 requantize crashes) with the same head type as ours
(f16 head: f16; our 4-bit head: its Q4_0, the same 4.5 bits a weight and 32-column blocks), and runs rounds that
alternate the engines (the start rotates each round): prompt 128 tokens (pp128) and 64 decoded tokens right after
that prompt (ik: llama-bench -gp 128,64), plus the memory read bandwidth probe (bench/membw.cpp) at each thread
count in the same rounds. Prints one table of medians, ratios and decode GB/s as a share of the probe.

    python bench/peer_compare.py --ik https://github.com/ikawrakow/ik_llama.cpp --presets 1.7b 2b4t --rounds 7

Run it from the repository root with the extension built (bllama._engine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def build_ik(src: str, work: Path) -> Path:
    """llama-bench and llama-quantize of ik_llama.cpp; returns the folder holding them."""
    if not Path(src).is_dir():
        dest = work / "ik_llama.cpp"
        if not dest.exists():
            sh(["git", "clone", "--depth", "1", src, dest])
        src = str(dest)
    build = work / "ik-build"
    bindir = build / "bin"
    if (bindir / "llama-bench").exists() and (bindir / "llama-quantize").exists():
        return bindir
    sh(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_CUDA=OFF",
        "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_CURL=OFF",
        "-DGGML_IQK_FA_ALL_QUANTS=OFF"], stdout=subprocess.DEVNULL)
    sh(["cmake", "--build", build, "-j2", "--target", "llama-bench", "llama-quantize"], stdout=subprocess.DEVNULL)
    return bindir


def make_models(preset: str, work: Path, bindir: Path, heads) -> dict:
    """{(engine format, head): path} for one preset, all from the same random codes and tables."""
    from bllama.model.config import bLlamaConfig
    from bllama.tools.bench import write_random_gguf

    cfg = bLlamaConfig.preset(preset)
    ours, i2s = work / f"{preset}-tq2_0.gguf", work / f"{preset}-i2_s.gguf"
    if not ours.exists():
        write_random_gguf(cfg, ours, weight_type="tq2_0")
    if not i2s.exists():
        write_random_gguf(cfg, i2s, weight_type="i2_s")
    files = {("bllama", h): ours for h in heads}
    for h in heads:
        out = work / f"{preset}-iq2_bn-{h}.gguf"
        gg = {"f16": "f16", "q4": "q4_0", "q8": "q8_0"}[h]
        if not out.exists():
            # Tied models (both presets) have no output.weight: the table is the head, so both flags name its type.
            sh([bindir / "llama-quantize", "--allow-requantize", "--token-embedding-type", gg, "--output-tensor-type",
                gg, i2s, out, "IQ2_BN", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        files[("ik", h)] = out
    return files


def run_ik(bindir: Path, model: Path, threads: int, rtr: bool) -> tuple:
    out = subprocess.run([str(bindir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "128", "-n", "0",
                          "-gp", "128,64", "-r", "1", "-o", "json"] + (["-rtr", "1"] if rtr else []),
                         check=True, capture_output=True, text=True).stdout
    pp = tg = None
    for r in json.loads(out):
        if r.get("n_gen", 0) > 0:
            tg = float(r["avg_ts"])
        else:
            pp = float(r["avg_ts"])
    return pp, tg


OURS = r"""
import json, sys
import numpy as np
from bllama import _engine
path, threads, head, kv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
eng = _engine.Engine(path, threads, head=head, kv_cache_dtype=kv)
rng = np.random.default_rng(0)
eng.generate(rng.integers(3, eng.vocab_size, size=16).tolist(), 4, stop_ids=[])  # warm-up, as llama-bench does
eng.generate(rng.integers(3, eng.vocab_size, size=128).tolist(), 64, stop_ids=[])
s = eng.last_stats
print(json.dumps([s["prompt_tokens_per_second"], s["decode_tokens_per_second"], eng.config["head_bytes"]]))
"""


def run_ours(model: Path, threads: int, head: str, kv: str) -> tuple:
    out = subprocess.run([sys.executable, "-c", OURS, str(model), str(threads), head, kv], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    pp, tg, head_bytes = json.loads(out.strip().splitlines()[-1])
    return pp, tg, head_bytes


def bandwidth(threads: int) -> float:
    out = subprocess.run([sys.executable, "-c", f"from bllama import _engine; print(_engine.read_bandwidth({threads}))"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return float(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ik", required=True, help="ik_llama.cpp: a git URL or a source folder")
    p.add_argument("--work", default=None, help="build and model folder (default: a new temporary one)")
    p.add_argument("--presets", nargs="+", default=["1.7b", "2b4t"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--heads", nargs="+", default=["f16", "q4"], choices=["f16", "q8", "q4"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, help="write every round's numbers here")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="peer_compare_"))
    work.mkdir(parents=True, exist_ok=True)
    bindir = build_ik(args.ik, work)
    runs = {}  # (preset, engine label, head, threads) -> [(pp, tg)]
    bw = {t: [] for t in args.threads}
    bpt = {}
    for preset in args.presets:
        files = make_models(preset, work, bindir, args.heads)
        from bllama.tools.bench import bytes_per_token

        base = bytes_per_token(files[("bllama", args.heads[0])])  # f16 table read as the head
        from bllama.model.config import bLlamaConfig

        cfg = bLlamaConfig.preset(preset)
        V, D = cfg.vocab_size, cfg.hidden_size
        engines = []
        for h in args.heads:
            engines += [("bLLaMa TQ2_0", h), ("ik IQ2_BN rtr", h), ("ik IQ2_BN", h)]
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for t in args.threads:
                bw[t].append(bandwidth(t))
                for label, h in order:
                    if label.startswith("bLLaMa"):
                        pp, tg, hb = run_ours(files[("bllama", h)], t, h, "float16")
                        bpt[(preset, h)] = base - 2 * V * D + hb
                    else:
                        pp, tg = run_ik(bindir, files[("ik", h)], t, rtr=label.endswith("rtr"))
                    runs.setdefault((preset, label, h, t), []).append((pp, tg))
                    print(f"round {r + 1} {preset} {label} head {h} {t} thr: pp {pp:.1f} tg {tg:.2f}", flush=True)

    bwm = {t: statistics.median(v) for t, v in bw.items()}
    lines = [f"memory read bandwidth probe, same run (median of {args.rounds * len(args.presets)}): " +
             ", ".join(f"{t} thr {bwm[t]:.1f} GB/s" for t in args.threads),
             f"{'preset':<6} {'head':<4} {'engine':<15} " + " ".join(f"{'pp ' + str(t) + 't':>8} {'tg ' + str(t) + 't':>8}"
                                                                    for t in args.threads) + "  tg %bw (ours)"]
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in runs.items()}
    for preset in args.presets:
        for h in args.heads:
            for label in ("bLLaMa TQ2_0", "ik IQ2_BN rtr", "ik IQ2_BN"):
                row = f"{preset:<6} {h:<4} {label:<15} " + " ".join(
                    f"{med[(preset, label, h, t)][0]:>8.1f} {med[(preset, label, h, t)][1]:>8.2f}" for t in args.threads)
                if label.startswith("bLLaMa"):
                    row += "  " + " ".join(f"{100 * med[(preset, label, h, t)][1] * bpt[(preset, h)] / 1e9 / bwm[t]:.0f}%"
                                           for t in args.threads)
                lines.append(row)
            ratios = []
            for t in args.threads:
                ours = med[(preset, "bLLaMa TQ2_0", h, t)]
                best_pp = max(med[(preset, l, h, t)][0] for l in ("ik IQ2_BN rtr", "ik IQ2_BN"))
                best_tg = max(med[(preset, l, h, t)][1] for l in ("ik IQ2_BN rtr", "ik IQ2_BN"))
                ratios.append(f"{t} thr: pp {ours[0] / best_pp:.2f}x, tg {ours[1] / best_tg:.2f}x")
            lines.append(f"{preset:<6} {h:<4} {'ours / ik best':<15} " + "; ".join(ratios))
            if len(args.threads) > 1:
                t0, t1 = args.threads[0], args.threads[-1]
                lines.append(f"{preset:<6} {h:<4} {'scaling':<15} bLLaMa tg {t1}/{t0} thr "
                             f"{med[(preset, 'bLLaMa TQ2_0', h, t1)][1] / med[(preset, 'bLLaMa TQ2_0', h, t0)][1]:.2f}x; "
                             f"ik rtr {med[(preset, 'ik IQ2_BN rtr', h, t1)][1] / med[(preset, 'ik IQ2_BN rtr', h, t0)][1]:.2f}x")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_GB_s": bw, "bytes_per_token": {f"{k[0]} {k[1]}": v for k, v in bpt.items()},
                                               "runs": {" | ".join(map(str, k)): v for k, v in runs.items()},
                                               "table": lines}, indent=1))


if __name__ == "__main__":
    main()
