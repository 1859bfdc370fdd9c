"""Runtime.slots() (continuous batching) and the kept KV cache of Runtime.generate / chat (prefix reuse), against
one-at-a-time runs of the same random-weight model: a request joining a running batch gets its solo tokens, a kept
cache gives the tokens of a cold one, logprobs are the log-softmax of the raw logits, refusals name the problem."""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import torch

from bllama import Runtime, SamplingParams
from bllama.convert.gguf_export import export_gguf
from bllama.runtime import RuntimeBusyError, SlotEvent, SlotsFullError

from test_runtime import random_model

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, sp_tokenizer):
    torch.manual_seed(7)
    model = random_model(sp_tokenizer.vocab_size, num_layers=2, seq_len=512)
    return str(export_gguf(model, sp_tokenizer, tmp_path_factory.mktemp("slots") / "m.gguf", chat_template=TEMPLATE))


@pytest.fixture(scope="module")
def solo(model_path):
    return Runtime.load(model_path, threads=2)


def alone(rt, ids, n, sampling, stop_ids=()):
    """What one request gets by itself from a cold cache, with its own seed."""
    rt.reset_cache()
    return rt._engine.generate(list(ids), n, stop_ids=list(stop_ids), **sampling.engine_kwargs())


def drive(slots, on_step=None, limit=2000):
    """Steps until idle; per slot: the tokens, finish reason, cached_tokens and the events of its last request."""
    runs = {}
    for step in range(limit):
        if on_step:
            on_step(step, runs)
        events = slots.step()
        if not events and not slots.active():
            return runs
        for ev in events:
            assert isinstance(ev, SlotEvent)
            r = runs.setdefault(ev.slot, {"tokens": [], "finish": None, "events": []})
            assert r["finish"] is None, "an event after the slot's last one"
            r["events"].append(ev)
            if ev.token is not None:
                r["tokens"].append(ev.token)
            r["finish"] = ev.finish_reason
    raise AssertionError("slots never went idle")


def test_requests_joining_a_running_batch_get_their_solo_tokens(model_path, solo):
    rt = Runtime.load(model_path, threads=2, max_sequences=4)
    slots = rt.slots()
    assert slots.capacity == 4 and slots.active() == 0 and rt.slots() is slots
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, solo.vocab_size, (n,), generator=g).tolist()
    reqs = [  # (prompt, sampling, max_new_tokens): a long prompt (several 64-token chunks), mixed settings
        (ids(150), SamplingParams(do_sample=True, temperature=0.9, top_k=30, seed=11), 24),
        (ids(5), SamplingParams(repetition_penalty=1.3), 20),
        (ids(40), SamplingParams(do_sample=True, top_p=0.9, seed=2**40 + 3), 18),
        (ids(3), SamplingParams(), 16),
        (ids(70), SamplingParams(do_sample=True, temperature=1.4, seed=5), 12),  # waits for a free slot
    ]
    want = [alone(solo, p, n, s) for p, s, n in reqs]
    slot_of, pending = {}, list(range(len(reqs)))

    def add(step, runs):
        # A alone for a few steps (its prompt chunks run while nobody decodes), B while A decodes, C and D
        # together, E as soon as a slot frees.
        due = {0: [0], 4: [1], 6: [2, 3]}.get(step, [])
        if step > 6 and pending == [4] and slots.active() < slots.capacity:
            due = [4]
        for i in due:
            p, s, n = reqs[i]
            slot = slots.add(p, s, n)
            runs.pop(slot, None)
            slot_of[i] = slot
            pending.remove(i)

    done = {}

    def on_step(step, runs):
        for i, slot in slot_of.items():
            if i not in done and slot in runs and runs[slot]["finish"]:
                done[i] = runs[slot]
        add(step, runs)

    runs = drive(slots, on_step)
    on_step(-1, runs)
    assert not pending
    for i, (p, s, n) in enumerate(reqs):
        assert done[i]["tokens"] == want[i], i
        assert done[i]["finish"] == "length"
        evs = done[i]["events"]
        assert all(e.cached_tokens == 0 and e.logprob is None and e.top_logprobs == () for e in evs)
        assert sum(e.token is None for e in evs) == (len(p) - 1) // 64  # one event per prompt chunk before the last


def test_stop_ids_length_cancel_and_zero_tokens(model_path, solo):
    rt = Runtime.load(model_path, threads=2, max_sequences=2)
    slots = rt.slots()
    p = rt.encode("the quick brown fox")
    greedy = alone(solo, p, 12, SamplingParams())
    stop = greedy[4]
    want = alone(solo, p, 12, SamplingParams(), stop_ids=[stop])
    assert len(want) < 12
    s = slots.add(p, None, 12, stop_ids=[stop])
    z = slots.add(p, SamplingParams(), 0)  # nothing to generate: one "length" event, nothing run
    runs = drive(slots)
    assert runs[s]["tokens"] == want and runs[s]["finish"] == "stop"
    assert runs[s]["events"][-1].token is None  # the stop id is not part of the reply
    assert runs[z]["tokens"] == [] and runs[z]["finish"] == "length" and len(runs[z]["events"]) == 1

    c = slots.add(p, None, 50)
    slots.step()
    slots.step()
    slots.cancel(c)
    assert slots.active() == 0 and slots.step() == []
    with pytest.raises(IndexError, match="slot 2"):
        slots.cancel(2)


def test_full_slots_busy_runtime_and_bad_requests(model_path):
    rt = Runtime.load(model_path, threads=2, max_sequences=2)
    slots = rt.slots()
    p = rt.encode("hello")
    for bad, exc, match in [
        (dict(ids=[]), ValueError, "empty"),
        (dict(ids=[1, rt.vocab_size]), IndexError, "index 1 is out of range"),
        (dict(ids=[-1]), IndexError, "out of range"),
        (dict(ids=[1.5]), TypeError, "not an integer"),
        (dict(max_new_tokens=rt.context_length), IndexError, "exceeds the context length"),
        (dict(max_new_tokens=2**70), IndexError, "exceeds the context length"),
        (dict(max_new_tokens=-1), ValueError, ">= 0"),
        (dict(logprobs=21), ValueError, r"logprobs must be an integer in \[0, 20\]"),
        (dict(sampling=dict(top_p=0.0)), ValueError, "top_p"),
    ]:
        args = dict(ids=p, sampling=None, max_new_tokens=4)
        args.update(bad)
        with pytest.raises(exc, match=match):
            if isinstance(args["sampling"], dict):
                args["sampling"] = SamplingParams(**args["sampling"])
            slots.add(**args)
    assert slots.active() == 0
    # A top_k past int32 means "every candidate", as it does for generate.
    slots.add(p, SamplingParams(do_sample=True, top_k=2**40, seed=0), 2)
    slots.add(p, None, 2)
    with pytest.raises(SlotsFullError, match="every slot is busy"):
        slots.add(p, None, 2)
    # One-shot calls would overwrite the running slots' caches: refused, not queued.
    with pytest.raises(RuntimeBusyError, match="unfinished request"):
        rt.generate("hello", max_new_tokens=2)
    with pytest.raises(RuntimeBusyError):
        rt.logits(p)
    drive(slots)
    assert rt.generate("hello", max_new_tokens=2) is not None  # free again


def test_prefix_reuse_in_slots_equals_a_cold_cache(model_path, solo):
    rt = Runtime.load(model_path, threads=2, max_sequences=3)
    slots = rt.slots()
    a, b = rt.encode("the lazy dog sleeps in the sun all day long"), rt.encode("a quick brown fox")
    sa = slots.add(a, SamplingParams(do_sample=True, seed=4), 10)
    sb = slots.add(b, SamplingParams(), 8)
    first = drive(slots)
    a2 = a + first[sa]["tokens"] + rt.encode(" and then it wakes up")[1:]
    s2 = SamplingParams(do_sample=True, temperature=0.7, seed=9)
    sa2 = slots.add(a2, s2, 12, logprobs=3)
    assert sa2 == sa  # the slot holding the longest shared prefix
    sb2 = slots.add(b, SamplingParams(), 8)
    assert sb2 == sb
    second = drive(slots)
    assert second[sa]["tokens"] == alone(solo, a2, 12, s2)
    assert {e.cached_tokens for e in second[sa]["events"]} == {len(a) + len(first[sa]["tokens"]) - 1}
    assert second[sb]["tokens"] == first[sb]["tokens"]
    assert {e.cached_tokens for e in second[sb]["events"]} == {len(b) - 1}  # the last prompt token always runs


def test_logprobs_are_the_raw_log_softmax(model_path, solo):
    rt = Runtime.load(model_path, threads=2, max_sequences=2)
    slots = rt.slots()
    p = rt.encode("the quick brown fox")
    s = SamplingParams(do_sample=True, temperature=1.5, repetition_penalty=1.4, seed=3)  # changes the sampled row
    a = slots.add(p, s, 6, logprobs=4)
    b = slots.add(p, s, 6, token_logprob=True)
    runs = drive(slots)
    assert runs[a]["tokens"] == runs[b]["tokens"] == alone(solo, p, 6, s)
    seq = list(p)
    for ea, eb in zip(runs[a]["events"], runs[b]["events"]):
        logits = solo.logits(seq)[-1].astype(np.float64)
        logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
        assert ea.logprob == pytest.approx(logp[ea.token], abs=1e-5) and eb.logprob == ea.logprob
        assert eb.top_logprobs == ()
        best = np.argsort(-logp, kind="stable")[:4]
        assert [t for t, _ in ea.top_logprobs] == best.tolist()
        assert [lp for _, lp in ea.top_logprobs] == pytest.approx(logp[best].tolist(), abs=1e-5)
        seq.append(ea.token)


def test_runtime_chat_runs_only_the_new_turn(model_path):
    cold = Runtime.load(model_path, threads=2)
    for sampling in (SamplingParams(), SamplingParams(do_sample=True, temperature=0.8, seed=3)):
        warm = Runtime.load(model_path, threads=2)
        msgs, previous = [{"role": "user", "content": "Hello, who are you?"}], []
        for turn in range(4):
            ids = warm.chat_prompt_ids(msgs)
            cold.reset_cache()
            want = cold.chat(msgs, max_new_tokens=10, sampling=sampling)
            assert cold.stats["cached_tokens"] == 0
            got = warm.chat(msgs, max_new_tokens=10, sampling=sampling)
            assert got == want, turn
            # The history re-encodes to the previous prompt's ids (this template): at least those come from the cache,
            # plus what of the reply re-encodes to the same ids.
            assert ids[:len(previous)] == previous
            assert len(previous) <= warm.stats["cached_tokens"] < len(ids), (turn, warm.stats, len(ids))
            assert warm.stats["prompt_tokens"] == len(ids)
            previous = ids
            msgs = msgs + [{"role": "assistant", "content": got}, {"role": "user", "content": f"Tell me more, {turn}."}]
        warm.reset_cache()
        assert warm.chat(msgs, max_new_tokens=10, sampling=sampling) == cold.chat(msgs, max_new_tokens=10,
                                                                                    sampling=sampling)
        assert warm.stats["cached_tokens"] == 0


@pytest.mark.parametrize("budget", [1, 5, 19, 100])
def test_mixed_steps_under_a_token_budget_keep_solo_tokens(model_path, solo, budget):
    """Several requests join at once while others decode; the step's budget (odd, smaller than the decoding slots,
    larger than max_batch allows) changes only when prompt rows run, never a token or a logprob."""
    rt = Runtime.load(model_path, threads=2, max_sequences=4)
    slots = rt.slots()
    assert slots.step_tokens == 64  # the prompt chunk (max_batch) by default
    slots.step_tokens = budget
    assert slots.step_tokens == budget
    g = torch.Generator().manual_seed(5)
    ids = lambda n: torch.randint(3, solo.vocab_size, (n,), generator=g).tolist()
    reqs = [  # (prompt, sampling, max_new_tokens, logprobs)
        (ids(9), SamplingParams(repetition_penalty=1.2), 14, 0),
        (ids(2), SamplingParams(do_sample=True, temperature=1.1, seed=6), 18, 2),
        (ids(45), SamplingParams(do_sample=True, top_k=20, seed=7), 8, 0),  # these two join together
        (ids(6), SamplingParams(), 10, 3),
        (ids(1), SamplingParams(do_sample=True, top_p=0.8, seed=8), 6, 0),  # these as slots free
        (ids(33), SamplingParams(do_sample=True, seed=9), 5, 1),
    ]
    slot_of, done, pending = {}, {}, list(range(len(reqs)))

    def on_step(step, runs):
        for i, slot in slot_of.items():
            if i not in done and slot in runs and runs[slot]["finish"]:
                done[i] = runs[slot]
        due = {0: [0, 1], 2: [2, 3]}.get(step, [])
        if step > 2 and pending and slots.active() < slots.capacity:
            due = pending[:1]
        for i in due:
            p, s, n, lp = reqs[i]
            slot = slots.add(p, s, n, logprobs=lp)
            runs.pop(slot, None)
            slot_of[i] = slot
            pending.remove(i)

    runs = drive(slots, on_step)
    on_step(-1, runs)
    assert not pending
    ref = Runtime.load(model_path, threads=2, max_sequences=4)  # default budget: the logprobs to compare with
    for i, (p, s, n, lp) in enumerate(reqs):
        assert done[i]["tokens"] == alone(solo, p, n, s), i
        evs = [e for e in done[i]["events"] if e.token is not None]
        if lp:
            r = ref.slots()
            slot = r.add(p, s, n, logprobs=lp)
            want = [e for e in drive(r)[slot]["events"] if e.token is not None]
            assert [(e.logprob, e.top_logprobs) for e in evs] == [(e.logprob, e.top_logprobs) for e in want], i
        else:
            assert all(e.logprob is None for e in evs)


def test_step_tokens_is_checked(model_path):
    slots = Runtime.load(model_path, threads=2, max_sequences=2).slots()
    for bad in (0, -3, 2**40, 1.5, True, "8"):
        with pytest.raises(ValueError, match="step_tokens"):
            slots.step_tokens = bad


@pytest.fixture(scope="module")
def wide_model_path(tmp_path_factory, sp_tokenizer):
    """A model whose step takes long enough for another thread to be scheduled many times over."""
    torch.manual_seed(8)
    model = random_model(sp_tokenizer.vocab_size, num_layers=4, seq_len=256, hidden_size=512, ffn_size=1536)
    return str(export_gguf(model, sp_tokenizer, tmp_path_factory.mktemp("wide") / "m.gguf", chat_template=TEMPLATE))


def test_step_releases_the_gil(wide_model_path):
    """Another Python thread runs while step() is inside the engine. With the switch interval at 1000 s the
    interpreter never takes the GIL from the stepping thread by itself: the watcher can see `in_step` set only if
    step() released it. Steps repeat until that happens once (a step could end before the watcher wakes); with the
    GIL held it never happens, however often it is tried."""
    rt = Runtime.load(wide_model_path, threads=1, max_sequences=2)
    slots = rt.slots()
    slots.add(list(range(3, 200)), None, 40)
    slots.add(list(range(5, 60)), None, 40)
    state = {"in_step": False, "done": False}
    seen_in_step = threading.Event()

    def watcher():
        while not state["done"]:
            if state["in_step"]:
                seen_in_step.set()
            time.sleep(0)  # gives the GIL back each round, so the stepping thread is never starved either

    old = sys.getswitchinterval()
    t = threading.Thread(target=watcher, daemon=True)
    sys.setswitchinterval(1000.0)
    try:
        t.start()
        for _ in range(40):
            state["in_step"] = True
            slots.step()
            state["in_step"] = False
            if seen_in_step.is_set():
                break
    finally:
        state["done"] = True
        sys.setswitchinterval(old)
        t.join()
    assert seen_in_step.is_set(), "no other thread ran during 40 steps: step() holds the GIL"
    while slots.active():
        slots.step()


def test_numpy_ids_and_slot_numbers(solo):
    """np.array(ids) and np.int64 slots are what a notebook has: they were refused as "not an integer" and, for
    cancel(np.int64(0)), as "slot 0 is out of range [0, 1)"."""
    slots = solo.slots()
    s = slots.add(np.array(solo.encode("To be")), None, 50)
    slots.step()
    slots.cancel(np.int64(s))
    assert slots.active() == 0
    with pytest.raises(TypeError, match="slot must be an integer"):
        slots.cancel("0")


def test_dropped_runtime_with_slots_is_freed_at_once(model_path):
    """Runtime <-> Slots was a reference cycle: after `del rt` the engine (weights, KV caches, worker threads) lived
    on until the cyclic GC ran; 50 loads in a loop held 50 engines' threads and memory."""
    import gc
    import weakref

    gc.disable()
    try:
        rt = Runtime.load(model_path, threads=1, max_sequences=2)
        slots = rt.slots()
        assert rt.slots() is slots
        slots.add(rt.encode("To be"), None, 2)
        while slots.active():
            slots.step()
        with pytest.raises(RuntimeBusyError):  # dropping the Slots object does not hide running slots
            rt.slots().add(rt.encode("To be"), None, 2)
            del slots
            rt.generate("To be", max_new_tokens=2)
        ref = weakref.ref(rt)
        del rt
        assert ref() is None
    finally:
        gc.enable()
