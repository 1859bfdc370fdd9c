"""Fuzzes model files through the whole Python path: Runtime.load, then a short generate and a chat.

    python bench/fuzz_models.py [--seconds 300] [--seed 0] [--timeout 20]

Two small base files (SentencePiece from bllama's own export, byte-level BPE as bitnet.cpp writes it, both with a
chat template) are mutated: bytes flipped in the header and metadata, in tensor data, in the embedded tokenizers and
token strings; the file truncated; numeric metadata set to extremes; the chat template replaced by hostile ones.
Each case runs in a worker subprocess (address space capped at 4 GiB), so a segfault or abort is caught and
counted; a case past --timeout is a hang. Counts printed at the end:
  tried, ok (a correct run), clean error (a Python exception of the kinds a bad file should give), crash (the
  worker died), hang, wrong (a run broke an invariant, or an unexpected exception type, both printed).
tests/test_fuzz_models.py runs a bounded share of the same cases in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bllama, not an installed one
CHAT_TEMPLATE_SIZE = 640  # templates are written padded to this size, so a mutation can replace one in place
BASE_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
HOSTILE_TEMPLATES = [
    "{{ 'a' * 10**9 }}", "{% for i in range(10**9) %}x{% endfor %}", "{{ 10 ** 1000000000 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set a = 'x' * 1000 %}" + "{% set a = a ~ a ~ a ~ a ~ a ~ a ~ a ~ a %}" * 8 + "{{ a }}",
    "{{ 'a' | center(1000000000) }}", "{{ '%999999999s' % 'a' }}", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ raise_exception('no') }}", "{% for m in messages %}",
    "{{ messages[0]['content'] * 100000 }}", "{{ bos_token }}{{ messages | tojson }}{{ eos_token }}",
    "<|eot_id|><|begin_of_text|>{{ messages[0].content }}<|end_of_text|>", "", "{{ undefined_thing.x.y }}",
    "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "{{ (messages | list)[5] }}",
]


def padded_template(t: str) -> str | None:
    pad = CHAT_TEMPLATE_SIZE - len(t) - len("{##}")
    return None if pad < 0 else t + "{#" + "." * pad + "#}"


# ---- base files ------------------------------------------------------------------------------------------------
def make_bases(out: Path) -> list[Path]:
    """A SentencePiece file (export_gguf of a random tiny model) and a byte-level BPE one (bitnet.cpp's layout)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch

    from bllama import bLlama, bLlamaConfig
    from bllama.convert.gguf_export import export_gguf
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from bllama.train.corpus import default_corpus_text
    from test_i2s import _weights, llama3_style_tokenizer, write_file

    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text(default_corpus_text(max_chars=50_000), encoding="utf-8")
    tok = SentencePieceTokenizer(train_sentencepiece([str(corpus)], str(out / "sp"), vocab_size=512))
    tok.chat_template = padded_template(BASE_TEMPLATE.replace("<|start_header_id|>", "[").replace(
        "<|end_header_id|>", "]").replace("<|eot_id|>", "{{ eos_token }}"))
    torch.manual_seed(0)
    model = bLlama(bLlamaConfig(vocab_size=tok.vocab_size, hidden_size=256, num_layers=2, num_heads=4,
                                num_kv_heads=2, ffn_size=512, seq_len=64))
    model.quantize_weights_to_ternary()
    sp = export_gguf(model, tok, out / "sp.gguf")
    bpe = write_file(out / "bpe.gguf", _weights(), "tq2_0", "bitnet-b1.58", llama3_style_tokenizer(), False,
                     chat_template=padded_template(BASE_TEMPLATE))
    return [Path(sp), Path(bpe)]


# ---- mutations -------------------------------------------------------------------------------------------------
def _regions(data: bytes) -> dict:
    """Byte ranges worth aiming at: the header + metadata, the tensor data, the tokenizer blobs, the template."""
    import gguf

    with tempfile.NamedTemporaryFile(suffix=".gguf") as fh:
        fh.write(data)
        fh.flush()
        r = gguf.GGUFReader(fh.name)
        meta_end = int(r.data_offset)
        numeric = []
        for f in r.fields.values():
            if len(f.types) == 1 and f.types[0] not in (gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY):
                part = f.parts[f.data[0]]
                numeric.append((int(part.ctypes.data - r.data.ctypes.data) if hasattr(r, "data") else None,
                                part.dtype.str, f.name))
    regions = {"meta": (0, meta_end), "tensors": (meta_end, len(data))}
    for name, needle in (("template", b"{{ bos_token }}"), ("hf_json", b'{"version"'), ("tokens", b"<unk>"),
                         ("tokens", b"<|begin_of_text|>"), ("sp_model", b"\x0a\x0c\x0a\x05<unk>")):
        i = data.find(needle)
        if i >= 0:
            regions.setdefault(name, (i, min(len(data), i + 4096)))
    regions["numeric"] = [(o, d, n) for o, d, n in numeric if o is not None]
    return regions


def mutate(base: bytes, regions: dict, rng: random.Random) -> tuple[bytes, str]:
    import numpy as np

    data = bytearray(base)
    kind = rng.choice(["flip_meta", "flip_meta", "flip_tensors", "truncate", "numeric", "numeric", "template",
                       "template", "tokenizer", "tokenizer"])
    if kind == "tokenizer":
        names = [k for k in ("hf_json", "tokens", "sp_model") if k in regions]
        name = rng.choice(names)
        lo, hi = regions[name]
        for _ in range(rng.choice([1, 2, 8, 64])):
            data[rng.randrange(lo, hi)] = rng.randrange(256)
        return bytes(data), f"tokenizer bytes ({name})"
    if kind in ("flip_meta", "flip_tensors"):
        lo, hi = regions["meta" if kind == "flip_meta" else "tensors"]
        n = rng.choice([1, 1, 2, 4, 16])
        for _ in range(n):
            data[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
        return bytes(data), f"{kind} x{n}"
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        return bytes(data[:cut]), f"truncate at {cut}"
    if kind == "numeric" and regions["numeric"]:
        off, dtype, name = rng.choice(regions["numeric"])
        dt = np.dtype(dtype)
        if dt.kind == "f":
            v = rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e38, 1e-38])
        elif dt.kind == "b":
            v = rng.choice([0, 1, 2, 255])
        else:
            info = np.iinfo(dt)
            v = rng.choice([0, 1, 2, 3, 7, info.max, info.min, info.max // 2, 255, 256, 65536, (1 << 22) + 1])
        data[off:off + dt.itemsize] = np.array([v]).astype(dt).tobytes()
        return bytes(data), f"{name} = {v}"
    if "template" in regions:
        lo, _ = regions["template"]
        t = padded_template(rng.choice(HOSTILE_TEMPLATES))
        if t is not None:
            data[lo:lo + CHAT_TEMPLATE_SIZE] = t.encode()
            return bytes(data), f"template {t[:40]!r}"
    return bytes(data), "unchanged"


# ---- running a case (inside the worker) ------------------------------------------------------------------------
CLEAN = ("ValueError", "IndexError", "KeyError", "OSError", "FileNotFoundError", "MemoryError", "UnicodeDecodeError",
         "UnicodeError", "ChatTemplateError", "UnsafeCheckpointError", "TypeError", "RuntimeError", "HFImportError",
         "TemplateLimitError", "OverflowError", "RecursionError")


def run_case(path: str) -> tuple[str, str]:
    from bllama.runtime import Runtime

    try:
        rt = Runtime.load(path, threads=1)
        n = 4
        ids = rt.encode("Hello there")
        out = rt._engine.generate(ids, n, stop_ids=[])
        if len(out) != min(n, rt.context_length - len(ids)) and len(ids) < rt.context_length:
            return "wrong", f"generate gave {len(out)} ids for max_new_tokens={n}"
        if any(not 0 <= t < rt.vocab_size for t in out):
            return "wrong", f"generated ids outside the vocabulary: {out}"
        if not isinstance(rt.generate("Hello there", max_new_tokens=3), str):
            return "wrong", "generate returned no string"
        if getattr(rt.tokenizer, "chat_template", None):
            reply = rt.chat([{"role": "user", "content": "Hi <|eot_id|></s>"}], max_new_tokens=3)
            if not isinstance(reply, str):
                return "wrong", "chat returned no string"
        return "ok", ""
    except Exception as e:  # noqa: BLE001 - classified
        kind = type(e).__name__
        return ("clean" if kind in CLEAN else "wrong"), f"{kind}: {str(e)[:200]}"


def worker() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a huge claimed size is a MemoryError, not an OOM
    for line in sys.stdin:
        kind, detail = run_case(line.strip())
        print(json.dumps([kind, detail]), flush=True)


# ---- the driver ------------------------------------------------------------------------------------------------
class Pool:
    """One worker process at a time, restarted after a crash or a hang."""

    def __init__(self, timeout: float):
        self.timeout, self.proc = timeout, None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})

    def run(self, path: str) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else None
        if line:
            return tuple(json.loads(line))
        if not ready:
            self.close()
            return "hang", f"no answer in {self.timeout:g} s"
        code = self.proc.wait()
        self.proc = None
        return "crash", f"worker died with {code}"

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def fuzz(work: Path, seconds: float, seed: int, timeout: float, max_cases: int | None = None,
         log=print) -> dict:
    bases = make_bases(work / "bases")
    inputs = [(b.read_bytes(), None) for b in bases]
    inputs = [(d, _regions(d)) for d, _ in inputs]
    rng = random.Random(seed)
    counts = {"tried": 0, "ok": 0, "clean": 0, "crash": 0, "hang": 0, "wrong": 0}
    failures = []
    pool = Pool(timeout)
    end = time.monotonic() + seconds
    case = work / "case.gguf"
    try:
        while time.monotonic() < end and (max_cases is None or counts["tried"] < max_cases):
            base, regions = rng.choice(inputs)
            data, what = mutate(base, regions, rng)
            if rng.random() < 0.15 and len(data) == len(base):  # a second mutation on top (regions still hold)
                data, more = mutate(data, regions, rng)
                what += " + " + more
            case.write_bytes(data)
            kind, detail = pool.run(str(case))
            counts["tried"] += 1
            counts[kind] += 1
            if kind in ("crash", "hang", "wrong"):
                keep = work / f"failure-{counts['tried']}.gguf"
                keep.write_bytes(data)
                failures.append(f"{kind}: {what}: {detail} (kept as {keep})")
                log(failures[-1])
    finally:
        pool.close()
    counts["failures"] = failures
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20, help="seconds a case may take before it counts as a hang")
    ap.add_argument("--work", default=None, help="folder for the base files and failing cases (default: a temp)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bllama-fuzz-"))
    t0 = time.monotonic()
    c = fuzz(work, args.seconds, args.seed, args.timeout)
    print(f"tried {c['tried']} in {time.monotonic() - t0:.0f} s: ok {c['ok']}, clean error {c['clean']}, "
          f"crash {c['crash']}, hang {c['hang']}, wrong answer {c['wrong']} (work folder {work})")


if __name__ == "__main__":
    main()
