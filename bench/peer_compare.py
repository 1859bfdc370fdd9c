"""bLLaMa against the CPU BitNet engines we know, in one run, on the same weights: ik_llama.cpp (the fastest),
upstream llama.cpp and bitnet.cpp, each optional (--ik, --llamacpp, --bitnet: a git URL or a source folder).

Each peer's llama-bench (and llama-quantize) is built OUTSIDE this repository under --work (bench/peer_engines.py
says how, and why each file is what it is). Random-weight models of each preset (speed does not depend on the
values) are written from one seed: TQ2_0 for us and for llama.cpp (the same file), I2_S for bitnet.cpp (the same
file) and for ik_llama.cpp, which requantizes it to IQ2_BN. Every engine runs the same head type as ours (f16
head: f16; our 4-bit head: Q4_0, the same 4.5 bits a weight and 32-column blocks; q8: Q8_0), set by each peer's
own llama-quantize with only the head changed. Rounds alternate the engines (the start rotates each round) at
each thread count: prompt 128 tokens (pp128) and 64 tokens decoded right after that prompt, plus the memory read
bandwidth probe (bench/membw.cpp). How each engine's decode figure is taken:

    bLLaMa        the engine's own timers (last_stats) over the 64 tokens after the prompt
    ik_llama.cpp  llama-bench -gp 128,64 (times those 64 tokens)
    llama.cpp,    llama-bench -pg 128,64 (prompt + 64 tokens together; these versions have no -gp) minus the same
    bitnet.cpp    call's pp128 time: 64 / (t_pg - t_pp), the same quantity derived from two timed runs

A peer that fails to build, convert or run is reported in the table with the reason; the others' numbers stay.
Prints one table of medians, ratios against the best peer, thread scaling and our decode GB/s as a share of the
probe.

    python bench/peer_compare.py --ik https://github.com/ikawrakow/ik_llama.cpp \
        --llamacpp https://github.com/ggml-org/llama.cpp --bitnet <BitNet checkout with its submodule> \
        --presets 1.7b 2b4t --rounds 7

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
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]  # peer_engines, and this tree's bllama (not an installed one)
from peer_engines import (PeerUnavailable, build_bitnet, build_ik, build_llamacpp, plain_arch_twin,  # noqa: E402
                          quiet, requantize_head, run_llama_bench)


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


# Engine labels, in table order; "bLLaMa" must stay first (ratios are against it).
OURS_LABEL = "bLLaMa TQ2_0"
PEERS = {"ik": ("ik IQ2_BN rtr", "ik IQ2_BN"), "llamacpp": ("llama.cpp TQ2_0",), "bitnet": ("bitnet.cpp I2_S",)}
DECODE = {"ik IQ2_BN rtr": "gp", "ik IQ2_BN": "gp", "llama.cpp TQ2_0": "pg", "bitnet.cpp I2_S": "pg"}


def make_models(preset: str, work: Path, bins: dict, heads, unavailable: dict) -> dict:
    """{(engine label, head): path} for one preset, all from the same random codes and tables; a peer whose file
    cannot be made goes to unavailable[(preset, label, head)] with the reason."""
    from bllama.model.config import bLlamaConfig
    from bllama.tools.bench import write_random_gguf

    cfg = bLlamaConfig.preset(preset)
    ours, i2s = work / f"{preset}-tq2_0.gguf", work / f"{preset}-i2_s.gguf"
    if not ours.exists():
        write_random_gguf(cfg, ours, weight_type="tq2_0")
    if not i2s.exists():
        write_random_gguf(cfg, i2s, weight_type="i2_s")
    files = {(OURS_LABEL, h): ours for h in heads}
    for h in heads:
        gg = {"f16": "f16", "q4": "q4_0", "q8": "q8_0"}[h]
        try:
            if "ik" in bins:
                out = work / f"{preset}-iq2_bn-{h}.gguf"
                if not out.exists():
                    # Tied models (both presets) have no output.weight: the table is the head, so both flags name
                    # its type.
                    quiet([bins["ik"] / "llama-quantize", "--allow-requantize", "--token-embedding-type", gg,
                           "--output-tensor-type", gg, i2s, out, "IQ2_BN", "2"], f"ik_llama.cpp llama-quantize ({h})")
                files[("ik IQ2_BN rtr", h)] = files[("ik IQ2_BN", h)] = out
        except PeerUnavailable as e:
            for label in PEERS["ik"]:
                unavailable[(preset, label, h)] = str(e)
        for key, label, ftype, src in (("llamacpp", "llama.cpp TQ2_0", "TQ2_0", ours),
                                       ("bitnet", "bitnet.cpp I2_S", "I2_S", i2s)):
            if key not in bins:
                continue
            try:
                wt = ftype.lower()
                base = plain_arch_twin(preset, work, wt, src)
                files[(label, h)] = requantize_head(bins[key] / "llama-quantize", base,
                                                    work / f"{preset}-{key}-{wt}-{h}.gguf", h, ftype, wt, label)
            except PeerUnavailable as e:
                unavailable[(preset, label, h)] = str(e)
    return files


def build_peers(args, work: Path, unavailable_builds: dict) -> dict:
    bins = {}
    for key, src, build in (("ik", args.ik, build_ik), ("llamacpp", args.llamacpp, build_llamacpp),
                            ("bitnet", args.bitnet, build_bitnet)):
        if not src:
            continue
        try:
            bins[key] = build(src, work)
        except PeerUnavailable as e:
            print(f"{key}: {e}", flush=True)
            unavailable_builds[key] = str(e)
    return bins


def fmt(v, width, prec):
    return f"{v:>{width}.{prec}f}" if v is not None else f"{'-':>{width}}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ik", default=None, help="ik_llama.cpp: a git URL or a source folder")
    p.add_argument("--llamacpp", default=None, help="upstream llama.cpp: a git URL or a source folder")
    p.add_argument("--bitnet", default=None,
                   help="bitnet.cpp (microsoft/BitNet): a git URL (cloned with its submodule) or a checkout whose "
                        "3rdparty/llama.cpp submodule is filled")
    p.add_argument("--work", default=None, help="build and model folder (default: a new temporary one)")
    p.add_argument("--presets", nargs="+", default=["1.7b", "2b4t"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--heads", nargs="+", default=["f16", "q4"], choices=["f16", "q8", "q4"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, help="write every round's numbers here")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="peer_compare_"))
    work.mkdir(parents=True, exist_ok=True)
    failed_builds = {}
    bins = build_peers(args, work, failed_builds)
    labels = [OURS_LABEL] + [l for key in PEERS for l in PEERS[key] if key in bins or key in failed_builds]
    unavailable = {}  # (preset, label, head) -> why it has no numbers
    runs = {}  # (preset, engine label, head, threads) -> [(pp, tg)]
    bw = {t: [] for t in args.threads}
    bpt = {}
    from bllama.tools.bench import bytes_per_token
    from bllama.model.config import bLlamaConfig

    for preset in args.presets:
        for key, why in failed_builds.items():
            for label in PEERS[key]:
                for h in args.heads:
                    unavailable[(preset, label, h)] = f"build: {why}"
        files = make_models(preset, work, bins, args.heads, unavailable)
        base = bytes_per_token(files[(OURS_LABEL, args.heads[0])])  # f16 table read as the head
        cfg = bLlamaConfig.preset(preset)
        V, D = cfg.vocab_size, cfg.hidden_size
        engines = [(label, h) for h in args.heads for label in labels]
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for t in args.threads:
                bw[t].append(bandwidth(t))
                for label, h in order:
                    if (preset, label, h) in unavailable:
                        continue
                    try:
                        if label == OURS_LABEL:
                            pp, tg, hb = run_ours(files[(label, h)], t, h, "float16")
                            bpt[(preset, h)] = base - 2 * V * D + hb
                        else:
                            key = next(k for k, v in PEERS.items() if label in v)
                            pp, tg = run_llama_bench(bins[key], files[(label, h)], t, DECODE[label],
                                                     ["-rtr", "1"] if label.endswith("rtr") else [])
                    except (PeerUnavailable, subprocess.CalledProcessError, ValueError) as e:
                        why = str(e) if not isinstance(e, subprocess.CalledProcessError) else \
                            f"exit {e.returncode}: {(e.stderr or '').strip().splitlines()[-1:]}"
                        print(f"round {r + 1} {preset} {label} head {h} {t} thr: FAILED {why}", flush=True)
                        unavailable[(preset, label, h)] = f"run ({t} thr): {why}"
                        continue
                    runs.setdefault((preset, label, h, t), []).append((pp, tg))
                    print(f"round {r + 1} {preset} {label} head {h} {t} thr: pp {pp:.1f} tg {tg:.2f}", flush=True)

    lines = table(args, labels, runs, bw, bpt, unavailable)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_GB_s": bw, "bytes_per_token": {f"{k[0]} {k[1]}": v for k, v in bpt.items()},
                                               "runs": {" | ".join(map(str, k)): v for k, v in runs.items()},
                                               "unavailable": {" | ".join(k): v for k, v in unavailable.items()},
                                               "table": lines}, indent=1))


def table(args, labels, runs, bw, bpt, unavailable) -> list:
    bwm = {t: statistics.median(v) for t, v in bw.items() if v}
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in runs.items()}
    lines = [f"memory read bandwidth probe, same run (median of {args.rounds * len(args.presets)}): " +
             ", ".join(f"{t} thr {bwm[t]:.1f} GB/s" for t in args.threads if t in bwm),
             "tg = 64 tokens decoded right after a 128-token prompt; bLLaMa: its timers; ik: llama-bench -gp 128,64; "
             "llama.cpp, bitnet.cpp: 64 / (t(-pg 128,64) - t(pp128)) from the same llama-bench call",
             f"{'preset':<6} {'head':<4} {'engine':<16} " + " ".join(f"{'pp ' + str(t) + 't':>8} {'tg ' + str(t) + 't':>8}"
                                                                     for t in args.threads) + "  tg %bw (ours)"]
    get = lambda preset, label, h, t: med.get((preset, label, h, t), (None, None))  # noqa: E731
    for preset in args.presets:
        for h in args.heads:
            for label in labels:
                row = f"{preset:<6} {h:<4} {label:<16} " + " ".join(
                    f"{fmt(get(preset, label, h, t)[0], 8, 1)} {fmt(get(preset, label, h, t)[1], 8, 2)}" for t in args.threads)
                if label == OURS_LABEL and (preset, h) in bpt:
                    row += "  " + " ".join(f"{100 * get(preset, label, h, t)[1] * bpt[(preset, h)] / 1e9 / bwm[t]:.0f}%"
                                           for t in args.threads if get(preset, label, h, t)[1] is not None)
                if (preset, label, h) in unavailable:
                    row += f"  [{'partly ' if any(get(preset, label, h, t)[0] for t in args.threads) else ''}" \
                           f"n/a: {unavailable[(preset, label, h)][:300]}]"
                lines.append(row)
            ratios = []
            for t in args.threads:
                ours = get(preset, OURS_LABEL, h, t)
                peers = [(get(preset, l, h, t), l) for l in labels[1:] if get(preset, l, h, t)[0] is not None]
                if ours[0] is None or not peers:
                    continue
                bp, lp = max((x[0], l) for x, l in peers)
                bt, lt = max((x[1], l) for x, l in peers)
                ratios.append(f"{t} thr: pp {ours[0] / bp:.2f}x ({lp}), tg {ours[1] / bt:.2f}x ({lt})")
            if ratios:
                lines.append(f"{preset:<6} {h:<4} {'ours / best peer':<16} " + "; ".join(ratios))
            if len(args.threads) > 1:
                t0, t1 = args.threads[0], args.threads[-1]
                sc = [f"{l} {get(preset, l, h, t1)[1] / get(preset, l, h, t0)[1]:.2f}x" for l in labels
                      if get(preset, l, h, t0)[1] and get(preset, l, h, t1)[1]]
                if sc:
                    lines.append(f"{preset:<6} {h:<4} {'tg scaling':<16} {t1}/{t0} thr: " + "; ".join(sc))
    return lines


if __name__ == "__main__":
    main()
