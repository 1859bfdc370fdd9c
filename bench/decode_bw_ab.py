"""Decode A/B against the same-run bandwidth probe: a baseline commit against this working tree, alternating.

    python bench/decode_bw_ab.py [--base REF] [--rounds 5] [--threads 2] [--heads f16,q4] [--shape 1.7b]
                                 [--decode 64] [--out DIR] [--work DIR] [--jobs 2]

Builds bench_decode twice (REF, default HEAD~N as given, from `git archive`, and the working tree) in --work (a
temporary folder by default), writes one random model of the shape, then for each round runs, in a rotating order,
the baseline, the candidate and the candidate with BLLAMA_HUGE_PAGES=0 (its 4 KiB-page variant), each head, at
--threads, plus the bandwidth probe (bench/membw.cpp, 2 MiB and 4 KiB pages) once per round. Prints one table of
medians: decode tok/s, the candidate / baseline ratio (median of the per-round ratios, with their range), the bytes
a token reads (the candidate's count: weights the GEMVs read, head, KV cache) and that as a share of the probe.
About 4-6 minutes on the 2-core VM with the defaults (two builds of the engine and bench_decode included).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\s*(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s", re.M)  # threads, load, prompt, decode, MB
PROBE = re.compile(r"probe: ([\d.]+) GB/s memory read bandwidth \(2 MiB pages; 4 KiB pages: ([\d.]+)\)")


def build(src: Path, build_dir: Path, jobs: int) -> Path:
    subprocess.run(["nice", "-n", "10", "cmake", "-G", "Ninja", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    "-DBLLAMA_BUILD_PYTHON=OFF", "-DBLLAMA_CUDA=OFF", "-DBLLAMA_BUILD_TESTS=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["nice", "-n", "10", "cmake", "--build", str(build_dir), "-j", str(jobs), "--target", "bench_decode"], check=True,
                   stdout=subprocess.DEVNULL)
    return build_dir / "bench_decode"


def run(exe: Path, args: list, env: dict) -> str:
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, env={**os.environ, **env})
    if r.returncode != 0:
        sys.exit(f"{exe} {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="baseline git ref (default HEAD: the tree's uncommitted change)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heads", default="f16,q4")
    ap.add_argument("--shape", default="1.7b")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--out", type=Path, help="also write the raw outputs and the table here")
    ap.add_argument("--work", type=Path, help="build folder (default: a temporary one)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bllama_decode_ab_"))
    work.mkdir(parents=True, exist_ok=True)
    base_src = work / "base-src"
    if not base_src.exists():
        base_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.base], check=True, capture_output=True,
                              text=True).stdout.strip()
    print(f"building baseline {a.base} ({base_rev}) and the working tree in {work}", flush=True)
    exes = {"base": build(base_src, work / "base-build", a.jobs), "cand": build(ROOT, work / "cand-build", a.jobs)}
    arms = [("base", "base", {}), ("cand", "cand", {}), ("cand 4KiB", "cand", {"BLLAMA_HUGE_PAGES": "0"})]
    model = work / f"model-{a.shape}.gguf"
    common = ["--shape", a.shape, "--threads", str(a.threads), "--decode", str(a.decode), "--keep", str(model)]
    if not model.exists():
        run(exes["cand"], common + ["--decode", "1", "--prompt", "1"], {})
    heads = a.heads.split(",")
    tps = {(h, arm[0]): [] for h in heads for arm in arms}
    mb = {}
    probe2m, probe4k, raw = [], [], []
    for r in range(a.rounds):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for h in heads:
            for name, exe, env in order:
                out = run(exes[exe], common + ["--head", h], env)
                raw.append(f"## round {r + 1}, head {h}, {name}\n{out}")
                m = ROW.search(out)
                tps[(h, name)].append(float(m.group(2)))
                if name == "cand":
                    mb[h] = float(m.group(3))
        out = run(exes["cand"], common + ["--head", heads[0], "--decode", "1", "--probe"], {})
        raw.append(f"## round {r + 1}, probe\n{out}")
        p = PROBE.search(out)
        probe2m.append(float(p.group(1)))
        probe4k.append(float(p.group(2)))
        print(f"round {r + 1}: " + ", ".join(f"{h} {n} {tps[(h, n)][-1]:.2f}" for h in heads for n, _, _ in arms) +
              f"; probe {probe2m[-1]:.1f} / {probe4k[-1]:.1f} GB/s", flush=True)
    p2, p4 = statistics.median(probe2m), statistics.median(probe4k)
    lines = [f"bench_decode --shape {a.shape} --threads {a.threads} --decode {a.decode}, {a.rounds} rounds, "
             f"baseline {a.base} ({base_rev}) vs the working tree; medians",
             f"probe (same rounds): {p2:.2f} GB/s with 2 MiB pages, {p4:.2f} GB/s with 4 KiB pages", "",
             "| head | build | decode tok/s | / base (range) | MB read per token | GB/s | % of probe 2 MiB | % of probe 4 KiB |",
             "|---|---|---|---|---|---|---|---|"]
    for h in heads:
        for name, _, _ in arms:
            t = statistics.median(tps[(h, name)])
            ratios = [x / y for x, y in zip(tps[(h, name)], tps[(h, "base")])]
            gbs = t * mb[h] / 1e3
            lines.append(f"| {h} | {name} | {t:.2f} | {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f}) "
                         f"| {mb[h]:.1f} | {gbs:.2f} | {100 * gbs / p2:.1f} | {100 * gbs / p4:.1f} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "ab_raw.txt").write_text("\n".join(raw))
        (a.out / "ab_table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
