# In-process profile of the continuous scheduler (issue #15 follow-up): time inside Slots.step() (C++, GIL released)
# against the Python work between steps, and prefill steps against decode-only steps.
# Usage: PYTHONPATH=. python profile_steps.py JOBS MODEL.gguf   (MODEL: bench/serve_throughput.py random `small`)
import asyncio, threading, time, sys, random
from bllama.runtime import Runtime
from bllama.sampling import SamplingParams
from bllama.serve.continuous import ContinuousScheduler
from bllama.serve.scheduler import Job
from bllama.serve.metrics import Metrics
from bllama.train.corpus import default_corpus_text

rt = Runtime.load(sys.argv[2], threads=2, max_sequences=8)
sched = ContinuousScheduler(rt, Metrics(), max_queue=256)
# instrument
step_t = [0.0]; step_n = [0]; loop_t0 = [None]
orig_step = sched.slots.step
def step():
    t = time.perf_counter(); r = orig_step(); step_t[0] += time.perf_counter() - t; step_n[0] += 1; return r
joining=set(); pre=[]; dec=[]
orig_add = sched.slots.add
def add(*a, **k):
    s_ = orig_add(*a, **k); joining.add(s_); return s_
def step2():
    t = time.perf_counter(); r = orig_step(); d = time.perf_counter() - t
    step_t[0] += d; step_n[0] += 1
    hit = [e for e in r if e.slot in joining]
    for e in hit:
        if e.token is not None: joining.discard(e.slot)
    (pre if hit else dec).append((d, sum(e.token is not None and e.slot not in [h.slot for h in hit] for e in r)))
    return r
sched.slots.add = add
sched.slots.step = step2
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
done = threading.Event(); left = [0]
q = asyncio.Queue()
from bllama.serve.handoff import Mailbox
box = Mailbox(loop)
def sink(i, kind, value):
    box.post(q, (i, kind, value))
    if kind in ("done", "error"):
        left[0] -= 1
        if left[0] == 0: done.set()
words = default_corpus_text(max_chars=200000).split()
rng = random.Random(0)
jobs = []
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 32):
    n = rng.randint(8, 64); s = rng.randrange(len(words) - n)
    ids = rt.encode(" ".join(words[s:s+n]))
    jobs.append(Job(ids, {"max_new_tokens": rng.randint(8, 48), "sampling": SamplingParams(), "stop": [], "logprobs": None}, True, sink))
left[0] = len(jobs)
c0 = time.process_time(); t0 = time.perf_counter()
sched.start(); sched.submit(jobs)
done.wait()
wall = time.perf_counter() - t0
toks = sched.metrics.completion_tokens
print(f"wall {wall:.2f}s cpu {time.process_time()-c0:.2f}s steps {step_n[0]} step time {step_t[0]:.2f}s ({step_t[0]/step_n[0]*1e3:.2f} ms/step) other {wall-step_t[0]:.2f}s tokens {toks} tok/s {toks/wall:.1f}")
sched.close()

import statistics
print(f"steps with a prefill chunk: {len(pre)}, {sum(d for d,_ in pre):.2f}s, median {statistics.median(d for d,_ in pre)*1e3:.1f} ms; decode-only steps: {len(dec)}, {sum(d for d,_ in dec):.2f}s, median {statistics.median(d for d,_ in dec)*1e3:.1f} ms (rows median {statistics.median(n for _,n in dec)})")
