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
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import torch  # noqa: E402

from hf_checkpoints import SPECIALS, make_checkpoint, reference_model  # noqa: E402

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


CASES = {
    # name: (style, kwargs)
    "2b4t-like": ("bitnet", dict(act="relu2", linear_class="autobitlinear", tied=True)),
    "bitnet-bitlinear-untied-silu-theta": ("bitnet", dict(act="silu", linear_class="bitlinear", tied=False,
                                                          rope_form="theta", theta=10000.0)),
    "bitnet-online": ("bitnet-online", dict(act="relu2", kv_heads=1)),
    "llama-bitnet": ("llama-bitnet", dict(act="silu", linear_class="bitlinear", tied=False, theta=1000042.0)),
    "1bitllm-padded": ("1bitllm", dict(act="silu", hidden=320, ffn=864, heads=4, kv_heads=4, tokenizer="sp")),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, sp_model_path):
    root = tmp_path_factory.mktemp("hf")
    return {name: (style, make_checkpoint(root / name, style, sp_model=sp_model_path, **kw))
            for name, (style, kw) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_engine_matches_transformers(checkpoints, name):
    from bllama.runtime import Runtime

    style, path = checkpoints[name]
    rt = Runtime.load(path, head="f16", kv_cache_dtype="float32")  # imported on the fly; the exact model
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
    assert cfg["sub_norms"] == (style != "llama-bitnet")
    assert cfg["tie_embeddings"] == hf["tie_word_embeddings"]


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


def test_unsupported_checkpoints_say_what(checkpoints, tmp_path):
    from bllama.convert.hf_import import HFImportError, import_hf

    _, src = checkpoints["2b4t-like"]

    def variant(name, **changes):
        d = tmp_path / name
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    cases = [
        (variant("mistral", model_type="mistral"), "model_type 'mistral'"),
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
    with pytest.raises(ArchitectureError, match="force-arch"):
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
