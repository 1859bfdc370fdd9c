"""The 4-bit head kernel before and after a change, alternating in one run (issue 20): two builds' bench_kernels
--heads-only (the bandwidth probe, then f16 / q8 / q4 heads at the 1.7B and 2B4T shapes) and bench_decode
end to end with the q4 head (old and new build) and the f16 head (new build), rotating the order every round.
Medians over rounds, and per-round ratios' medians, so a busy machine's load hits every variant alike.

    python bench/head_q4_rounds.py --old build/baseline --new build/release --rounds 5 --out results_dir

Children run at this script's niceness (on a shared machine: `nice -n 10 python bench/head_q4_rounds.py ...`).

--old / --new: folders holding bench_kernels and bench_decode (e.g. main's build and this branch's).
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

KERNEL_ROW = re.compile(r"^\s+(gemv \d+x\d+|read 1 GiB.*?)\s+(\d)T\s+([\d.]+)\s+([\d.]+)\s+GB/s")


def run(cmd: list[str], log: Path | None) -> str:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # at the caller's niceness
    if log:
        with log.open("a") as f:
            f.write("$ " + " ".join(cmd) + "\n" + out + "\n")
    return out


def kernel_rows(out: str) -> dict:
    """{(section, shape, threads): busy GB/s} from bench_kernels' text table."""
    rows, section = {}, ""
    for line in out.splitlines():
        if line.startswith("== "):
            section = line[3:].strip()
        elif m := KERNEL_ROW.match(line):
            rows[(section, m.group(1).strip(), int(m.group(2)))] = float(m.group(4))
    return rows


def decode_tps(out: str) -> dict:
    """{threads: decode tok/s} from bench_decode's result rows."""
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 9 and f[0].isdigit() and f[2].replace(".", "").isdigit():
            rows[int(f[0])] = float(f[3])
    if not rows:
        raise RuntimeError("no result row in bench_decode output:\n" + out)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shapes", nargs="+", default=["1.7b", "2b4t"])
    p.add_argument("--threads", default="1,2", help="decode thread counts (the kernels always run 1 and 2)")
    p.add_argument("--reps", type=int, default=5, help="bench_kernels --reps")
    p.add_argument("--prompt", type=int, default=128, help="bench_decode --prompt")
    p.add_argument("--decode", type=int, default=64, help="bench_decode --decode")
    p.add_argument("--work", default=None, help="folder for the random model files (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for the raw logs")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bllama_q4_"))
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    builds = {"old": Path(args.old), "new": Path(args.new)}
    kern = {b: [] for b in builds}
    variants = [("old", "q4"), ("new", "q4"), ("new", "f16")]
    nts = [int(t) for t in args.threads.split(",")]
    dec = {(s, v, t): [] for s in args.shapes for v in variants for t in nts}
    for r in range(args.rounds):
        order = list(builds)[r % 2:] + list(builds)[:r % 2]
        for b in order:
            kern[b].append(kernel_rows(run([str(builds[b] / "bench_kernels"), "--heads-only", "--reps", str(args.reps)],
                                           out / f"kernels_{b}.txt" if out else None)))
        for s in args.shapes:
            rot = variants[r % 3:] + variants[:r % 3]
            for b, head in rot:
                o = run([str(builds[b] / "bench_decode"), "--shape", s, "--threads", str(args.threads), "--head", head,
                         "--prompt", str(args.prompt), "--decode", str(args.decode), "--keep", str(work / f"{s}.gguf")], out / f"decode_{s}.txt" if out else None)
                for t, tps in decode_tps(o).items():
                    dec[(s, (b, head), t)].append(tps)
                    print(f"round {r + 1}: {s} {t} thr, {b} build, {head} head: {tps:.2f} tok/s", flush=True)
    med = statistics.median
    for b in builds:
        probe = {t: med(v for rows in kern[b] for k, v in rows.items() if k[0] == "bandwidth" and k[2] == t) for t in (1, 2)}
        print(f"probe in the {b} build's runs: " + ", ".join(f"{t} thr {v:.1f} GB/s busy" for t, v in probe.items()))
    print(f"\nkernels, busy GB/s (median of {args.rounds} rounds; probe = read 1 GiB in the same process)")
    keys = sorted({k for rows in kern["new"] for k in rows if k[0] != "bandwidth"}, key=lambda k: (k[1], k[2], k[0]))
    print(f"{'head':<9} {'shape':<18} {'thr':>3} {'old':>7} {'new':>7} {'new/old':>8} {'new % probe':>11}")
    for k in keys:
        old = [rows.get(k, float("nan")) for rows in kern["old"]]
        new = [rows[k] for rows in kern["new"]]
        probe = [rows[("bandwidth", next(x[1] for x in rows if x[0] == "bandwidth"), k[2])] for rows in kern["new"]]
        print(f"{k[0]:<9} {k[1]:<18} {k[2]:>3} {med(old):7.2f} {med(new):7.2f} "
              f"{med(n / o for n, o in zip(new, old)):8.2f} {100 * med(n / b for n, b in zip(new, probe)):10.0f}%")
    print(f"\ndecode tok/s (median of {args.rounds} rounds; ratios: median of per-round ratios)")
    for s, t in ((s, t) for s in args.shapes for t in nts):
        oq, nq, nf = (dec[(s, v, t)] for v in variants)
        print(f"{s} {t} thr: old q4 {med(oq):.2f}, new q4 {med(nq):.2f}, f16 {med(nf):.2f}; new/old q4 "
              f"{med(n / o for n, o in zip(nq, oq)):.3f}, new q4/f16 {med(n / f for n, f in zip(nq, nf)):.3f}, "
              f"old q4/f16 {med(o / f for o, f in zip(oq, nf)):.3f}")


if __name__ == "__main__":
    main()
