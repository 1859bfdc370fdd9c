"""bllama.Runtime (the C++ engine's Python face) against the PyTorch model, plus its API and its errors."""
import struct

import gguf
import numpy as np
import pytest
import torch

from bllama import Runtime, SamplingParams, bLlama, bLlamaConfig
from bllama.tools.evaluate import text_metrics, torch_logits_fn
from bllama.convert.gguf_export import export_gguf
from bllama.model.generate import generate_ids


def f16_rounded(model):
    """The file stores the embedding / head in fp16; give PyTorch the same values so that only summation order
    differs between the two implementations."""
    with torch.no_grad():
        for p in (model.model.embed_tokens.weight, model.model.lm_head.weight):
            p.copy_(p.half().float())
    return model


EXACT = dict(head="f16", kv_cache_dtype="float32")


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory):
    model = f16_rounded(trained_tiny["model"])
    model.quantize_weights_to_ternary()
    path = export_gguf(model, trained_tiny["tokenizer"], tmp_path_factory.mktemp("rt") / "tiny.gguf")
    # The exact model (f16 head, fp32 KV cache; the defaults are the low-byte ones): these tests compare with PyTorch.
    return {**trained_tiny, "model": model, "path": path, "rt": Runtime.load(path, threads=2, **EXACT)}


def test_trained_greedy_continuation_identical_for_100_tokens(trained):
    rt, tok, model = trained["rt"], trained["tokenizer"], trained["model"]
    for prompt in ["ROMEO:", "First Citizen:\nWe are", "The king"]:
        ids = tok.encode(prompt)
        ours = rt._engine.generate(ids, 100, stop_ids=[])
        ref = generate_ids(model.model, ids, 100)[0]
        assert ours == ref, prompt
        assert len(ours) == 100


def test_trained_perplexity_within_half_percent(trained):
    rt, tok, model = trained["rt"], trained["tokenizer"], trained["model"]
    text = trained["held_out"][:6000]
    ours = rt.evaluate(text)
    ref = text_metrics(text, tok, model.config.seq_len, torch_logits_fn(model))
    assert ours["tokens"] == ref["tokens"] > 500
    assert abs(ours["perplexity"] / ref["perplexity"] - 1) < 0.005, (ours, ref)
    assert ours["perplexity"] < 0.5 * tok.vocab_size  # it learned something


def random_model(vocab, **kw):
    """A random b1.58 model whose norm weights are random too: larger input-norm gains make q.k large enough for
    RoPE and attention to shape the logits (with unit gains attention is near uniform and a RoPE bug would hide)."""
    base = dict(vocab_size=vocab, seq_len=96, hidden_size=256, num_layers=1, ffn_size=512)
    model = bLlama(bLlamaConfig(**{**base, **kw}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(1, 6) if "layernorm" in n else p.uniform_(0.5, 2)
    f16_rounded(model).quantize_weights_to_ternary()
    return model


def engine_vs_torch(tmp_path, tokenizer, model, weight_type, n=80, seed=0):
    rt = Runtime.load(export_gguf(model, tokenizer, tmp_path / "m.gguf", weight_type=weight_type), threads=2, **EXACT)
    ids = torch.randint(3, tokenizer.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    ref = model.model(torch.tensor([ids]))[0].detach().numpy()
    out = rt.logits(ids)
    assert out.shape == ref.shape and out.dtype == np.float32
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref)), float((out.argmax(-1) == ref.argmax(-1)).mean())


# Engine vs PyTorch on random models. Both compute the same function in a different fp32 summation order; where
# that puts a value on the other side of an int8 rounding boundary of the activation quantizer, one activation
# moves by one step and, through attention, every later position shifts a little. How much is a property of
# the model, measured on PyTorch alone: perturbing its norm weights by 1e-6 (relative) moves these random
# models' logits by 0.2% to 1.9% (3 seeds x 4 perturbations per config). The bound is 5% relative L2 and
# 90% argmax agreement; a RoPE theta off by 2x gives 26% and a wrong activation 50% (checked below, so the test
# demonstrably fails on such bugs). The trained-model tests above show exact agreement where it matters.
@pytest.mark.parametrize("kw", [
    dict(num_heads=4, num_kv_heads=4),                                   # plain multi-head
    dict(num_heads=8, num_kv_heads=2, activation="relu2"),               # GQA + relu2
    dict(num_heads=4, num_kv_heads=1, tie_embeddings=False),            # MQA + untied head
    dict(num_heads=2, num_kv_heads=2, hidden_size=512, ffn_size=768, rope_theta=500000.0),
])
@pytest.mark.parametrize("weight_type", ["tq2_0", "tq1_0", "i2_s"])  # i2_s + relu2 + tied: bitnet.cpp's b1.58 arch
def test_random_models_match_pytorch(tmp_path, sp_tokenizer, kw, weight_type):
    torch.manual_seed(sum(map(ord, weight_type + str(sorted(kw.items())))))
    model = random_model(sp_tokenizer.vocab_size, num_layers=2, **kw)
    rel, agree = engine_vs_torch(tmp_path, sp_tokenizer, model, weight_type)
    assert rel < 5e-2 and agree > 0.9, (rel, agree)


def test_tq1_layouts_give_identical_logits(tmp_path, sp_tokenizer):
    """A TQ1_0 file held at 1.6 bits (base3) and repacked to 2 bits gives bit-identical logits (integer sums,
    the same epilogue); a bad layout name is a ValueError."""
    torch.manual_seed(21)
    model = random_model(sp_tokenizer.vocab_size, num_layers=2, num_heads=4, num_kv_heads=2)
    path = export_gguf(model, sp_tokenizer, tmp_path / "m.gguf", weight_type="tq1_0")
    ids = list(range(3, 40))
    out = {l: Runtime.load(path, threads=2, tq1_layout=l, **EXACT).logits(ids) for l in ("2bit", "base3", "auto")}
    assert np.array_equal(out["2bit"], out["base3"]) and np.array_equal(out["2bit"], out["auto"])
    with pytest.raises(ValueError, match="tq1_layout"):
        Runtime.load(path, tq1_layout="1.6bit")


def test_random_model_check_fails_on_a_wrong_reference(tmp_path, sp_tokenizer):
    torch.manual_seed(5)
    model = random_model(sp_tokenizer.vocab_size, num_layers=2, num_heads=4, num_kv_heads=2)
    for layer in model.model.layers:  # a deliberately wrong reference (relu2 instead of silu)
        layer.mlp.relu2 = True
    rel, _ = engine_vs_torch(tmp_path, sp_tokenizer, model, "tq2_0")
    assert rel > 5e-2


def test_generate_stream_stop_and_batch(trained):
    rt = trained["rt"]
    text = rt.generate("ROMEO:", max_new_tokens=40)
    assert isinstance(text, str) and len(text) > 10
    assert "".join(rt.stream("ROMEO:", max_new_tokens=40)) == text
    assert rt.stats["generated_tokens"] == 40 and rt.stats["decode_tokens_per_second"] > 0
    word = text.split()[1]
    cut = rt.generate("ROMEO:", max_new_tokens=40, stop=[word])
    assert cut == text[:text.index(word)]
    a = rt.generate("ROMEO:", max_new_tokens=30, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    b = rt.generate("ROMEO:", max_new_tokens=30, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    c = rt.generate("ROMEO:", max_new_tokens=30, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, seed=4)
    assert a == b and a != c
    sampled = SamplingParams(do_sample=True, temperature=0.9, top_k=20, top_p=0.9)
    assert rt.generate("ROMEO:", 30, SamplingParams.of(sampled, seed=3)) == a  # the object and the keywords agree
    assert rt.generate("ROMEO:", 30, sampled, seed=4) == c  # keyword overrides on top of an object
    assert len(rt.tokenizer.encode(rt.generate("ROMEO:", max_new_tokens=60, stop_at_eos=False), add_bos=False)) >= 50
    assert rt.generate(["ROMEO:", "JULIET:"], max_new_tokens=12) == [rt.generate("ROMEO:", max_new_tokens=12),
                                                                      rt.generate("JULIET:", max_new_tokens=12)]
    stream = rt.stream("ROMEO:", max_new_tokens=100, stop_at_eos=False)
    next(stream)
    stream.close()  # a reader that stops stops the engine (bounded queue), without a hang
    assert rt.stats["generated_tokens"] < 50 and rt.stats["stop_reason"] == "callback"
    assert rt.config["hidden_size"] == 256 if "hidden_size" in rt.config else True
    assert rt.tokenizer.decode(rt.tokenizer.encode("ROMEO: hi")) == "ROMEO: hi"


def test_cpu_batched_generation_equals_one_by_one(trained):
    """max_sequences on the CPU: up to 4 prompts decode together (one forward_batch per step); each gets exactly
    what it gets alone, greedy (stop strings included) and sampled (prompt i with seed + i)."""
    rt = trained["rt"]
    rt4 = Runtime.load(trained["path"], threads=2, max_sequences=4, **EXACT)
    assert rt4.config["max_sequences"] == 4 and rt.config["max_sequences"] == 1
    prompts = ["ROMEO:", "First Citizen:\nWe are", "The king", "JULIET:", "O, "]  # 5 > 4: two groups
    kw = dict(max_new_tokens=40, stop=["\n\n"])
    assert rt4.generate(prompts, **kw) == [rt.generate(p, **kw) for p in prompts]
    kw = dict(max_new_tokens=30, do_sample=True, temperature=0.9, top_k=20)
    sampled = rt4.generate(prompts, seed=11, **kw)
    assert sampled == [rt.generate(p, seed=11 + i, **kw) for i, p in enumerate(prompts)]
    assert rt.generate(prompts, seed=11, **kw) == sampled  # the one-by-one path numbers the seeds alike
    same = rt4.generate(["ROMEO:"] * 3, seed=5, **kw)
    assert len(set(same)) == 3  # equal prompts, different seeds
    with pytest.raises(ValueError, match=r"max_sequences must be in \[1, 64\] on the CPU"):
        Runtime.load(trained["path"], threads=2, max_sequences=65)


def test_bad_input_raises_clear_errors(trained, tmp_path):
    rt, path = trained["rt"], trained["path"]
    with pytest.raises(FileNotFoundError):
        Runtime.load(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="(?i)magic|gguf"):
        Runtime.load(junk)
    data = path.read_bytes()
    for cut in (0, 3, 24, 100, len(data) // 2, len(data) - 1):
        t = tmp_path / f"trunc{cut}.gguf"
        t.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            Runtime.load(t)
    with pytest.raises(ValueError, match="empty"):
        rt.generate("", max_new_tokens=5)
    with pytest.raises(ValueError, match="the prompt holds a lone UTF-16 surrogate at index 3"):
        rt.generate("hi \ud800", max_new_tokens=2)  # was SentencePiece's RuntimeError about a C++ cast
    with pytest.raises(IndexError, match=r"max_new_tokens \(1180591620717411303424\) exceeds the context"):
        rt.generate("ROMEO:", max_new_tokens=2**70)  # was pybind11's TypeError with the whole signature
    with pytest.raises(TypeError, match="max_new_tokens must be an integer, got 2.5"):
        rt.generate("ROMEO:", max_new_tokens=2.5)  # was quietly 2
    assert rt.generate_ids_batch([rt.encode("ROMEO:")], np.int64(2), stop_at_eos=False)[0].__len__() == 2
    with pytest.raises(IndexError, match="range"):
        rt.logits([1, rt.vocab_size])
    with pytest.raises(IndexError, match="context"):
        rt.generate("ROMEO:", max_new_tokens=rt.context_length)
    with pytest.raises(ValueError):
        Runtime.load(path, threads=0)
    with pytest.raises(ValueError, match=r"threads must be at most 256 \(this machine has \d+ cores\), got 100000"):
        Runtime.load(path, threads=100_000)  # used to start threads until the machine could not fork


def write_llama_arch_file(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 256), np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def test_wrong_architecture_is_named(tmp_path):
    write_llama_arch_file(tmp_path / "llama.gguf")
    with pytest.raises(ValueError, match="bitnet"):
        Runtime.load(tmp_path / "llama.gguf")


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.TQ2_0, gguf.GGMLQuantizationType.TQ1_0])
def test_foreign_bitnet_file_without_bllama_keys(tmp_path, sp_tokenizer, qtype):
    """A file as another tool writes it: gguf's own block quantizer (d = block absmax), no bllama.* keys, no
    SentencePiece bytes. The tokenizer is rebuilt from tokenizer.ggml.*; SiLU and a tied head are assumed."""
    torch.manual_seed(11)
    cfg = bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=64, hidden_size=256, num_heads=4,
                       num_kv_heads=2, num_layers=2, ffn_size=512)
    model = f16_rounded(bLlama(cfg))
    model.quantize_weights_to_ternary()
    net = model.model
    w = gguf.GGUFWriter(str(tmp_path / "foreign.gguf"), "bitnet")
    w.add_context_length(64); w.add_embedding_length(256); w.add_block_count(2); w.add_feed_forward_length(512)
    w.add_head_count(4); w.add_head_count_kv(2); w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_tokenizer_model("llama")
    w.add_token_list(sp_tokenizer.pieces()); w.add_token_scores(sp_tokenizer.scores())
    w.add_token_types(sp_tokenizer.token_types())
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    f32 = lambda t: t.detach().float().numpy()
    w.add_tensor("token_embd.weight", f32(net.embed_tokens.weight).astype(np.float16))
    w.add_tensor("output_norm.weight", f32(net.norm.weight))
    names = {"attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v", "attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    norms = {"input_layernorm": "attn_norm", "attn.sub_norm": "attn_sub_norm", "post_attention_layernorm": "ffn_norm",
             "mlp.sub_norm": "ffn_sub_norm"}
    for i, block in enumerate(net.layers):
        for a, n in norms.items():
            w.add_tensor(f"blk.{i}.{n}.weight", f32(block.get_submodule(a).weight))
        for a, n in names.items():
            layer = block.get_submodule(a)
            values = layer.weight_codes.float().numpy() * layer.weight_scale.item()
            w.add_tensor(f"blk.{i}.{n}.weight", gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    rt = Runtime.load(tmp_path / "foreign.gguf", **EXACT)
    text = "Café naïve 😀 and  spaces, ROMEO!"
    assert rt.tokenizer.encode(text) == sp_tokenizer.encode(text)
    ids = sp_tokenizer.encode("First Citizen: we are accounted poor citizens")
    ref = net(torch.tensor([ids]))[0].detach().numpy()
    rel = np.linalg.norm(rt.logits(ids) - ref) / np.linalg.norm(ref)
    assert rel < 5e-2, rel  # the bound of test_random_models_match_pytorch, for the same reason


def test_tokenizer_larger_than_the_vocabulary_is_refused_at_load(tmp_path, sp_tokenizer):
    """A file whose tokenizer.ggml.tokens outnumber the embedding's rows (llama.cpp refuses it at load) loaded, and
    only a prompt that happened to hold a token past the rows failed, as an IndexError about a token id."""
    from bllama.convert.gguf_export import add_model_tensors
    from bllama.convert.gguf_schema import add_bitnet_metadata

    cfg = bLlamaConfig(vocab_size=sp_tokenizer.vocab_size - 16, seq_len=64, hidden_size=256, num_heads=4,
                       num_layers=1, ffn_size=256)
    model = bLlama(cfg)
    model.quantize_weights_to_ternary()
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "bitnet")
    add_bitnet_metadata(w, cfg)
    w.add_tokenizer_model("llama")
    w.add_token_list(sp_tokenizer.pieces()); w.add_token_scores(sp_tokenizer.scores())
    w.add_token_types(sp_tokenizer.token_types())
    add_model_tensors(w, model.model, "tq2_0")
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ValueError, match=f"the tokenizer has {sp_tokenizer.vocab_size} tokens but the model's "
                                         f"vocabulary is {cfg.vocab_size}"):
        Runtime.load(tmp_path / "m.gguf")


class CharTokenizer:
    """Each character a token; lets the text-stream logic be tested without the engine."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_text_stream_holds_back_partial_stop_strings():
    from bllama.runtime.text_stream import _TextStream

    ts = _TextStream(CharTokenizer(), CharTokenizer().encode("P:"), stop=["\n\n", "END"])
    out = [ts.push(ord(c)) for c in "ab\nc\n"]
    assert "".join(out) == "ab\nc" and out[2] == ""  # the first "\n" waits: it may start "\n\n"
    assert ts.push(ord("\n")) == "" and ts.stopped
    ts = _TextStream(CharTokenizer(), [80], stop=["END"])
    assert "".join(ts.push(ord(c)) for c in "xEN") == "x"
    assert ts.flush() == "EN"  # the generation ended without the stop string: nothing is lost


def FullDecodeStream(tok, prompt_ids, stop):
    """The slow reference for _TextStream's decoding: the prompt and the whole reply decoded at every token, the
    stop strings searched over the whole text (the hold-back rules of push/flush are _TextStream's own)."""
    from bllama.runtime.text_stream import _TextStream

    class Full(_TextStream):
        def _text(self):
            prompt, reply = self.tokens[:n_prompt], self.tokens[n_prompt:]
            full, prefix = self.tok.decode(self.tokens), self.tok.decode(prompt)
            text = full[len(prefix):] if full.startswith(prefix) else self.tok.decode(reply)
            for s in self.stop:
                if (i := text.find(s)) >= 0:
                    text, self.stopped = text[:i], True
            return text

    n_prompt = len(prompt_ids)
    return Full(tok, prompt_ids, stop)


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_text_stream_windowed_decode_equals_full_decode(kind, sp_tokenizer):
    """Every delta of the windowed _TextStream equals the full-decode reference's, on real text, on random ids
    (byte-fallback pieces split characters; control tokens in runs), with and without stop strings."""
    from bllama.runtime.text_stream import _TextStream

    if kind == "bpe":
        from test_i2s import llama3_style_tokenizer
        tok = llama3_style_tokenizer()
    else:
        tok = sp_tokenizer
    rng = np.random.default_rng(0)
    text = "ROMEO: Is the day so young? \u00e9t\u00e9 \u2014 caf\u00e9 \U0001f600 na\u00efve\n\nJULIET: Ay, me! " * 3
    real = tok.encode(text)
    controls = [i for i in (tok.bos_id, tok.eos_id) if i is not None]
    cases = [(real[:5], real[5:], None), (real[:1], real[1:], ["\n\n"]), (real[:30], real[30:], ["Ay", "me!"])]
    # a whole window of control tokens, then a piece with a leading space (SentencePiece drops it at the start)
    cases += [(real[:5], [c] * 6 + tok.encode(" the day is young", add_bos=False), None) for c in controls]
    for _ in range(40):
        ids = rng.integers(0, tok.vocab_size, size=int(rng.integers(2, 60))).tolist()
        if controls and rng.random() < 0.5:  # a run of control tokens mid-reply
            at = int(rng.integers(1, len(ids)))
            ids[at:at] = [controls[0]] * int(rng.integers(1, 10))
        cut = int(rng.integers(1, len(ids)))
        stop = None if rng.random() < 0.5 else [tok.decode(real[3:5]), "e"]
        cases.append((ids[:cut], ids[cut:], stop))
    for prompt, reply, stop in cases:
        fast, slow = _TextStream(tok, prompt, stop), FullDecodeStream(tok, prompt, stop)
        for t in reply:
            assert fast.push(t) == slow.push(t), (prompt, reply, stop)
            assert fast.stopped == slow.stopped
            if slow.stopped:
                break
        assert fast.flush() == slow.flush()
        assert fast.emitted == slow.emitted


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_text_stream_never_shows_half_a_character(kind, sp_tokenizer):
    """A character split across byte tokens comes out whole once its last byte arrives: no delta holds U+FFFD.
    SentencePiece decodes <0xF0><0x9F> as two U+FFFD, so holding back one character was not enough (issue #19)."""
    from bllama.runtime.text_stream import _TextStream

    if kind == "bpe":
        from test_i2s import llama3_style_tokenizer
        tok = llama3_style_tokenizer()
    else:
        tok = sp_tokenizer
    # characters the session tokenizer never saw: byte-fallback pieces, 2, 3 and 4 bytes each
    text = " caf\u00e9 \u0436\u0436 \u2603 \U0001f680 na\u00efve \U0001f680\U0001f680 ok"
    ids = tok.encode(text, add_bos=False)
    partial = [tok.decode(ids[:k]) for k in range(1, len(ids))]
    assert any(p.count("\ufffd") >= (2 if kind == "sentencepiece" else 1) for p in partial)  # the case exists
    prompt = tok.encode("P:")
    ts = _TextStream(tok, prompt, None)
    deltas = [ts.push(t) for t in ids] + [ts.flush()]
    assert not any("\ufffd" in d for d in deltas), deltas
    whole = tok.decode(prompt + ids)
    assert whole.endswith("".join(deltas)) and "".join(deltas).strip() == text.strip()


@pytest.fixture(scope="module")
def shipped():
    """The shipped 5M-parameter model: enough for argument handling, no training."""
    from bllama.assets import SHAKESPEARE_MODEL

    return Runtime.load(SHAKESPEARE_MODEL, threads=1)


def test_load_arguments_in_the_callers_terms(shipped, tmp_path, monkeypatch):
    path = shipped.path
    with pytest.raises(TypeError, match="threads must be an integer or None, got 1.5"):
        Runtime.load(path, threads=1.5)  # was pybind11's "incompatible constructor arguments" and the signature
    with pytest.raises(TypeError, match="threads must be an integer or None, got '2'"):
        Runtime.load(path, threads="2")  # was "'<' not supported between instances of 'str' and 'int'"
    with pytest.raises(TypeError, match="threads must be an integer or None, got True"):
        Runtime.load(path, threads=True)  # was quietly 1 thread
    with pytest.raises(TypeError, match="max_sequences must be an integer, got None"):
        Runtime.load(path, max_sequences=None)
    with pytest.raises(ValueError, match="max_sequences must be at most 256, got 1099511627776"):
        Runtime.load(path, max_sequences=2**40)  # was pybind11's TypeError with the signature
    with pytest.raises(TypeError, match="context_length must be an integer or None, got True"):
        Runtime.load(path, context_length=True)  # was quietly a 1-token context
    rt = Runtime.load(path, threads=np.int64(1), max_sequences=np.int64(2), context_length=np.int64(64))
    assert (rt.config["threads"], rt.config["max_sequences"], rt.context_length) == (1, 2, 64)  # numpy ints work
    with pytest.raises(FileNotFoundError, match="the path is empty"):
        Runtime.load("")  # was "IsADirectoryError: . is a folder without config.json"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(open(path, "rb").read())
    assert Runtime.load("~/m.gguf", threads=1).vocab_size == shipped.vocab_size  # README: Runtime.load("~/models/...")


def test_stop_given_as_one_string(shipped):
    rt = shipped
    full = rt.generate("ROMEO:", max_new_tokens=20)
    word = full.split()[2]
    assert min(full.index(c) for c in word) < full.index(word)  # one of its characters comes earlier
    # A str is one stop string, as in OpenAI's API; it used to be split into characters (stop="END": "E", "N", "D").
    assert rt.generate("ROMEO:", max_new_tokens=20, stop=word) == full[:full.index(word)]
    with pytest.raises(TypeError, match="stop must be a string or a list of strings"):
        rt.generate("ROMEO:", max_new_tokens=2, stop=[3])  # was "object of type 'int' has no len()"


def test_sampling_edges(shipped):
    rt = shipped
    # top_k past the engine's int32 keeps every candidate (was pybind11's TypeError with the whole signature).
    kw = dict(max_new_tokens=8, do_sample=True, seed=1)
    assert rt.generate("ROMEO:", top_k=10**12, **kw) == rt.generate("ROMEO:", top_k=0, **kw)
    # A temperature whose reciprocal overflows float32 is greedy, not NaN probabilities and the last id every time.
    assert rt.generate("ROMEO:", max_new_tokens=8, do_sample=True, temperature=1e-40, seed=1) == \
        rt.generate("ROMEO:", max_new_tokens=8)
    with pytest.raises(TypeError, match="sampling must be a SamplingParams"):
        rt.generate("ROMEO:", max_new_tokens=2, sampling={"temperature": 0.5})  # was AttributeError: 'dict' ...
