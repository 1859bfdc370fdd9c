"""The C++ engine through its pybind11 module: same logits as the PyTorch model on an exported file,
metadata of every type, generate() semantics (stop ids, callbacks, seeds, GIL), and the exceptions.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from bllama import _engine  # the installed module (pip install -e .); a missing build is a failure, not a skip


def _export(net, path, weight_type="tq2_0"):
    """Write a quantized Transformer like bllama.convert.gguf_export does, with a synthetic tokenizer."""
    import gguf

    from bllama.convert.gguf_export import add_model_tensors
    from bllama.convert.gguf_schema import add_bitnet_metadata, gguf_arch

    cfg = net.config
    w = gguf.GGUFWriter(str(path), gguf_arch(cfg, weight_type, "bitnet" if cfg.qkv_bias else None))
    add_bitnet_metadata(w, cfg)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(cfg.vocab_size - 1)] + ["caf\u00e9"])
    w.add_token_scores([-float(i) for i in range(cfg.vocab_size)])
    w.add_token_types([1] * cfg.vocab_size)
    w.add_eos_token_id(2)
    w.add_array("bllama.tokenizer.sp_model", b"\x00\x01blob\xff")  # bytes -> UINT8 array
    w.add_float64("test.f64", 0.25)
    w.add_int64("test.i64", -5)
    add_model_tensors(w, net, weight_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def _model(seed=0, **kw):
    from bllama.model.config import bLlamaConfig
    from bllama.model.transformer import Transformer

    torch.manual_seed(seed)
    shape = dict(vocab_size=320, seq_len=64, hidden_size=256, num_heads=4, num_layers=2, ffn_size=512)
    cfg = bLlamaConfig(**{**shape, **kw})
    net = Transformer(cfg).eval()
    with torch.no_grad():
        # Engine-visible values: f16 embedding/head, non-trivial norms, larger embeddings.
        net.embed_tokens.weight.normal_(0, 0.3)
        net.embed_tokens.weight.copy_(net.embed_tokens.weight.half().float())
        if not cfg.tie_embeddings:
            net.lm_head.weight.copy_(net.lm_head.weight.normal_(0, 0.3).half().float())
        for m in net.modules():
            if type(m).__name__ == "RMSNorm":
                m.weight.uniform_(0.5, 1.5)
            elif getattr(m, "bias", None) is not None:  # q/k/v biases as large as the projections' outputs
                m.bias.normal_(0, 0.5)
    for _, m in net.bitlinears():
        m.quantize()
    return net


@pytest.fixture(scope="module", params=[dict(), dict(num_kv_heads=2, activation="relu2", tie_embeddings=False),
                                        dict(qkv_bias=True, sub_norms=False, num_kv_heads=2)],
                ids=["silu-tied", "gqa-relu2-untied", "qwen2-like-qkv-bias"])
def exported(request, tmp_path_factory):
    net = _model(**request.param)
    path = tmp_path_factory.mktemp("eng") / "m.gguf"
    _export(net, path)
    return net, str(path)


def test_logits_match_pytorch(exported):
    net, path = exported
    eng = _engine.Engine(path, threads=2, head="f16", kv_cache_dtype="float32")  # the exact model, as PyTorch's
    ids = torch.randint(0, net.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net(ids)[0].numpy()
    got = eng.logits(ids[0].tolist())
    assert got.dtype == np.float32 and got.shape == (40, net.config.vocab_size)
    # Float summation order differs from PyTorch's, so now and then an activation lands on the other
    # side of a rounding boundary and one int8 code differs by 1; through attention that perturbs every
    # later position by ~1% of the logit scale. A real bug (rope, GQA, norms, layout) is O(100%).
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() < 0.05 * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    # Exactness where no boundary is hit: most single-token sequences agree to float rounding.
    exact = 0
    for t in range(0, net.config.vocab_size, 40):
        with torch.no_grad():
            w = net(torch.tensor([[t]]))[0, 0].numpy()
        exact += np.abs(eng.logits([t])[0] - w).max() < 1e-5 * scale
    assert exact >= 6, exact


def test_greedy_generate_matches_pytorch(exported):
    net, path = exported
    eng = _engine.Engine(path, head="f16", kv_cache_dtype="float32")  # the exact model, as PyTorch's
    prompt = [1, 5, 77, 200]
    out = eng.generate(prompt, 10)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            seq.append(int(net(torch.tensor([seq]))[0, -1].argmax()))
    # PyTorch agrees on the first tokens (a rounding-boundary flip may later change a near-tie);
    # every token is the argmax of the engine's own logits for the sequence so far.
    assert out[:3] == seq[len(prompt):][:3]
    full = list(prompt) + out
    assert out == eng.logits(full[:-1]).argmax(-1)[len(prompt) - 1:].tolist()
    st = eng.last_stats
    assert st["prompt_tokens"] == 4 and st["generated_tokens"] == 10 and st["decode_tokens"] == 9
    assert st["stop_reason"] == "length" and st["load_seconds"] > 0


def test_config_and_metadata(exported):
    net, path = exported
    eng = _engine.Engine(path, threads=1, kv_cache_dtype="float32")
    c = eng.config
    from pathlib import Path  # any os.PathLike (bllama.assets.SHAKESPEARE_MODEL is one): was pybind11's TypeError
    assert _engine.Engine(Path(path), threads=1).config["vocab_size"] == c["vocab_size"]
    assert len(_engine.gguf_tensors(Path(path))) == len(_engine.gguf_tensors(path))
    cfg = net.config
    assert (c["vocab_size"], c["hidden_size"], c["num_layers"], c["num_heads"], c["num_kv_heads"], c["ffn_size"]) == \
        (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.ffn_size)
    assert c["activation"] == cfg.activation and c["tie_embeddings"] == cfg.tie_embeddings
    assert c["threads"] == 1 and c["weight_type"] == "TQ2_0"
    assert eng.vocab_size == cfg.vocab_size and eng.context_length == cfg.seq_len
    keys = eng.metadata_keys()
    assert "general.architecture" in keys and "tokenizer.ggml.tokens" in keys
    arch = "bitnet-b1.58" if cfg.activation == "relu2" else "bitnet"  # ReLU^2 never under llama.cpp's SiLU `bitnet`
    assert eng.metadata("general.architecture") == arch
    assert eng.metadata(f"{arch}.block_count") == cfg.num_layers
    toks = eng.metadata("tokenizer.ggml.tokens")
    assert len(toks) == cfg.vocab_size and toks[3] == "tok3" and toks[-1] == "caf\u00e9"
    scores = eng.metadata("tokenizer.ggml.scores")
    assert scores.dtype == np.float32 and scores[7] == -7.0
    types = eng.metadata("tokenizer.ggml.token_type")
    assert types.dtype == np.int32 and types.tolist() == [1] * cfg.vocab_size
    assert eng.metadata("bllama.tokenizer.sp_model") == b"\x00\x01blob\xff"
    assert eng.metadata("test.f64") == 0.25 and eng.metadata("test.i64") == -5
    assert eng.metadata("bllama.tie_embeddings") is cfg.tie_embeddings
    assert abs(eng.metadata(f"{arch}.attention.layer_norm_rms_epsilon") - cfg.rms_eps) < 1e-9
    with pytest.raises(KeyError):
        eng.metadata("no.such.key")
    assert _engine.Engine(path, context_length=16).context_length == 16
    e16 = _engine.Engine(path, kv_cache_dtype="float16")
    assert e16.config["kv_cache_dtype"] == "float16" and c["kv_cache_dtype"] == "float32"
    ids = list(range(1, 30))
    a, b = eng.logits(ids), e16.logits(ids)
    assert np.abs(a - b).max() < 0.05 * max(1.0, float(np.abs(a).max()))
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        _engine.Engine(path, kv_cache_dtype="int8")


def test_generate_options_and_callbacks(exported):
    _, path = exported
    eng = _engine.Engine(path)
    prompt = [1, 2, 3]
    base = eng.generate(prompt, 8)
    assert eng.generate(prompt, 8, stop_ids=[base[2]]) == base[:base.index(base[2])]
    assert eng.last_stats["stop_reason"] == "stop_token"
    seen = []
    assert eng.generate(prompt, 8, callback=lambda t: seen.append(t) or len(seen) == 3) == base[:3] == seen
    assert eng.last_stats["stop_reason"] == "callback"

    def boom(t):
        raise KeyError("from callback")

    with pytest.raises(KeyError, match="from callback"):
        eng.generate(prompt, 8, callback=boom)
    kw = dict(do_sample=True, temperature=8.0, top_k=200, top_p=0.99, repetition_penalty=1.1)
    a = eng.generate(prompt, 16, seed=7, **kw)
    assert a == eng.generate(prompt, 16, seed=7, **kw)
    assert any(eng.generate(prompt, 16, seed=s, **kw) != a for s in range(8, 12))
    assert len(eng.generate(prompt, 16, seed=-1, **kw)) == 16  # negative: a random seed
    assert eng.generate(prompt, 8, top_k=1, do_sample=True, temperature=3.0) == base


def test_gil_released(exported):
    """Two engines generate in two Python threads at once; a callback runs Python meanwhile."""
    _, path = exported
    engines = [_engine.Engine(path, threads=1) for _ in range(2)]
    results = [None, None]

    def work(i):
        results[i] = engines[i].generate([1, 2, 3], 20, callback=lambda t: False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and len(results[0]) == 20


def test_errors(exported, tmp_path):
    _, path = exported
    eng = _engine.Engine(path)
    V, T = eng.vocab_size, eng.context_length
    with pytest.raises(FileNotFoundError, match="no such file"):
        _engine.Engine(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(ValueError, match="KV count"):
        _engine.Engine(str(bad))
    with pytest.raises(ValueError, match="threads"):
        _engine.Engine(path, threads=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        eng.generate([], 4)
    with pytest.raises(IndexError, match=r"out of range \[0, 320\)"):
        eng.generate([1, V], 4)
    with pytest.raises(IndexError):
        eng.generate([-1], 4)
    with pytest.raises(IndexError, match="context length"):
        eng.generate([1, 2], T - 1)
    with pytest.raises(ValueError, match="temperature"):
        eng.generate([1], 4, temperature=-1.0, do_sample=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng.generate([1], -1)
    with pytest.raises(IndexError):
        eng.logits([0] * (T + 1))
    with pytest.raises(IndexError):
        eng.logits([2 ** 40])
    with pytest.raises(ValueError):
        eng.logits([])


def test_generate_batch_equals_one_by_one(exported):
    """generate_batch on the CPU, batched (max_sequences=4: one forward_batch per step) and one after another
    (max_sequences=1): the same ids as generate() each, the same stop rules, and stats summed over the sequences."""
    _, path = exported
    eng = _engine.Engine(path, threads=2, max_sequences=4)
    single = _engine.Engine(path, threads=2)
    assert eng.config["max_sequences"] == 4 and single.config["max_sequences"] == 1
    prompts = [[1, 5, 77], [9], [200, 3, 4, 5, 6]]
    one = [single.generate(p, 7, stop_ids=[11]) for p in prompts]
    for e in (eng, single):
        assert e.generate_batch(prompts, 7, stop_ids=[11]) == one
        st = e.last_stats
        assert st["prompt_tokens"] == 9 and st["generated_tokens"] == sum(map(len, one))
    # callback(i, token): every returned token with its prompt's index; truthy ends only that sequence
    for e in (eng, single):
        seen = [[], [], []]
        cut = e.generate_batch(prompts, 7, callback=lambda i, t: seen[i].append(t) or (i == 2 and len(seen[2]) == 2))
        full = e.generate_batch(prompts, 7)
        assert cut == seen and cut[2] == full[2][:2] and cut[:2] == full[:2]

        def boom(i, t):
            raise KeyError("from the callback")

        with pytest.raises(KeyError, match="from the callback"):
            e.generate_batch(prompts, 7, callback=boom)
        assert e.generate_batch(prompts, 7) == full  # the engine is fine afterwards
    with pytest.raises(IndexError, match="out of range"):
        eng.generate_batch([[1, 2], [1, 10**6]], 3)
    with pytest.raises(ValueError, match="no prompts"):
        eng.generate_batch([], 3)
    with pytest.raises(ValueError, match="max_sequences"):
        _engine.Engine(path, max_sequences=0)


def test_doorbell_wait_releases_the_gil_and_wakes_on_a_ring():
    """_engine.Doorbell (bllama serve --poll): a wait spins without the GIL, so a Python thread can ring it; it
    returns 'rang' on that ring, 'timed_out' after its timeout, and a bad timeout is a ValueError."""
    import time

    def wait(seen, timeout_s):
        """'preempted' (the spin gave its core away: a busy machine) is not an answer here: wait again for the rest
        of the time, as the server's engine thread does. A count of retries fails on a loaded machine, where every
        short wait gives way (CI under load: 'preempted 100 times')."""
        t0 = time.monotonic()
        r = bell.wait(seen, timeout_s)
        while r == "preempted":
            r = bell.wait(seen, max(0.0, timeout_s - (time.monotonic() - t0)))
        return r, time.monotonic() - t0

    bell = _engine.Doorbell()
    seen = bell.rings()
    ringer = threading.Timer(0.05, bell.ring)  # a Python thread: it needs the GIL while the wait runs
    ringer.start()
    t0 = time.monotonic()
    assert wait(seen, 30.0)[0] == "rang"
    assert time.monotonic() - t0 < 10
    ringer.join()
    assert bell.rings() == seen + 1
    r, waited = wait(bell.rings(), 0.02)
    assert r == "timed_out" and waited >= 0.02
    for bad in (-1.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="timeout"):
            bell.wait(bell.rings(), bad)
