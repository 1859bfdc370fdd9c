"""The peers bench/peer_compare.py runs against us: how each is built, fed our weights and timed.

Every peer is built OUTSIDE this repository from a git URL or a local source folder, CPU only, under `nice -n 10`
with -j2, and only the targets the comparison needs. A peer that cannot be built or cannot load its file raises
PeerUnavailable with the reason; peer_compare.py reports it in the table and goes on with the others.

    ik_llama.cpp  llama-bench + llama-quantize; our I2_S export requantized to IQ2_BN (its TQ2_0 requantize
                  crashes); decode: `-gp 128,64` (64 tokens timed right after a 128-token prompt).
    llama.cpp     llama-bench + llama-quantize; our TQ2_0 file itself (f16 head) or requantized by its
                  llama-quantize with only the head changed (q4/q8: the ternary tensors are copied, checked);
                  decode derived, see run_llama_bench.
    bitnet.cpp    a microsoft/BitNet checkout WITH its llama.cpp submodule; llama-bench + llama-quantize built
                  with clang and its I2_S kernels (no TL1/TL2 lookup tables: those are generated per model); our
                  I2_S export itself (f16 head) or its llama-quantize with only the head changed.

llama.cpp (up to at least 2025-02) and bitnet.cpp (2024-10) know no ReLU^2 architecture: for a ReLU^2 preset (2b4t)
they get the same random codes and tables written under `bitnet` (the SiLU graph). Same bytes, same shapes; the
activation is an elementwise op on the FFN row, noise against the GEMVs, but the function is not ours.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

NICE = ["nice", "-n", "10"]
# The type every head choice maps to in ggml's llama-quantize.
GGML_HEAD = {"f16": "f16", "q4": "q4_0", "q8": "q8_0"}
# Architectures the non-ik peers know (ours are chosen by bllama.convert.gguf_schema.gguf_arch).
PLAIN_ARCHES = ("bitnet",)


class PeerUnavailable(RuntimeError):
    """A peer that cannot be built or run here; the message says why."""


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def quiet(cmd, what: str, cwd=None):
    """Run cmd; on failure raise PeerUnavailable with the last lines of its output."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).strip().splitlines()[-6:]
        raise PeerUnavailable(f"{what} failed (exit {r.returncode}): " + " | ".join(tail))
    return r


def source(src: str, work: Path, name: str, recursive: bool = False) -> Path:
    """A local source folder as is, or a shallow clone of a git URL under work/name."""
    if Path(src).is_dir():
        return Path(src)
    dest = work / name
    if not dest.exists():
        quiet(["git", "clone", "--depth", "1"] + (["--recursive", "--shallow-submodules"] if recursive else [])
              + [src, dest], f"git clone {src}")
    return dest


def cmake_build(src: Path, build: Path, flags, targets, what: str) -> Path:
    bindir = build / "bin"
    if all((bindir / t).exists() for t in targets):
        return bindir
    quiet(NICE + ["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON"] + flags,
          f"{what} cmake")
    quiet(NICE + ["cmake", "--build", build, "-j2", "--target"] + list(targets), f"{what} build")
    return bindir


def build_ik(src: str, work: Path) -> Path:
    """ik_llama.cpp; flash attention only for the default KV types (with it off entirely, libggml still calls its
    kernels and llama-bench fails to link)."""
    return cmake_build(source(src, work, "ik_llama.cpp"), work / "ik-build",
                       ["-DGGML_CUDA=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_CURL=OFF",
                        "-DGGML_IQK_FA_ALL_QUANTS=OFF"], ["llama-bench", "llama-quantize"], "ik_llama.cpp")


def build_llamacpp(src: str, work: Path) -> Path:
    return cmake_build(source(src, work, "llama.cpp"), work / "llama-build",
                       ["-DGGML_CUDA=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_CURL=OFF"],
                       ["llama-bench", "llama-quantize"], "llama.cpp")


def build_bitnet(src: str, work: Path) -> Path:
    """bitnet.cpp's I2_S build. Its ggml sources include bitnet-lut-kernels.h unconditionally, a file its
    setup_env.py generates; with TL2 off the header is compiled but unused, so we generate it the way setup_env.py
    does on x86 (the bitnet_b1_58-large parameters) when the checkout has none."""
    root = source(src, work, "BitNet", recursive=True)
    if not (root / "3rdparty" / "llama.cpp" / "CMakeLists.txt").exists():
        raise PeerUnavailable(f"{root}/3rdparty/llama.cpp is empty: bitnet.cpp's llama.cpp fork is a git submodule "
                              "and must be checked out (git submodule update --init)")
    for cc in ("clang", "clang++"):
        if subprocess.run(["which", cc], capture_output=True).returncode != 0:
            raise PeerUnavailable(f"bitnet.cpp's CMakeLists requires clang; {cc} is not on PATH")
    if not (root / "include" / "bitnet-lut-kernels.h").exists():
        codegen = root / "utils" / "codegen_tl2.py"
        if not codegen.exists():
            raise PeerUnavailable(f"{root} has neither include/bitnet-lut-kernels.h nor utils/codegen_tl2.py")
        import sys

        quiet([sys.executable, "utils/codegen_tl2.py", "--model", "bitnet_b1_58-large", "--BM", "256,128,256",
               "--BK", "96,192,96", "--bm", "32,32,32"], "bitnet.cpp codegen_tl2.py", cwd=root)
    return cmake_build(root, work / "bitnet-build",
                       ["-DBITNET_X86_TL2=OFF", "-DBITNET_ARM_TL1=OFF", "-DCMAKE_C_COMPILER=clang",
                        "-DCMAKE_CXX_COMPILER=clang++", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_CURL=OFF"], ["llama-bench", "llama-quantize"], "bitnet.cpp")


def tensor_types(path: Path) -> dict:
    """{tensor name: ggml type name}, read by our engine's GGUF parser (gguf-py refuses I2_S, type 36)."""
    from bllama import _engine

    return {t["name"]: t["type"] for t in _engine.gguf_tensors(str(path))}


def plain_arch_twin(preset: str, work: Path, weight_type: str, ours: Path) -> Path:
    """`ours` if its architecture is one every peer knows, else the same random codes and tables written under
    `bitnet` (SiLU): the generator draws the same numbers whatever the activation."""
    from bllama.convert.gguf_schema import gguf_arch
    from bllama.model.config import bLlamaConfig
    from bllama.tools.bench import write_random_gguf

    arch = gguf_arch(bLlamaConfig.preset(preset), weight_type)  # what write_random_gguf wrote `ours` under
    if arch in PLAIN_ARCHES:
        return ours
    twin = work / f"{preset}-{weight_type}-bitnet-arch.gguf"
    if not twin.exists():
        cfg = dataclasses.replace(bLlamaConfig.preset(preset), activation="silu")
        write_random_gguf(cfg, twin, weight_type=weight_type)
    return twin


def requantize_head(quantize: Path, src: Path, out: Path, head: str, ftype: str, ternary: str, what: str) -> Path:
    """`src` with only the head (the tied token embedding; output.weight where there is one) changed to `head`;
    every other tensor keeps its type (checked, so a quantizer rule cannot silently change the ternary weights)."""
    if head == "f16":
        return src
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        quiet([quantize, "--allow-requantize", "--token-embedding-type", GGML_HEAD[head], "--output-tensor-type",
               GGML_HEAD[head], src, tmp, ftype, "2"], f"{what} llama-quantize ({head} head)")
        before, after = tensor_types(src), tensor_types(tmp)
        want = GGML_HEAD[head].upper()
        for name, typ in after.items():
            expect = want if name in ("token_embd.weight", "output.weight") else before.get(name)
            if typ != expect:
                tmp.unlink()
                raise PeerUnavailable(f"{what} llama-quantize made {name} {typ}, not {expect}")
        if sorted(after) != sorted(before):
            tmp.unlink()
            raise PeerUnavailable(f"{what} llama-quantize changed the tensor list")
        tmp.rename(out)
    return out


def run_llama_bench(bindir: Path, model: Path, threads: int, decode: str, extra=()) -> tuple:
    """(prompt tok/s, decode tok/s) from one llama-bench call: pp128, then 64 tokens decoded after a 128-token
    prompt. decode="gp": ik_llama.cpp's -gp 128,64 times only those 64 tokens. decode="pg": versions without -gp
    time prompt + 64 tokens together (-pg 128,64); the 64 tokens' time is that minus the same call's pp128 time
    (both are one run after llama-bench's warm-up), so the figure is the same quantity, derived."""
    flag = "-gp" if decode == "gp" else "-pg"
    r = subprocess.run([str(bindir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "128", "-n", "0",
                        flag, "128,64", "-r", "1", "-o", "json"] + list(extra), capture_output=True, text=True)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-4:]
        raise PeerUnavailable(f"llama-bench failed (exit {r.returncode}): " + " | ".join(tail))
    pp_s = pp = tg = pg_s = None
    for row in json.loads(r.stdout):
        if row.get("n_gen", 0) == 0:
            pp, pp_s = float(row["avg_ts"]), float(row["avg_ns"]) / 1e9
        elif decode == "gp" or row.get("n_prompt", 0) == 0:
            tg = float(row["avg_ts"])
        else:
            pg_s = float(row["avg_ns"]) / 1e9
    if decode == "pg":
        if pp_s is None or pg_s is None or pg_s <= pp_s:
            raise PeerUnavailable(f"llama-bench -pg gave no usable decode time (pp {pp_s} s, pg {pg_s} s)")
        tg = 64 / (pg_s - pp_s)
    if pp is None or tg is None:
        raise PeerUnavailable(f"llama-bench output lacked a pp or tg row: {r.stdout[:200]}")
    return pp, tg
