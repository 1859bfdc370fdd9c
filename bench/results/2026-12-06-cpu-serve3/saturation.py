# In-process saturation check for mixed steps (issue #15): JOBS greedy requests queued at once (no HTTP), run by the
# static scheduler (generate_ids_batch) and the continuous one (Slots), alternated REPEATS times in one process.
# Reports wall and process CPU per run, tokens, and for continuous the steps that carried prompt rows against the
# decode-only ones. Usage: PYTHONPATH=. python saturation.py MODEL.gguf [JOBS] [REPEATS] [STEP_TOKENS]
import random, statistics, sys, threading, time

from bllama.runtime import Runtime
from bllama.sampling import SamplingParams
from bllama.serve.continuous import ContinuousScheduler
from bllama.serve.metrics import Metrics
from bllama.serve.scheduler import Job, StaticScheduler
from bllama.train.corpus import default_corpus_text

path = sys.argv[1]
n_jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 64
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
step_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 0
rt = Runtime.load(path, threads=2, max_sequences=8)
words = default_corpus_text(max_chars=200000).split()


def jobs_for(sink):
    rng = random.Random(0)
    out = []
    for _ in range(n_jobs):
        n = rng.randint(8, 64)
        s = rng.randrange(len(words) - n)
        ids = rt.encode(" ".join(words[s:s + n]))
        opts = {"max_new_tokens": rng.randint(8, 48), "sampling": SamplingParams(), "stop": [], "logprobs": None}
        out.append(Job(ids, opts, False, sink))
    return out


def run(kind):
    done, left = threading.Event(), [n_jobs]

    def sink(i, what, value):
        if what in ("done", "error"):
            left[0] -= 1
            if left[0] == 0:
                done.set()

    metrics = Metrics()
    sched = (StaticScheduler if kind == "static" else ContinuousScheduler)(rt, metrics, max_queue=1024)
    pre, dec = [], []
    if kind == "continuous":
        if step_tokens:
            sched.slots.step_tokens = step_tokens
        orig = sched.slots.step

        def step():
            t = time.perf_counter()
            r = orig()
            d = time.perf_counter() - t
            (pre if any(e.token is None and e.finish_reason is None for e in r) or
             any(e.slot in joining for e in r) else dec).append(d)
            for e in r:
                joining.discard(e.slot)
            return r
        joining = set()
        orig_add = sched.slots.add

        def add(*a, **k):
            s = orig_add(*a, **k)
            joining.add(s)
            return s
        sched.slots.add, sched.slots.step = add, step
    jobs = jobs_for(sink)
    c0, t0 = time.process_time(), time.perf_counter()
    sched.start()
    sched.submit(jobs)
    done.wait()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sched.close()
    if kind == "continuous":  # the Runtime's one Slots object: back to its own methods
        del sched.slots.add, sched.slots.step
    toks = metrics.completion_tokens
    extra = ""
    if pre:
        extra = (f"  steps with prompt rows {len(pre)} (median {1e3 * statistics.median(pre):.1f} ms), decode-only "
                 f"{len(dec)} (median {1e3 * statistics.median(dec):.1f} ms)" if dec else f"  steps {len(pre)}")
    print(f"{kind:>10}: wall {wall:.2f}s cpu {cpu:.2f}s tokens {toks} tok/s {toks / wall:.1f}{extra}", flush=True)
    return wall, cpu


res = {"static": [], "continuous": []}
for r in range(repeats):
    for kind in (("static", "continuous") if r % 2 == 0 else ("continuous", "static")):
        res[kind].append(run(kind))
for kind, v in res.items():
    print(f"{kind:>10} median wall {statistics.median(w for w, _ in v):.2f}s cpu {statistics.median(c for _, c in v):.2f}s")
ratios = [s[0] / c[0] for s, c in zip(res["static"], res["continuous"])]
print(f"static wall / continuous wall per repeat: {[round(x, 3) for x in ratios]}")
