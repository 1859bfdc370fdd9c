"""Hugging Face checkpoints -> our GGUF -> our engine, checked against transformers on the same checkpoint.

Tolerance: our GGUF stores the embedding / head in f16 (by design), so the transformers reference gets its
embedding and head rounded to f16 too; what is left is fp32 evaluation order (HF: (xq / a) @ W * s or
xq @ W / (a * ws); ours: int32 acc * (1/a) * s). That is ~1e-7 relative per logit, except that a 1-ulp
difference can move some x * a across a .5 rounding boundary, flipping one int8 activation by 1 (1/127 of the
row's absmax) and shifting logits by up to ~1% from that position on (later positions attend to its K/V).
So: position 0 must agree to 1e-5 of the logit range, every position to 2e-2, the mean to 5e-3 (measured: no
flip at all for the four 256-multiple formats, max 1e-7 relative; the padded 1bitLLM shape with a 53-token
prompt flips from one position on, max 3.5e-3).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import torch  # noqa: E402

from hf_checkpoints import SPECIALS, fp16_scales, make_checkpoint, reference_model  # noqa: E402

PROMPT = "Once upon a time the quick brown fox jumps over the lazy dog."


def f16_embeddings(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "embed_tokens" in n or "lm_head" in n:
                p.copy_(p.half().float())
    return model


def assert_logits_match(ref_logits: np.ndarray, ours: np.ndarray):
    assert ref_logits.shape == ours.shape
    scale = np.abs(ref_logits).max(-1)
    rel = np.abs(ref_logits - ours).max(-1) / scale
    assert rel[0] < 1e-5, rel  # one token: nothing upstream but the embedding row; no tie flips seen here
    assert np.all(rel < 2e-2), rel
    assert np.mean(rel) < 5e-3, rel
    assert np.mean(ref_logits.argmax(-1) == ours.argmax(-1)) >= 0.9


def assert_equal_but_for_ties(ref_logits: np.ndarray, ours: np.ndarray):
    """Two evaluations of one model that agree to float rounding except where an int8 activation sits on a .5 tie
    (bLlama's PyTorch against the engine or transformers: in this folder the qwen3 case's layer-1 o_proj input at
    position 0 is 1e-6 from one, any position may have such a tie): most positions exact, none far off."""
    rel = np.abs(ref_logits - ours).max(-1) / np.abs(ref_logits).max(-1)
    assert np.median(rel) < 1e-5 and rel.max() < 5e-3, rel


CASES = {
    # name: (style, kwargs)
    "2b4t-like": ("bitnet", dict(act="relu2", linear_class="autobitlinear", tied=True)),
    "bitnet-bitlinear-untied-silu-theta": ("bitnet", dict(act="silu", linear_class="bitlinear", tied=False,
                                                          rope_form="theta", theta=10000.0)),
    "bitnet-online": ("bitnet-online", dict(act="relu2", kv_heads=1)),
    "llama-bitnet": ("llama-bitnet", dict(act="silu", linear_class="bitlinear", tied=False, theta=1000042.0)),
    # Qwen2: q/k/v biases (autobitlinear scales them with the output, bitlinear adds them as stored), theta 1e6
    "qwen2-bitnet": ("qwen2-bitnet", dict(act="silu", linear_class="autobitlinear", tied=True, theta=1000000.0)),
    "qwen2-bitnet-bitlinear": ("qwen2-bitnet", dict(act="silu", linear_class="bitlinear", tied=False,
                                                    theta=1000000.0, kv_heads=1, seed=3)),
    "1bitllm-padded": ("1bitllm", dict(act="silu", hidden=320, ffn=864, heads=4, kv_heads=4, tokenizer="sp")),
    # Llama-3.1's RoPE scaling, with an original context short enough that the prompt's positions feel it
    "llama3-rope": ("llama-bitnet", dict(act="silu", linear_class="bitlinear", tied=True, theta=10000.0,
                                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                           high_freq_factor=4.0, original_max_position_embeddings=16))),
    # Qwen3: QK-norm (random weights around 1) and heads of 96 with hidden 256 / 4 heads: q is 256 -> 384, o 384 ->
    # 256, stored padded to 512 inputs
    "qwen3-head-dim": ("qwen3-bitnet", dict(act="silu", linear_class="bitlinear", tied=True, theta=1e6, rms_eps=1e-6,
                                            heads=4, kv_heads=2, head_dim=96)),
    # 4 kv heads of 32 (hidden 256 / 4 = 64): the engine's fused q/k/v + attention job with one thread
    "qwen3-fused": ("qwen3-bitnet", dict(act="silu", linear_class="autobitlinear", tied=False, theta=1e6,
                                         heads=8, kv_heads=4, head_dim=32)),
    # a LLaMA-family folder (Mistral-Nemo's shape: heads wider than hidden / heads) without QK-norm
    "llama-head-dim": ("llama-bitnet", dict(act="silu", linear_class="autobitlinear", tied=False, heads=4,
                                            kv_heads=2, head_dim=128)),
}
THREADS = {"qwen3-fused": 1}
NO_SUB_NORMS = ("llama-bitnet", "qwen3-bitnet", "qwen2-bitnet")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, sp_model_path):
    root = tmp_path_factory.mktemp("hf")
    return {name: (style, make_checkpoint(root / name, style, sp_model=sp_model_path, **kw))
            for name, (style, kw) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_engine_matches_transformers(checkpoints, name):
    from bllama.runtime import Runtime

    style, path = checkpoints[name]
    # imported on the fly; the exact model
    rt = Runtime.load(path, head="f16", kv_cache_dtype="float32", threads=THREADS.get(name))
    ids = rt.tokenizer.encode(PROMPT)
    assert len(ids) > 10
    ref = f16_embeddings(reference_model(path, style))
    with torch.no_grad():
        r = ref(torch.tensor([ids])).logits[0].float().numpy()
    assert_logits_match(r, rt.logits(ids))
    # the config came through
    cfg = rt.config
    hf = json.loads((path / "config.json").read_text())
    assert cfg["hidden_size"] == hf["hidden_size"] and cfg["num_kv_heads"] == hf["num_key_value_heads"]
    assert cfg["activation"] == hf["hidden_act"]
    assert cfg["sub_norms"] == (style not in NO_SUB_NORMS)
    assert cfg["tie_embeddings"] == hf["tie_word_embeddings"]
    assert cfg["head_dim"] == (hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    assert cfg["qk_norm"] == (hf["model_type"] == "qwen3")
    assert cfg["qkv_bias"] == (hf["model_type"] == "qwen2")


def test_wrong_scale_semantics_would_be_caught(checkpoints, tmp_path):
    """The comparison can fail: a bitlinear checkpoint relabelled autobitlinear must not match."""
    from bllama.runtime import Runtime

    style, src = checkpoints["bitnet-bitlinear-untied-silu-theta"]
    bad = tmp_path / "relabelled"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["linear_class"] = "autobitlinear"
    (bad / "config.json").write_text(json.dumps(cfg))
    rt = Runtime.load(bad, head="f16", kv_cache_dtype="float32")  # exact, so only the relabelling can fail it
    ids = rt.tokenizer.encode(PROMPT)
    ref = f16_embeddings(reference_model(src, style))
    with torch.no_grad():
        r = ref(torch.tensor([ids])).logits[0].float().numpy()
    with pytest.raises(AssertionError):
        assert_logits_match(r, rt.logits(ids))


def test_skipping_qk_norm_would_be_caught(checkpoints):
    """The comparison can fail: transformers' Qwen3 without its q_norm / k_norm (random weights around 1) is another
    model by more than the tolerance, so the match above shows the engine applies them."""
    from bllama.runtime import Runtime

    style, src = checkpoints["qwen3-head-dim"]
    rt = Runtime.load(src, head="f16", kv_cache_dtype="float32")
    ids = rt.tokenizer.encode(PROMPT)
    ref = f16_embeddings(reference_model(src, style))
    for layer in ref.model.layers:
        layer.self_attn.q_norm = torch.nn.Identity()
        layer.self_attn.k_norm = torch.nn.Identity()
    with torch.no_grad():
        r = ref(torch.tensor([ids])).logits[0].float().numpy()
    with pytest.raises(AssertionError):
        assert_logits_match(r, rt.logits(ids))


def test_llama3_rope_scaling_is_applied_and_kept(checkpoints, tmp_path):
    """Llama-3.1 / 3.2 folders (rope_type llama3) were refused. Our RoPE frequencies equal transformers'; the engine
    is closer to transformers with the scaling than the same folder without it (in this tiny random model RoPE moves
    the logits by less than the import tolerance, so the comparison is of the two distances); and the scaling
    survives GGUF and HF exports."""
    from bllama import bLlama
    from bllama.convert.gguf_export import export_gguf
    from bllama.convert.hf_export import export_hf
    from bllama.model.transformer import rope_divisors
    from bllama.runtime import Runtime

    style, src = checkpoints["llama3-rope"]
    ref = reference_model(src, style)
    model = bLlama.from_pretrained(src).eval()
    c = model.config
    scaling = json.loads((src / "config.json").read_text())["rope_parameters"]
    assert c.rope_scaling == {k: scaling[k] for k in c.rope_scaling}
    ours = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim))
    ours = ours / rope_divisors(c.head_dim, c.rope_theta, c.rope_scaling)
    theirs = ref.model.rotary_emb.inv_freq.double()
    assert torch.allclose(ours, theirs, rtol=1e-6) and not torch.allclose(ours * 1.1, theirs, rtol=0.05)

    plain = edited_copy(src, tmp_path / "plain", edit=lambda cfg: {
        **cfg, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
    rt = Runtime.load(src, head="f16", kv_cache_dtype="float32")
    ids = rt.tokenizer.encode(PROMPT * 3)  # ~90 positions: RoPE's effect grows with them
    with torch.no_grad():
        r = f16_embeddings(reference_model(src, style))(torch.tensor([ids])).logits[0].float().numpy()
        r32 = ref(torch.tensor([ids])).logits[0].float().numpy()
    rel = lambda logits: float((np.abs(r - logits).max(-1) / np.abs(r).max(-1)).mean())
    unscaled = rel(Runtime.load(plain, head="f16", kv_cache_dtype="float32").logits(ids))
    assert rel(rt.logits(ids)) * 4 < unscaled, (rel(rt.logits(ids)), unscaled)
    with torch.no_grad():  # the PyTorch model (f32 embedding, re-ternarized latent weights) against transformers
        logits = model.model(torch.tensor([ids]))[0].float().numpy()
    assert (np.abs(r32 - logits).max(-1) / np.abs(r32).max(-1)).mean() * 4 < unscaled

    gguf_path = export_gguf(model, model.pretrained.tokenizer, tmp_path / "m.gguf", force_arch="bitnet")
    assert bLlama.from_pretrained(gguf_path).config.rope_scaling == c.rope_scaling
    assert rel(Runtime.load(gguf_path, head="f16", kv_cache_dtype="float32").logits(ids)) * 4 < unscaled
    out = export_hf(model, model.pretrained.tokenizer, tmp_path / "hf")
    assert bLlama.from_pretrained(out).config.rope_scaling == c.rope_scaling
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.allclose(back.model.rotary_emb.inv_freq.double(), theirs)


def test_import_cli_and_gguf_contents(checkpoints, tmp_path):
    import gguf

    from bllama.runtime import Runtime

    _, path = checkpoints["2b4t-like"]
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "import", str(path), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rd = gguf.GGUFReader(str(out))
    f = {k: rd.fields[k] for k in rd.fields}
    s = lambda k: bytes(f[k].parts[f[k].data[0]]).decode()
    # ReLU^2 with sub-norms: bitnet.cpp's architecture, the one gguf_arch picks for `bllama export` too
    assert s("tokenizer.ggml.model") == "gpt2" and s("general.architecture") == "bitnet-b1.58"
    assert "tokenizer.ggml.merges" in f and "bllama.tokenizer.hf_json" in f
    assert "{% for m in messages %}" in s("tokenizer.chat_template")
    t = {t.name: t for t in rd.tensors}
    assert t["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.TQ2_0
    assert "output.weight" not in t  # tied
    # the engine and the on-the-fly path agree exactly
    a, b = Runtime.load(out), Runtime.load(path)
    ids = a.tokenizer.encode(PROMPT)
    np.testing.assert_array_equal(a.logits(ids), b.logits(ids))


def test_bpe_tokenizer_roundtrip_and_specials(checkpoints):
    from tokenizers import Tokenizer

    from bllama.runtime import Runtime

    _, path = checkpoints["2b4t-like"]
    rt = Runtime.load(path)
    ref = Tokenizer.from_file(str(path / "tokenizer.json"))
    text = "The quick brown fox: ternary weights, int8 activations! ünïcödé 🙂"
    ids = rt.tokenizer.encode(text)
    assert ids[0] == 0  # <|begin_of_text|> from config.json's bos_token_id
    assert ids[1:] == ref.encode(text, add_special_tokens=False).ids
    assert rt.tokenizer.decode(ids) == text
    # EOS from config.json ([1, 2]) and tokenizer_config (<|eot_id|> = 2): all stop generation
    assert rt.eos_ids == [1, 2]
    assert rt.tokenizer.id_to_piece(2) == SPECIALS[2]


def test_generate_stops_on_every_eos_id(checkpoints):
    """Force each EOS id to be the argmax by biasing the head row? Simpler: the engine stops on the ids we give;
    check Runtime hands all of them over and that generation stops when one of them is produced."""
    from bllama.runtime import Runtime

    _, path = checkpoints["2b4t-like"]
    rt = Runtime.load(path)
    ids = rt.tokenizer.encode(PROMPT)
    free = rt._engine.generate(ids, 20, stop_ids=[])
    for eos in rt.eos_ids:
        if eos in free:
            k = free.index(eos)
            rt._engine.generate(ids, 20, stop_ids=rt.eos_ids)
            assert rt._engine.generate(ids, 20, stop_ids=rt.eos_ids) == free[:k]
    # and via Runtime: with the first generated token declared an EOS, nothing is produced
    rt.eos_ids = [free[0]]
    assert rt.generate(PROMPT, max_new_tokens=5) == ""


def test_sentencepiece_checkpoint_tokenizer(checkpoints, sp_tokenizer):
    from bllama.runtime import Runtime

    _, path = checkpoints["1bitllm-padded"]
    rt = Runtime.load(path)
    assert rt.tokenizer.encode("hello world") == sp_tokenizer.encode("hello world")
    assert rt.eos_ids == [sp_tokenizer.eos_id]


def edited_copy(src, d, name="config.json", edit=None):
    """A copy of checkpoint folder `src` at `d`, its JSON file `name` replaced by edit(its content)."""
    shutil.copytree(src, d)
    if edit is not None:
        f = d / name
        f.write_text(json.dumps(edit(json.loads(f.read_text()) if f.exists() else None)))
    return d


def test_unsupported_checkpoints_say_what(checkpoints, tmp_path):
    from bllama.convert.hf_import import HFImportError, import_hf

    _, src = checkpoints["2b4t-like"]

    def variant(name, **changes):
        return edited_copy(src, tmp_path / name, edit=lambda cfg: {
            **{k: v for k, v in cfg.items() if k not in changes}, **{k: v for k, v in changes.items() if v is not None}})

    cases = [
        (variant("mistral", model_type="mistral", sliding_window=16), "sliding_window = 16"),
        (variant("gemma", model_type="gemma"), "model_type 'gemma'"),
        (variant("gptq", quantization_config={"quant_method": "gptq"}), "quant_method 'gptq'"),
        (variant("gelu", hidden_act="gelu"), "hidden_act 'gelu'"),
        (variant("yarn", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "RoPE type 'yarn'"),
        (variant("noquant", quantization_config=None), "full-precision"),
        (variant("rmsnorm", quantization_config={"quant_method": "bitnet", "use_rms_norm": True}), "use_rms_norm"),
        (variant("headdim", head_dim=32), "head_dim"),
    ]
    for d, msg in cases:
        with pytest.raises(HFImportError, match=msg):
            import_hf(d, tmp_path / "x.gguf", progress=False)
    d = tmp_path / "notok"
    shutil.copytree(src, d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(HFImportError, match="no tokenizer.model"):
        import_hf(d, tmp_path / "x.gguf", progress=False)
    with pytest.raises(FileNotFoundError):
        import_hf(tmp_path / "missing", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unpack_matches_transformers():
    from transformers.integrations.bitnet import pack_weights, unpack_weights

    from bllama.convert.hf_import import unpack_hf

    g = torch.Generator().manual_seed(1)
    w = torch.randint(-1, 2, (64, 48), generator=g).float()
    packed = pack_weights(w.clone())
    np.testing.assert_array_equal(unpack_hf(packed.numpy()), w.numpy().astype(np.int8))
    np.testing.assert_array_equal(unpack_weights(packed, torch.float32).numpy(), w.numpy())


def test_import_without_sub_norms_follows_the_export_rule(checkpoints, tmp_path):
    """A LLaMA-bitnet checkpoint (no sub-norms) is refused under any architecture unless forced, as `bllama export`
    refuses such a model (gguf_schema.gguf_arch); forced, the file says bllama.sub_norms = false. Runtime.load of
    the folder still works (its temporary file is for our engine only)."""
    from bllama.convert.gguf_schema import ArchitectureError
    from bllama.convert.hf_import import import_hf
    from bllama.runtime import Runtime

    _, path = checkpoints["llama-bitnet"]
    with pytest.raises(ArchitectureError, match="bllama import --force-arch bitnet"):  # the command being run
        import_hf(path, tmp_path / "x.gguf", progress=False)
    assert not list(tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "import", str(path), "-o", str(tmp_path / "x.gguf"),
                        "--quiet", "--force-arch", "bitnet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    forced, direct = Runtime.load(tmp_path / "x.gguf"), Runtime.load(path)
    assert forced._engine.metadata("general.architecture") == "bitnet"
    assert forced._engine.metadata("bllama.sub_norms") is False
    ids = direct.tokenizer.encode(PROMPT)
    assert (forced.logits(ids) == direct.logits(ids)).all()


def _refusals(d, match):
    """The folder is refused, naming `match`, by import, by from_pretrained (train --init-from) and by Runtime.load
    (generate): all read it through the same code, but each once had its own path to a raw traceback."""
    from bllama.convert.hf_import import HFImportError, import_hf
    from bllama.convert.hf_load import load_pretrained
    from bllama.runtime import Runtime

    for load in (lambda: import_hf(d, d.parent / "x.gguf", progress=False), lambda: load_pretrained(d),
                 lambda: Runtime.load(d)):
        with pytest.raises(HFImportError, match=match):
            load()
    assert not (d.parent / "x.gguf").exists()


def test_same_tensor_in_two_unindexed_files_is_refused(checkpoints, tmp_path):
    """model.safetensors beside an old copy, no index: the file sorting last used to win without a word."""
    _, src = checkpoints["2b4t-like"]
    d = edited_copy(src, tmp_path / "dup")
    shutil.copy(d / "model.safetensors", d / "zz_old.safetensors")
    _refusals(d, r"tensor '.*' is in both model.safetensors and zz_old.safetensors")


def test_incomplete_safetensors_say_so(checkpoints, tmp_path):
    _, src = checkpoints["2b4t-like"]
    d = edited_copy(src, tmp_path / "trunc")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])
    _refusals(d, "model.safetensors is not a complete safetensors file")
    d = edited_copy(src, tmp_path / "lfs")
    (d / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n")
    _refusals(d, "model.safetensors is a Git LFS pointer.*git lfs pull")


def test_sharded_checkpoint_with_a_missing_shard_says_so(checkpoints, tmp_path):
    """An interrupted download of a sharded checkpoint: the index names a file that is not there."""
    from safetensors.torch import load_file, save_file

    _, src = checkpoints["2b4t-like"]
    d = edited_copy(src, tmp_path / "sharded")
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(sd)
    weight_map = {k: f"model-0000{1 + i % 3}-of-00003.safetensors" for i, k in enumerate(names)}
    for f in sorted(set(weight_map.values())):
        save_file({k: sd[k] for k in names if weight_map[k] == f}, str(d / f), metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    from bllama.convert.hf_import import import_hf

    import_hf(d, tmp_path / "ok.gguf", progress=False)  # complete, it converts
    (d / "model-00002-of-00003.safetensors").unlink()
    _refusals(d, r"model.safetensors.index.json names 1 shard\(s\) that are not in .*: model-00002-of-00003"
                 r".safetensors \(incomplete download")
    # a shard from another download: the index promises tensors it does not hold
    save_file({k: sd[k] for k in names[:1]}, str(d / "model-00002-of-00003.safetensors"), metadata={"format": "pt"})
    _refusals(d, r"model.safetensors.index.json puts tensor '.*' \(\d+ such\) in model-00002-of-00003.safetensors, "
                 r"which does not hold it")


@pytest.mark.parametrize("name, edit, match", [
    ("config.json", lambda c: [c], "config.json: expected a JSON object"),
    ("config.json", lambda c: {**c, "quantization_config": "bitnet"}, "'quantization_config' = 'bitnet' is not an"),
    ("config.json", lambda c: {**c, "num_attention_heads": 0}, "'num_attention_heads' = 0 is not a positive"),
    ("config.json", lambda c: {**c, "num_attention_heads": None}, "'num_attention_heads' is null"),
    ("config.json", lambda c: {**c, "num_key_value_heads": 3}, "not divisible by num_key_value_heads 3"),
    ("config.json", lambda c: {**c, "hidden_size": "256"}, "'hidden_size' = '256' is not a positive integer"),
    ("config.json", lambda c: {**c, "rms_norm_eps": None}, "'rms_norm_eps' is null"),
    ("config.json", lambda c: {**c, "rope_parameters": {"rope_type": "default", "rope_theta": "abc"}},
     "'rope_theta' = 'abc' is not a positive number"),
    ("config.json", lambda c: {**c, "eos_token_id": "<|eot_id|>"}, "config.json eos_token_id = '<|eot_id|>'"),
    ("generation_config.json", lambda g: {"eos_token_id": [2, "x"]}, "generation_config.json eos_token_id"),
    ("generation_config.json", lambda g: "x", "generation_config.json: expected a JSON object"),
    ("tokenizer_config.json", lambda t: [1, 2], "tokenizer_config.json: expected a JSON object"),
    ("tokenizer_config.json", lambda t: {**t, "chat_template": ["{{ x }}"]}, "'chat_template' is a list, but not"),
    ("tokenizer_config.json", lambda t: {**t, "add_bos_token": "yes"}, "'add_bos_token' = 'yes' is not true"),
    ("model.safetensors.index.json", lambda _: {"weight_map": ["model.safetensors"]}, "'weight_map' must be"),
])
def test_malformed_config_files_name_the_file_and_field(checkpoints, tmp_path, name, edit, match):
    _, src = checkpoints["2b4t-like"]
    _refusals(edited_copy(src, tmp_path / "bad", name, edit), match)


@pytest.mark.parametrize("edit, match", [
    (lambda c: {**c, "vocab_size": c["vocab_size"] + 12}, "vocab_size .* but model.embed_tokens.weight has"),
    (lambda c: {**c, "tie_word_embeddings": False}, "tie_word_embeddings is false but there is no 'lm_head"),
    (lambda c: {**c, "num_hidden_layers": 1}, r"num_hidden_layers is 1 but the tensors have layers up to "
                                              r"model.layers.1"),
])
def test_config_contradicting_the_tensors_is_refused(checkpoints, tmp_path, edit, match):
    _, src = checkpoints["2b4t-like"]
    _refusals(edited_copy(src, tmp_path / "bad", edit=edit), match)


def test_tied_config_with_a_separate_head(checkpoints, tmp_path):
    """tie_word_embeddings true beside an lm_head.weight: transformers versions disagree on which matrix the head
    uses, so a differing one is refused; an equal copy is the same model either way and loads tied."""
    import gguf
    from safetensors.torch import load_file, save_file

    from bllama.convert.hf_import import import_hf

    _, src = checkpoints["bitnet-bitlinear-untied-silu-theta"]
    _refusals(edited_copy(src, tmp_path / "differs", edit=lambda c: {**c, "tie_word_embeddings": True}),
              "tie_word_embeddings is true but 'lm_head.weight' differs")
    d = edited_copy(src, tmp_path / "equal", edit=lambda c: {**c, "tie_word_embeddings": True})
    sd = load_file(str(d / "model.safetensors"))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, str(d / "model.safetensors"))
    out = import_hf(d, tmp_path / "equal.gguf", progress=False)
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(str(out)).tensors}


def _no_post_processor(tokenizer_json):
    return {**tokenizer_json, "post_processor": None}


@pytest.mark.parametrize("case, tok_config, tok_json, bos", [
    ("llama3-post-processor", {}, None, True),  # the fixture's TemplateProcessing puts <|begin_of_text|> first
    ("no-post-processor", {}, _no_post_processor, False),
    ("add_bos_token-false", {"add_bos_token": False}, None, False),
    ("add_bos_token-true", {"add_bos_token": True}, _no_post_processor, True),
    ("smollm-gpt2", {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|end_of_text|>",
                     "eos_token": "<|end_of_text|>"}, _no_post_processor, False),
    ("llama-fast-class", {"tokenizer_class": "LlamaTokenizerFast"}, _no_post_processor, True),
])
def test_bpe_bos_follows_the_folder(checkpoints, tmp_path, case, tok_config, tok_json, bos):
    """BOS is added as the folder says (add_bos_token, else the post-processor, else the class), in the folder's
    tokenizer and in the imported file; where transformers' versions agree, its ids are the reference."""
    from transformers import AutoTokenizer

    from bllama.convert.hf_import import import_hf
    from bllama.runtime import Runtime

    _, src = checkpoints["2b4t-like"]
    d = edited_copy(src, tmp_path / case, "tokenizer_config.json", lambda t: {**t, **tok_config})
    if tok_json:
        f = d / "tokenizer.json"
        f.write_text(json.dumps(tok_json(json.loads(f.read_text()))))
    ids = Runtime.load(d).tokenizer.encode(PROMPT)
    assert (ids[0] == 0) == bos
    assert Runtime.load(import_hf(d, tmp_path / "m.gguf", progress=False)).tokenizer.encode(PROMPT) == ids
    # transformers 5 ignores add_bos_token beside a post-processor (4.x honours it for LLaMA classes only); the
    # folder's explicit word wins here, as in llama.cpp's converter
    if case in ("llama3-post-processor", "smollm-gpt2", "no-post-processor"):
        assert AutoTokenizer.from_pretrained(d)(PROMPT)["input_ids"] == ids


@pytest.mark.parametrize("add_bos", [None, False])
def test_sentencepiece_add_bos_token(checkpoints, tmp_path, add_bos):
    """A LlamaTokenizer folder's add_bos_token false is honoured (it was ignored), in the imported file too; without
    it, LlamaTokenizer's documented default adds BOS."""
    from bllama.convert.hf_import import import_hf
    from bllama.runtime import Runtime

    _, src = checkpoints["1bitllm-padded"]
    tc = {"tokenizer_class": "LlamaTokenizer", **({} if add_bos is None else {"add_bos_token": add_bos})}
    d = edited_copy(src, tmp_path / "sp", "tokenizer_config.json", lambda _: tc)
    rt = Runtime.load(d)
    ids = rt.tokenizer.encode(PROMPT)
    assert (ids[0] == rt.tokenizer.bos_id) == (add_bos is None)
    assert Runtime.load(import_hf(d, tmp_path / "m.gguf", progress=False)).tokenizer.encode(PROMPT) == ids
    if add_bos is False:
        from transformers import AutoTokenizer

        assert AutoTokenizer.from_pretrained(d)(PROMPT)["input_ids"] == ids


def test_sentencepiece_add_bos_survives_run_folder_and_export(sp_model_path, tmp_path):
    """An add_bos = False SentencePiece tokenizer (from such a folder) keeps it through a training run's folder and
    into an exported GGUF file (both used to say add BOS)."""
    import gguf

    from bllama.convert.gguf_schema import add_tokenizer
    from bllama.convert.hf_load import _GGUFMetadata, _reader
    from bllama.tokenizers.from_gguf import tokenizer_from_gguf
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer
    from bllama.train.run_tokenizer import load_run_tokenizer, save_tokenizer_files

    tok = SentencePieceTokenizer(sp_model_path)
    tok.add_bos = False
    save_tokenizer_files(tmp_path, tok)
    assert load_run_tokenizer(tmp_path / "last.ckpt")[0].encode(PROMPT) == tok.encode(PROMPT) != \
        SentencePieceTokenizer(sp_model_path).encode(PROMPT)
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "bitnet")
    add_tokenizer(w, tok)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    assert tokenizer_from_gguf(_GGUFMetadata(_reader(tmp_path / "t.gguf"))).encode(PROMPT) == tok.encode(PROMPT)


def test_fields_config_json_leaves_out_take_the_model_types_defaults(checkpoints, tmp_path):
    """A BitNet config.json without hidden_act / rope_theta / rms_norm_eps is ReLU^2, theta 500000, eps 1e-5 in
    transformers (BitNetConfig's defaults); the importer and from_pretrained took LLaMA's SiLU, 10000 and 1e-6: both
    loaded the folder as another model (logits off by ~14% of their scale) without a word."""
    from bllama import bLlama
    from bllama.runtime import Runtime

    style, src = checkpoints["2b4t-like"]
    trimmed = edited_copy(src, tmp_path / "trimmed", edit=lambda cfg: {
        k: v for k, v in cfg.items() if k not in ("hidden_act", "rope_parameters", "rope_theta", "rms_norm_eps")})
    rt = Runtime.load(trimmed, head="f16", kv_cache_dtype="float32")
    assert (rt.config["activation"], rt.config["rope_theta"]) == ("relu2", 500000.0)
    ids = rt.tokenizer.encode(PROMPT)
    ref = f16_embeddings(reference_model(trimmed, style))
    assert (ref.config.hidden_act, ref.config.rms_norm_eps) == ("relu2", 1e-5)
    with torch.no_grad():
        r = ref(torch.tensor([ids])).logits[0].float().numpy()
    assert_logits_match(r, rt.logits(ids))
    m = bLlama.from_pretrained(trimmed)
    assert (m.config.activation, m.config.rope_theta, m.config.rms_eps) == ("relu2", 500000.0, 1e-5)
    # a Mistral folder without sliding_window has transformers' 4096-token window: refused like an explicit one
    from bllama.convert.hf_import import HFImportError, read_config_json

    mistral = edited_copy(src, tmp_path / "mistral", edit=lambda cfg: {
        **{k: v for k, v in cfg.items() if k not in ("sliding_window", "max_position_embeddings")},
        "model_type": "mistral"})
    assert read_config_json(mistral)["sliding_window"] == 4096
    with pytest.raises(HFImportError, match="sliding_window = 4096"):
        bLlama.from_pretrained(mistral)
    # a trimmed Qwen2 config: Qwen2Config's 32768-token context, not the 2048 fallback
    from transformers import Qwen2Config

    _, qwen2 = checkpoints["qwen2-bitnet"]
    left_out = ("max_position_embeddings", "rms_norm_eps", "hidden_act", "rope_parameters", "rope_theta")
    got = read_config_json(edited_copy(qwen2, tmp_path / "qwen2-trimmed",
                                       edit=lambda cfg: {k: v for k, v in cfg.items() if k not in left_out}))
    want = Qwen2Config()
    assert [got[k] for k in left_out[:3]] + [got["rope_theta"]] == \
        [want.max_position_embeddings, want.rms_norm_eps, want.hidden_act, want.rope_parameters["rope_theta"]]


def test_modules_kept_in_full_precision_are_refused(checkpoints, tmp_path):
    """quantization_config.modules_to_not_convert naming a projection makes transformers run it as a full-precision
    nn.Linear; the importer and from_pretrained ternarized its float weight instead (a folder with layer 0's
    down_proj kept in full precision loaded with logits 19% of their scale away from transformers'). Refused now;
    the usual ["lm_head"] still loads."""
    from bllama import bLlama
    from bllama.convert.hf_import import HFImportError, import_hf

    _, src = checkpoints["2b4t-like"]

    def keeping(name, keep):
        return edited_copy(src, tmp_path / name, edit=lambda cfg: {
            **cfg, "quantization_config": {**cfg["quantization_config"], "modules_to_not_convert": keep}})

    for name, keep, what in [("one", ["lm_head", "model.layers.0.mlp.down_proj"], "model.layers.0.mlp.down_proj"),
                             ("suffix", ["o_proj"], "model.layers.0.self_attn.o_proj"),
                             ("regex", [r"model\.layers\.1\..*"], "model.layers.1.self_attn.q_proj"),
                             ("prefix", ["model.layers.1"], "model.layers.1.self_attn.q_proj")]:
        d = keeping(name, keep)
        with pytest.raises(HFImportError, match=f"keeps '{re.escape(what)}' in full precision"):
            import_hf(d, tmp_path / "x.gguf", progress=False)
        with pytest.raises(HFImportError, match="modules_to_not_convert"):
            bLlama.from_pretrained(d)
    d = keeping("head-only", ["lm_head", "model.layers.11.mlp"])  # layer 11 does not exist; layer 1 must not match
    import_hf(d, tmp_path / "ok.gguf", progress=False)


def _tokenizer_folder(d, tok_json: str, tok_config: dict):
    """A folder holding only a tokenizer (tokenizer.json + tokenizer_config.json), no model."""
    d.mkdir(parents=True)
    (d / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return d


def _folder_and_gguf_tokenizers(d, tmp_path, vocab=320):
    """The folder's tokenizer as a training run gets it (bLlama.from_pretrained), and as the file `bllama import`
    writes from it gives it back (Runtime.load of the GGUF)."""
    import gguf

    from bllama.convert.hf_import import _add_tokenizer, load_hf_tokenizer
    from bllama.convert.hf_load import _GGUFMetadata, _hf_tokenizer, _reader
    from bllama.tokenizers.from_gguf import tokenizer_from_gguf

    plan = type("Plan", (), {"vocab": vocab, "bos_id": None, "eos_ids": []})()
    tok, kind, template = load_hf_tokenizer(d, plan)
    w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "bitnet")
    _add_tokenizer(w, tok, kind, plan, template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return _hf_tokenizer(d, {}, vocab).tokenizer, tokenizer_from_gguf(_GGUFMetadata(_reader(tmp_path / "tok.gguf")))


def test_bpe_bos_named_only_by_the_post_processor(tmp_path):
    """A LLaMA-3 style folder whose BOS id is named nowhere but in its post-processor's template (no bos_token,
    no config.json bos_token_id) got no BOS at all; the template's id is taken."""
    from transformers import AutoTokenizer

    from hf_checkpoints import bpe_tokenizer_json

    d = _tokenizer_folder(tmp_path / "tok", bpe_tokenizer_json(), {"tokenizer_class": "PreTrainedTokenizerFast"})
    ref = AutoTokenizer.from_pretrained(d)(PROMPT)["input_ids"]
    assert ref[0] == 0  # <|begin_of_text|>, as the template says
    for tok in _folder_and_gguf_tokenizers(d, tmp_path):
        assert tok.bos_id == 0
        assert tok.encode(PROMPT) == ref


def _eos_last(tok_json: str) -> str:
    """tok_json with a post-processor that puts <|begin_of_text|> before and <|end_of_text|> after every text."""
    from tokenizers import Tokenizer, processors

    t = Tokenizer.from_str(tok_json)
    bos, eos = SPECIALS[0], SPECIALS[1]
    t.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B:1 {eos}:1",
                                                     special_tokens=[(bos, 0), (eos, 1)])
    return t.to_str()


@pytest.mark.parametrize("case", ["template", "add_eos_token"])
def test_bpe_eos_after_every_text_follows_the_folder(tmp_path, case):
    """A folder whose tokenizer ends every text with EOS (a template "<s> $A </s>", or add_eos_token) lost that
    EOS: in the folder's tokenizer, in the imported file (tokenizer.ggml.add_eos_token was always false) and in a
    training run's folder. EOS goes last as transformers puts it, and a bare piece of text (add_bos=False) gets
    none, as before."""
    from transformers import AutoTokenizer

    from bllama.train.run_tokenizer import load_run_tokenizer, save_tokenizer_files
    from hf_checkpoints import bpe_tokenizer_json

    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[1]}
    if case == "template":
        d = _tokenizer_folder(tmp_path / case, _eos_last(bpe_tokenizer_json()), tc)
    else:
        d = _tokenizer_folder(tmp_path / case, bpe_tokenizer_json(), {**tc, "add_eos_token": True})
    ref = AutoTokenizer.from_pretrained(d)
    folder, from_gguf = _folder_and_gguf_tokenizers(d, tmp_path)
    save_tokenizer_files(tmp_path / "run", folder)
    run, _ = load_run_tokenizer(tmp_path / "run" / "last.ckpt")
    for tok in (folder, from_gguf, run):
        ids = tok.encode(PROMPT)
        if case == "template":  # transformers 5 drops add_eos_token beside a post-processor (see above)
            assert ids == ref(PROMPT)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 1 and tok.eos_id == 1
        assert tok.encode(PROMPT, add_bos=False) == ids[1:-1]
        assert tok.encode(PROMPT, add_eos=False) == ids[:-1]


def test_sentencepiece_add_eos_token(checkpoints, tmp_path):
    """A LlamaTokenizer folder's add_eos_token true (every text ends with </s>) was ignored, in the imported file
    too."""
    from transformers import AutoTokenizer

    from bllama.convert.hf_import import import_hf
    from bllama.runtime import Runtime

    _, src = checkpoints["1bitllm-padded"]
    d = edited_copy(src, tmp_path / "sp", "tokenizer_config.json",
                    lambda _: {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                               "add_bos_token": True, "add_eos_token": True})
    ids = Runtime.load(d).tokenizer.encode(PROMPT)
    assert ids == AutoTokenizer.from_pretrained(d)(PROMPT)["input_ids"]
    assert ids[-1] == 2
    assert Runtime.load(import_hf(d, tmp_path / "m.gguf", progress=False)).tokenizer.encode(PROMPT) == ids


def test_sentencepiece_folder_with_tokens_added_in_tokenizer_json(sp_model_path, tmp_path):
    """A LLaMA-2 style folder (tokenizer.model) whose tokenizer.json adds ChatML's tokens (a common fine-tune) was
    read from tokenizer.model alone: <|im_start|> became a dozen text pieces and the model's rows for the added ids
    were never used. transformers reads the tokenizer.json; so do we now. The same tokens listed only in
    added_tokens.json are refused by name."""
    from transformers import AutoTokenizer

    from bllama.convert.hf_import import HFImportError, load_hf_tokenizer

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sp_model_path, src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True}))
    hf = AutoTokenizer.from_pretrained(src)
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    d = tmp_path / "chatml"
    hf.save_pretrained(d)
    shutil.copy(sp_model_path, d / "tokenizer.model")  # as hub folders written by transformers 4 have it
    ref = AutoTokenizer.from_pretrained(d)
    text = "<|im_start|>user\nOnce upon a time<|im_end|>"
    assert ref(text)["input_ids"][1] == len(ref) - 2  # the added id: what the model was fine-tuned with
    for tok in _folder_and_gguf_tokenizers(d, tmp_path, vocab=len(ref)):
        assert tok.encode(text) == ref(text)["input_ids"]
        assert tok.special_pieces()["<|im_end|>"] == len(ref) - 1
    (d / "tokenizer.json").unlink()
    (d / "added_tokens.json").write_text(json.dumps({"<|im_start|>": len(ref) - 2, "<|im_end|>": len(ref) - 1}))
    with pytest.raises(HFImportError, match=r"added_tokens.json adds tokens that tokenizer.model does not have"):
        load_hf_tokenizer(d, type("Plan", (), {"vocab": len(ref), "bos_id": None, "eos_ids": []})())


def test_qwen3_exports_round_trip_and_every_engine_path_agrees(checkpoints, tmp_path):
    """A Qwen3 folder with QK-norm and heads of 96 (hidden 256 / 4 heads): bLlama computes transformers' function,
    its GGUF export (forced: no llama.cpp graph has QK-norm under `bitnet`) says key_length 96 and carries the norms,
    the engine runs it as PyTorch does in the prompt path, single-token decode and batched decode, the file loads
    back as the same model, and the HF export is a Qwen3ForCausalLM transformers runs the same."""
    import gguf
    from transformers import AutoModelForCausalLM

    from bllama import bLlama
    from bllama.convert.gguf_export import export_gguf
    from bllama.convert.gguf_schema import ArchitectureError, gguf_arch
    from bllama.convert.hf_export import export_hf
    from bllama.runtime import Runtime

    style, src = checkpoints["qwen3-head-dim"]
    m = bLlama.from_pretrained(src).eval()
    c = m.config
    assert (c.attn_head_dim, c.qk_norm, c.sub_norms, c.head_dim, c.attn_dim) == (96, True, False, 96, 384)
    f16_embeddings(m.model)  # as the GGUF file holds them
    tok = m.pretrained.tokenizer
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        ours = m.model(torch.tensor([ids]))[0].float().numpy()
        ref = fp16_scales(f16_embeddings(reference_model(src, style)), "bitlinear")  # bLlama's scales are fp16
        r = ref(torch.tensor([ids])).logits[0].float().numpy()
    assert_equal_but_for_ties(r, ours)

    with pytest.raises(ArchitectureError, match="force-arch bitnet"):
        export_gguf(m, tok, tmp_path / "m.gguf")
    with pytest.raises(ArchitectureError, match="QK-norm"):  # with sub-norms, llama.cpp's graph still lacks it
        gguf_arch(c.replace(sub_norms=True), "tq2_0")
    path = export_gguf(m, tok, tmp_path / "m.gguf", force_arch="bitnet")
    rd = gguf.GGUFReader(str(path))
    assert int(rd.fields["bitnet.attention.key_length"].contents()) == 96
    assert int(rd.fields["bitnet.attention.value_length"].contents()) == 96
    t = {t.name: t for t in rd.tensors}
    assert t["blk.1.attn_k_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(t["blk.1.attn_q_norm.weight"].shape) == [96]
    rt = Runtime.load(path, head="f16", kv_cache_dtype="float32")
    assert (rt.config["head_dim"], rt.config["qk_norm"]) == (96, True)
    assert_equal_but_for_ties(ours, rt.logits(ids))
    # decode, one token at a time: its greedy tokens are the prompt path's argmax at every step
    gen = rt._engine.generate(ids, 6, stop_ids=[])
    assert len(gen) == 6
    full = rt.logits(ids + gen[:-1])
    assert list(full[len(ids) - 1:].argmax(-1)) == gen
    # batched decode (several sequences' rows in one step) gives each sequence's own tokens
    batch = Runtime.load(path, head="f16", kv_cache_dtype="float32", max_sequences=2)
    assert batch._engine.generate_batch([ids, ids[:7]], 6, stop_ids=[]) == [gen, rt._engine.generate(ids[:7], 6,
                                                                                                     stop_ids=[])]

    back = bLlama.from_pretrained(path).eval()
    assert (back.config.attn_head_dim, back.config.qk_norm) == (96, True)
    for (_, a), (_, b) in zip(m.model.bitlinears(), back.model.bitlinears()):
        assert torch.equal(a.ternary_codes(), b.ternary_codes())
    assert torch.equal(back.model.layers[1].attn.k_norm.weight, m.model.layers[1].attn.k_norm.weight)

    out = export_hf(m, tok, tmp_path / "hf")
    hf = json.loads((out / "config.json").read_text())
    assert (hf["model_type"], hf["architectures"], hf["head_dim"]) == ("qwen3", ["Qwen3ForCausalLM"], 96)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        assert_equal_but_for_ties(ours, theirs(torch.tensor([ids])).logits[0].float().numpy())
    again = bLlama.from_pretrained(out).config
    assert (again.attn_head_dim, again.qk_norm, again.sub_norms) == (96, True, False)


def test_llama_head_dim_exports_as_llama(checkpoints, tmp_path):
    """A LLaMA folder with an explicit head_dim (no QK-norm) goes back out as a LlamaForCausalLM with that head_dim;
    a b1.58 model with sub-norms and heads of another width is refused by HF export (transformers' BitNet sizes
    its attention sub-norm by hidden_size)."""
    from transformers import AutoModelForCausalLM

    from bllama import bLlama
    from bllama.convert.hf_export import export_hf

    _, src = checkpoints["llama-head-dim"]
    m = bLlama.from_pretrained(src).eval()
    assert (m.config.head_dim, m.config.attn_dim, m.config.qk_norm) == (128, 512, False)
    out = export_hf(m, m.pretrained.tokenizer, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM" and theirs.config.head_dim == 128
    ids = m.pretrained.tokenizer.encode(PROMPT)
    with torch.no_grad():
        assert_equal_but_for_ties(m.model(torch.tensor([ids]))[0].float().numpy(),
                                  theirs(torch.tensor([ids])).logits[0].float().numpy())
    with pytest.raises(ValueError, match="attention sub-norm by hidden_size"):
        export_hf(bLlama(m.config.replace(sub_norms=True)), m.pretrained.tokenizer, tmp_path / "hf2")


@pytest.mark.parametrize("edit, match", [
    (lambda c: {**c, "use_sliding_window": True}, "use_sliding_window = true"),
    (lambda c: {**c, "layer_types": ["full_attention", "sliding_attention"]}, "layer_types has 'sliding_attention'"),
    (lambda c: {**c, "attention_bias": True}, "attention_bias = true"),
    (lambda c: {**c, "head_dim": 64}, r"q_proj.weight' has shape \[96, 256\], but .* head_dim 64 need 256 outputs"),
    (lambda c: {**c, "head_dim": 95}, "head_dim 95 must be even"),
])
def test_qwen3_variants_the_model_does_not_compute_are_refused(checkpoints, tmp_path, edit, match):
    _, src = checkpoints["qwen3-head-dim"]
    _refusals(edited_copy(src, tmp_path / "bad", edit=edit), match)


@pytest.mark.parametrize("change, match", [
    ("drop", r"missing tensor 'model.layers.1.self_attn.k_norm.weight' \(Qwen3's QK-norm\)"),
    ("shape", r"'model.layers.1.self_attn.k_norm.weight' has shape \[48\], expected \[96\]"),
])
def test_qwen3_qk_norm_tensors_are_checked(checkpoints, tmp_path, change, match):
    from safetensors.torch import load_file, save_file

    _, src = checkpoints["qwen3-head-dim"]
    d = edited_copy(src, tmp_path / "bad")
    sd = load_file(str(d / "model.safetensors"))
    name = "model.layers.1.self_attn.k_norm.weight"
    if change == "drop":
        del sd[name]
    else:
        sd[name] = sd[name][:48].clone()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    _refusals(d, match)
    # and a LLaMA folder may not carry them (its transformers class would ignore them)
    if change == "drop":
        _refusals(edited_copy(src, tmp_path / "llama", edit=lambda c: {**c, "model_type": "llama",
                                                                        "architectures": ["LlamaForCausalLM"]}),
                  r"self_attn.k_norm.weight' \(\d+ such\) is not part of a LLaMA / BitNet block")


def test_train_init_from_a_full_precision_qwen3(tmp_path, capsys):
    """bllama train --init-from a full-precision Qwen3 folder (quantize=False: exactly transformers' function; the
    default: its b1.58 conversion) runs a step and exports a file the engine runs with the folder's heads."""
    from bllama import bLlama
    from bllama.cli import main
    from bllama.runtime import Runtime

    from hf_checkpoints import TEXT

    src = make_checkpoint(tmp_path / "qwen3", "qwen3", act="silu", tied=False, heads=4, kv_heads=2, head_dim=96,
                          theta=1e6, rms_eps=1e-6)
    fp = bLlama.from_pretrained(src, quantize=False).eval()
    ids = fp.pretrained.tokenizer.encode(PROMPT)
    with torch.no_grad():
        r = reference_model(src, "qwen3")(torch.tensor([ids])).logits[0].float().numpy()
        ours = fp.model(torch.tensor([ids]))[0].float().numpy()
    assert (np.abs(r - ours).max(-1) / np.abs(r).max(-1)).max() <= 1e-4
    data = tmp_path / "text.txt"
    data.write_text(TEXT * 2, encoding="utf-8")
    out = tmp_path / "run"
    main(["train", str(data), "--init-from", str(src), "--batch-size", "2", "--set", "seq_len=32", "--max-steps", "1",
          "--out", str(out), "--accelerator", "cpu", "--precision", "32-true", "--num-workers", "0", "--no-compile"])
    main(["export", str(out), "-o", str(tmp_path / "m.gguf"), "--force-arch", "bitnet"])
    rt = Runtime.load(tmp_path / "m.gguf")
    assert (rt.config["head_dim"], rt.config["qk_norm"], rt.config["sub_norms"]) == (96, True, False)
    assert len(rt._engine.generate(ids, 3, stop_ids=[])) == 3


def _zero_biases(src, d):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, d)
    sd = load_file(str(d / "model.safetensors"))
    save_file({k: v * 0 if k.endswith(".bias") else v for k, v in sd.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    return d


def test_qwen2_biases_are_what_the_comparison_checks(checkpoints, tmp_path):
    """The Qwen2 cases can fail: the same folder with its q/k/v biases zeroed (the engine dropping them) is far
    outside the tolerance, and the PyTorch model (from_pretrained) with its biases matches transformers too."""
    from bllama import bLlama
    from bllama.runtime import Runtime

    style, src = checkpoints["qwen2-bitnet"]
    ref = f16_embeddings(reference_model(src, style))
    rt = Runtime.load(src, head="f16", kv_cache_dtype="float32")
    ids = rt.tokenizer.encode(PROMPT)
    with torch.no_grad():
        r = ref(torch.tensor([ids])).logits[0].float().numpy()
    unbiased = Runtime.load(_zero_biases(src, tmp_path / "zeroed"), head="f16", kv_cache_dtype="float32")
    with pytest.raises(AssertionError):
        assert_logits_match(r, unbiased.logits(ids))
    model = bLlama.from_pretrained(src).eval()
    assert model.config.qkv_bias and not model.config.sub_norms and model.pretrained.source == "hf:qwen2-bitnet"
    attn = model.model.layers[0].attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None and model.model.layers[0].mlp.up_proj.bias is None
    with torch.no_grad():  # its scales are fp16-rounded (latent weights re-ternarized): ~1e-3, not the engine's 1e-5
        assert_close_logits(r, f16_embeddings(model.model)(torch.tensor([ids]))[0].float().numpy())


def assert_close_logits(ref_logits: np.ndarray, ours: np.ndarray, tol: float = 1e-2):
    rel = np.abs(ref_logits - ours).max(-1) / np.abs(ref_logits).max(-1)
    assert rel.max() < tol, rel
    assert np.mean(ref_logits.argmax(-1) == ours.argmax(-1)) >= 0.9


def test_qwen2_gguf_and_hf_exports_keep_the_biases(checkpoints, tmp_path):
    """GGUF: written as llama.cpp's qwen2 names them (blk.N.attn_q.bias, f32 [out]) under --force-arch bitnet (no
    ternary llama.cpp graph has them), read back by the engine and by from_pretrained. HF: a Qwen2ForCausalLM that
    transformers loads with the same function and our import reads back."""
    import gguf
    from transformers import AutoModelForCausalLM

    from bllama import bLlama
    from bllama.convert.gguf_export import export_gguf
    from bllama.convert.gguf_schema import ArchitectureError, gguf_arch
    from bllama.convert.hf_export import export_hf
    from bllama.runtime import Runtime

    style, src = checkpoints["qwen2-bitnet-bitlinear"]
    model = bLlama.from_pretrained(src).eval()
    ids = Runtime.load(src).tokenizer.encode(PROMPT)
    with torch.no_grad():
        r = f16_embeddings(reference_model(src, style))(torch.tensor([ids])).logits[0].float().numpy()
        ours = model.model(torch.tensor([ids]))[0].float().numpy()
    tok = model.pretrained.tokenizer
    with pytest.raises(ArchitectureError, match="force_arch='bitnet'"):  # no sub-norms: refused before the biases
        export_gguf(model, tok, tmp_path / "refused.gguf")
    with pytest.raises(ArchitectureError, match="q/k/v biases .*--force-arch bitnet"):
        gguf_arch(model.config.replace(sub_norms=True), "tq2_0")
    path = export_gguf(model, tok, tmp_path / "m.gguf", force_arch="bitnet")
    t = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    kv = model.config.num_kv_heads * model.config.head_dim
    for name, n in (("attn_q", model.config.hidden_size), ("attn_k", kv), ("attn_v", kv)):
        b = t[f"blk.1.{name}.bias"]
        assert b.tensor_type == gguf.GGMLQuantizationType.F32 and list(b.shape) == [n]
    assert not any(n.endswith(".bias") and "attn_output" in n for n in t)
    assert_close_logits(r, Runtime.load(path, head="f16", kv_cache_dtype="float32").logits(ids))
    assert_close_logits(r, ours)
    back = bLlama.from_pretrained(path)
    assert back.config.qkv_bias
    for a, b in zip(model.model.layers, back.model.layers):
        for p in ("q_proj", "k_proj", "v_proj"):
            assert torch.equal(getattr(a.attn, p).bias, getattr(b.attn, p).bias)

    out = export_hf(model, tok, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].float().numpy()
    assert_logits_match(ours, theirs)  # the same weights; the bias divided by s and multiplied back
    again = bLlama.from_pretrained(out)
    assert again.config.qkv_bias
    torch.testing.assert_close(again.model.layers[0].attn.k_proj.bias, model.model.layers[0].attn.k_proj.bias)
    with pytest.raises(ValueError, match="sub-norms and q/k/v biases"):
        export_hf(bLlama(model.config.replace(sub_norms=True)), tok, tmp_path / "hf2")


def test_full_precision_qwen2_loads_for_conversion_and_is_refused_by_import(tmp_path, sp_model_path):
    """A plain Qwen2 folder (Qwen2.5-0.5B's form) is a conversion start (from_pretrained / train --init-from): with
    quantize=False it is transformers' function; bllama import / Runtime.load refuse it, saying how to convert."""
    from bllama import bLlama
    from bllama.convert.hf_import import HFImportError, import_hf

    src = make_checkpoint(tmp_path / "qwen2", "qwen2", act="silu", tied=True, theta=1000000.0)
    model = bLlama.from_pretrained(src, quantize=False).eval()
    assert model.config.qkv_bias and model.pretrained.source == "hf:qwen2"
    ids = model.pretrained.tokenizer.encode(PROMPT)
    with torch.no_grad():
        r = reference_model(src, "qwen2")(torch.tensor([ids])).logits[0].float().numpy()
        ours = model.model(torch.tensor([ids]))[0].float().numpy()
    np.testing.assert_allclose(ours, r, rtol=1e-4, atol=1e-4 * np.abs(r).max())
    assert bLlama.from_pretrained(src).config.quantize  # the default: latent weights of BitLinear layers
    with pytest.raises(HFImportError, match="full-precision Qwen2 is not a b1.58 model"):
        import_hf(src, tmp_path / "x.gguf", progress=False)


def test_qwen2_what_would_be_silently_wrong_is_refused(checkpoints, tmp_path):
    """Sliding-window attention, biases other than q/k/v (or on a LLaMA), a missing q/k/v bias, Qwen2 with sub-norms:
    each refused by import and from_pretrained alike, naming the field or tensor."""
    from safetensors.torch import load_file, save_file

    from bllama.convert.hf_import import HFImportError, import_hf
    from bllama.convert.hf_load import load_pretrained

    _, src = checkpoints["qwen2-bitnet"]

    def tensors(name, edit):
        d = edited_copy(src, tmp_path / name)
        sd = load_file(str(d / "model.safetensors"))
        edit(sd)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d

    cases = [
        (edited_copy(src, tmp_path / "swa", edit=lambda c: {**c, "use_sliding_window": True, "sliding_window": 64}),
         "use_sliding_window = true"),
        (edited_copy(src, tmp_path / "layer-types", edit=lambda c: {
            **c, "layer_types": ["full_attention", "sliding_attention"]}), "layer_types has 'sliding_attention'"),
        (tensors("o-bias", lambda sd: sd.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(256)})),
         "bias tensor 'model.layers.0.self_attn.o_proj.bias'"),
        (tensors("mlp-bias", lambda sd: sd.update({"model.layers.1.mlp.up_proj.bias": torch.zeros(512)})),
         "bias tensor 'model.layers.1.mlp.up_proj.bias'"),
        (tensors("no-k-bias", lambda sd: sd.pop("model.layers.1.self_attn.k_proj.bias")),
         "missing tensor 'model.layers.1.self_attn.k_proj.bias'"),
        (tensors("bias-shape", lambda sd: sd.update({"model.layers.0.self_attn.v_proj.bias": torch.zeros(64)})),
         r"'model.layers.0.self_attn.v_proj.bias' has shape \[64\], expected \[128\]"),
        (tensors("bias-nan", lambda sd: sd.update(
            {"model.layers.0.self_attn.q_proj.bias": torch.full((256,), float("nan"))})),
         "'model.layers.0.self_attn.q_proj.bias' holds a non-finite value"),
        (tensors("sub-norms", lambda sd: sd.update({"model.layers.0.self_attn.attn_sub_norm.weight": torch.ones(256)})),
         "sub-norm 'self_attn.attn_sub_norm'"),
        (edited_copy(src, tmp_path / "llama", edit=lambda c: {**c, "model_type": "llama",
                                                               "architectures": ["LlamaForCausalLM"]}),
         "bias tensor 'model.layers.0.self_attn.k_proj.bias'"),
    ]
    for d, msg in cases:
        with pytest.raises(HFImportError, match=msg):  # forced: no sub-norms is refused before the tensors are read
            import_hf(d, tmp_path / "x.gguf", progress=False, force_arch="bitnet")
        with pytest.raises(HFImportError, match=msg):
            load_pretrained(d)
    assert not (tmp_path / "x.gguf").exists()


def test_mistral_folder_imports_as_llama(checkpoints, tmp_path):
    """`bllama import` takes a MistralForCausalLM b1.58 folder without a window inside its context (it refused
    model_type mistral while from_pretrained took it): the same file as the LLaMA folder it is a copy of."""
    from bllama.convert.hf_import import import_hf
    from bllama.runtime import Runtime

    _, src = checkpoints["llama-bitnet"]
    mistral = edited_copy(src, tmp_path / "mistral", edit=lambda cfg: {
        **cfg, "model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": None})
    a = import_hf(src, tmp_path / "llama.gguf", progress=False, force_arch="bitnet")
    b = import_hf(mistral, tmp_path / "mistral.gguf", progress=False, force_arch="bitnet")
    ra, rb = Runtime.load(a, head="f16"), Runtime.load(b, head="f16")
    ids = ra.tokenizer.encode(PROMPT)
    np.testing.assert_array_equal(ra.logits(ids), rb.logits(ids))


def test_qwen_style_tokenizer_matches_transformers(checkpoints, tmp_path):
    """A Qwen2 / Qwen3 folder's tokenizer (no BOS added although config.json names one, <|im_end|> ending a turn,
    ChatML): our token ids for plain text and for chats equal AutoTokenizer's, and both end-of-turn ids stop."""
    from transformers import AutoTokenizer

    from bllama.runtime import Runtime
    from bllama.tokenizers.chat import encode_chat

    from hf_checkpoints import use_qwen_tokenizer

    _, src = checkpoints["qwen2-bitnet"]
    d = use_qwen_tokenizer(edited_copy(src, tmp_path / "qwen-tok"))
    theirs = AutoTokenizer.from_pretrained(d)
    rt = Runtime.load(d, head="f16")
    ours = rt.tokenizer
    for text in ("The quick brown fox", " leading space", "Hello, world!\n\nNew   lines\r\n", "tiny model's run 42"):
        assert ours.encode(text) == theirs.encode(text), text
    assert not ours.add_bos
    assert set(ours.eos_ids) == {theirs.convert_tokens_to_ids("<|im_end|>"), theirs.convert_tokens_to_ids("<|endoftext|>")}
    for msgs in ([{"role": "user", "content": "Hi there"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello,\nworld!"},
                  {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "tiny model's run"}]):
        want = theirs.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert encode_chat(ours, ours.chat_template, msgs) == list(want)
