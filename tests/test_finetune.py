"""Real weights into bLlama (bllama/convert/hf_load.py): Hugging Face LLaMA / BitNet folders and our GGUF files give
the function they define, survive export, and fine-tune."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch  # noqa: E402

from hf_checkpoints import fp16_scales, make_checkpoint, reference_model  # noqa: E402
from test_hf_import import assert_logits_match  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog once upon a time"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return {
        "llama": make_checkpoint(root / "llama", "llama", act="silu", tied=False, kv_heads=2, theta=10000.0,
                                 rms_eps=1e-6, dtype=torch.bfloat16),
        "llama-tied": make_checkpoint(root / "llama-tied", "llama", act="silu", tied=True, kv_heads=4,
                                      dtype=torch.float16),
        "packed": make_checkpoint(root / "packed", "bitnet"),
        "packed-bitlinear": make_checkpoint(root / "packed-bitlinear", "bitnet", act="silu", linear_class="bitlinear",
                                            tied=False),
        "online": make_checkpoint(root / "online", "bitnet-online", kv_heads=1),
    }


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


@pytest.mark.parametrize("name", ["llama", "llama-tied"])
def test_full_precision_llama_equals_transformers(ckpts, name):
    from bllama import bLlama

    m = bLlama.from_pretrained(ckpts[name], quantize=False).eval()
    assert not m.config.sub_norms and not m.config.quantize
    ids = m.pretrained.tokenizer.encode(PROMPT)
    r = reference_model(ckpts[name], "llama")(torch.tensor([ids])).logits[0].detach().float().numpy()
    rel = np.abs(r - logits_of(m, ids)).max(-1) / np.abs(r).max(-1)
    assert rel.max() <= 1e-4, rel


@pytest.mark.parametrize("tensor", ["model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight"])
def test_integer_weights_are_refused_not_cast(ckpts, tmp_path, tensor):
    """An int8 tensor where a float weight belongs (another quantization scheme's codes, no quantization_config)
    was cast to float and loaded: a model with weights of -127..127."""
    import shutil

    from safetensors.torch import load_file, save_file

    from bllama import bLlama
    from bllama.convert.hf_import import HFImportError, import_hf

    for name in ("llama", "online"):
        d = tmp_path / name
        shutil.copytree(ckpts[name], d)
        sd = load_file(str(d / "model.safetensors"))
        sd[tensor] = sd[tensor].float().clamp(-1, 1).mul(127).round().to(torch.int8)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(HFImportError, match=f"tensor '{tensor}' has dtype int8"):
            bLlama.from_pretrained(d)
    with pytest.raises(HFImportError, match=rf"tensor '{tensor}' has dtype (torch\.)?(int8|I8)"):  # bllama import
        import_hf(d, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_engine_and_import_point_a_full_precision_llama_to_conversion(ckpts, tmp_path):
    """generate / import of a LLaMA folder said only "not supported": the message gives the command that converts it."""
    import re

    from bllama.convert.hf_import import HFImportError, import_hf
    from bllama.runtime import Runtime

    for load in (lambda: import_hf(ckpts["llama"], tmp_path / "x.gguf", progress=False),
                 lambda: Runtime.load(ckpts["llama"])):
        with pytest.raises(HFImportError, match=re.escape(f"convert it first: bllama train TEXT --init-from "
                                                          f"{ckpts['llama']} --quant-warmup-steps N")):
            load()
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("name", ["packed", "online"])
def test_b158_checkpoint_is_not_loaded_full_precision(ckpts, name, tmp_path, capsys):
    """quantize=False (or train --init-from ... --set quantize=false) on a BitNet checkpoint ran the latent weights
    unternarized, packed ones as codes * s / f: a model that was neither the checkpoint's nor its master weights'."""
    from bllama import bLlama
    from bllama.cli import main
    from bllama.convert.hf_import import HFImportError

    with pytest.raises(HFImportError, match="quantize=False: this is a b1.58 checkpoint .*quant_method bitnet"):
        bLlama.from_pretrained(ckpts[name], quantize=False)
    data = tmp_path / "t.txt"
    data.write_text("some text " * 50)
    with pytest.raises(SystemExit):
        main(["train", str(data), "--init-from", str(ckpts[name]), "--set", "quantize=false", "--out",
              str(tmp_path / "run"), "--max-steps", "1", "--accelerator", "cpu", "--no-compile"])
    assert "quantize=False: this is a b1.58 checkpoint" in capsys.readouterr().err
    assert bLlama.from_pretrained(ckpts[name]).config.quantize


def test_swish_is_silu(ckpts, tmp_path):
    """hidden_act "swish" (nn.SiLU in transformers) was refused as an unsupported activation."""
    import json
    import shutil

    from bllama import bLlama

    d = tmp_path / "swish"
    shutil.copytree(ckpts["llama"], d)
    (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "hidden_act": "swish"}))
    m = bLlama.from_pretrained(d, quantize=False).eval()
    assert m.config.activation == "silu"
    ids = m.pretrained.tokenizer.encode(PROMPT)
    r = reference_model(d, "llama")(torch.tensor([ids])).logits[0].detach().float().numpy()
    rel = np.abs(r - logits_of(m, ids)).max(-1) / np.abs(r).max(-1)
    assert rel.max() <= 1e-4, rel


@pytest.mark.parametrize("name,linear_class", [("packed", "autobitlinear"), ("packed-bitlinear", "bitlinear")])
def test_packed_bitnet_equals_transformers(ckpts, name, linear_class):
    from bllama import bLlama

    m = bLlama.from_pretrained(ckpts[name]).eval()
    assert m.config.sub_norms and m.config.quantize
    ids = m.pretrained.tokenizer.encode(PROMPT)
    ref = fp16_scales(reference_model(ckpts[name], "bitnet"), linear_class)
    assert_logits_match(ref(torch.tensor([ids])).logits[0].detach().float().numpy(), logits_of(m, ids))


def test_latent_bitnet_keeps_master_weights(ckpts):
    """bf16 / online master weights are the latent weights as stored; the logits differ from transformers' only by
    our fp16 per-tensor scale (docs/architecture.md), which moves a few int8 activations across a rounding step."""
    from safetensors import safe_open

    from bllama import bLlama

    m = bLlama.from_pretrained(ckpts["online"]).eval()
    with safe_open(str(ckpts["online"] / "model.safetensors"), framework="pt") as f:
        w = f.get_tensor("model.layers.1.mlp.down_proj.weight")
    assert torch.equal(m.model.layers[1].mlp.down_proj.weight.detach(), w.float())
    ids = m.pretrained.tokenizer.encode(PROMPT)
    r = reference_model(ckpts["online"], "bitnet-online")(torch.tensor([ids])).logits[0].detach().float().numpy()
    ours = logits_of(m, ids)
    rel = np.abs(r - ours).max(-1) / np.abs(r).max(-1)
    assert rel.max() < 3e-2 and rel.mean() < 1.5e-2, rel
    assert np.mean(r.argmax(-1) == ours.argmax(-1)) >= 0.9


def test_unsupported_configs_name_the_field(ckpts, tmp_path):
    import json
    import shutil

    from bllama.convert.hf_import import HFImportError
    from bllama.convert.hf_load import load_pretrained

    for patch, field in [({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_scaling"),
                         ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),  # incomplete
                         ({"model_type": "gpt2"}, "model_type"),
                         ({"quantization_config": {"quant_method": "gptq"}}, "quant_method"),
                         ({"attention_bias": True}, "attention_bias"),
                         ({"model_type": "mistral", "sliding_window": 16}, "sliding_window")]:
        d = tmp_path / field
        shutil.copytree(ckpts["llama"], d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.pop("rope_parameters", None)
        cfg.update(patch)
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(HFImportError, match=field):
            load_pretrained(d)
    # a classification model has a score head, no lm_head: it loaded with the embedding as a tied LM head
    from safetensors.torch import load_file, save_file

    d = tmp_path / "cls"
    shutil.copytree(ckpts["llama"], d)
    sd = load_file(str(d / "model.safetensors"))
    sd["score.weight"] = sd.pop("lm_head.weight")[:3].clone()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("tie_word_embeddings")
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(HFImportError, match=r"architectures \['LlamaForSequenceClassification'\] is not a causal"):
        load_pretrained(d)
    # a block with a tensor nothing reads (QK-norm of a Qwen3 / OLMo-2 style block labelled llama) loaded without it
    d = tmp_path / "qknorm"
    shutil.copytree(ckpts["llama"], d)
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.1.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(HFImportError, match=r"tensor 'model.layers.1.self_attn.q_norm.weight' \(1 such\) is not part"):
        load_pretrained(d)
    del sd["model.layers.1.self_attn.q_norm.weight"]  # the RoPE buffer older transformers saved is no such tensor
    sd["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert load_pretrained(d)[0].config.num_layers == 2
    # transformers 5 writes rope_parameters (with rope_theta) for every model type: an unknown one such as Qwen2 was
    # a KeyError 'rope_theta' instead of naming the model type (Qwen2 and Qwen3 load now; Gemma's block differs)
    d = tmp_path / "gemma"
    shutil.copytree(ckpts["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"]
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gemma", "architectures": ["GemmaForCausalLM"]}))
    with pytest.raises(HFImportError, match="unsupported model_type 'gemma'"):
        load_pretrained(d)
    # a LLaMA folder relabelled Qwen3 lacks the QK-norms a Qwen3 block has
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(HFImportError, match="missing tensor 'model.layers.0.self_attn.q_norm.weight'"):
        load_pretrained(d)
    # a LLaMA folder relabelled Qwen2 lacks the biases a Qwen2 block has: transformers would start them from its init
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(HFImportError, match="missing tensor 'model.layers.0.self_attn.k_proj.bias' \\(6 such\\)"):
        load_pretrained(d)
    ckpt = tmp_path / "last.ckpt"  # a training checkpoint given to --init-from: it was "GGUF magic invalid"
    ckpt.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="last.ckpt is not a GGUF file: .* continues with --resume"):
        load_pretrained(ckpt)


def test_llama_converted_exports_and_engine_agrees(ckpts, tmp_path):
    """A LLaMA loaded as b1.58 (no sub-norms) is refused under `bitnet` unless forced; forced, the engine computes
    what bLlama computes, and the file carries the checkpoint's BPE tokenizer and chat template."""
    from bllama import bLlama
    from bllama.convert.gguf_export import export_gguf
    from bllama.convert.gguf_schema import ArchitectureError
    from bllama.runtime import Runtime

    m = bLlama.from_pretrained(ckpts["llama"]).eval()
    assert m.config.quantize and not m.config.sub_norms
    m.quantize_weights_to_ternary()
    tok = m.pretrained.tokenizer
    with pytest.raises(ArchitectureError, match="bllama export --force-arch bitnet"):
        export_gguf(m, tok, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())
    path = export_gguf(m, tok, tmp_path / "m.gguf", force_arch="bitnet", chat_template=m.pretrained.chat_template)
    rt = Runtime.load(path, head="f16", kv_cache_dtype="float32")  # the exact model: compared with PyTorch
    assert rt._engine.metadata("bllama.sub_norms") is False
    ids = tok.encode(PROMPT)
    assert rt.tokenizer.encode(PROMPT) == ids and rt.tokenizer.chat_template == m.pretrained.chat_template
    ours = logits_of(m, ids)
    assert_logits_match(ours, rt.logits(ids))


def test_fine_tuning_on_shorter_blocks_keeps_the_checkpoints_context(ckpts, tmp_path):
    """--set seq_len=N is the training block length: the exported file declares the checkpoint's context (it declared
    N, so a model fine-tuned from TinyLlama at 1024 could not take a 2048-token prompt); test_hf_export checks --format
    hf's max_position_embeddings."""
    import json

    from bllama import bLlama
    from bllama.convert.gguf_export import export_gguf
    from bllama.runtime import Runtime

    source = json.loads((ckpts["packed"] / "config.json").read_text())["max_position_embeddings"]
    m = bLlama.from_pretrained(ckpts["packed"], seq_len=16).eval()
    assert m.config.seq_len == 16 and m.config.context == source > 16
    m.quantize_weights_to_ternary()
    tok = m.pretrained.tokenizer
    assert Runtime.load(export_gguf(m, tok, tmp_path / "m.gguf")).context_length == source


@pytest.mark.parametrize("weight_type", ["tq2_0", "tq1_0", "i2_s"])
def test_gguf_loads_back_as_the_same_ternary_model(ckpts, tmp_path, weight_type):
    from bllama import bLlama
    from bllama.convert.gguf_export import export_gguf

    m = bLlama.from_pretrained(ckpts["packed"]).eval()
    tok = m.pretrained.tokenizer
    path = export_gguf(m, tok, tmp_path / "m.gguf", weight_type=weight_type)
    back = bLlama.from_pretrained(path).eval()
    assert back.config.activation == "relu2" and back.config.sub_norms
    for (_, a), (_, b) in zip(m.model.bitlinears(), back.model.bitlinears()):
        assert torch.equal(a.ternary_codes(), b.ternary_codes())
        assert float(a.ternary_scale()) == float(b.ternary_scale())
    ids = tok.encode(PROMPT)
    assert back.pretrained.tokenizer.encode(PROMPT) == ids
    # the embedding went through f16 in the file
    np.testing.assert_allclose(logits_of(back, ids), logits_of(m, ids), rtol=0, atol=2e-2 * np.abs(logits_of(m, ids)).max())


def test_hf_imported_gguf_loads_with_its_scale_tensors(ckpts, tmp_path):
    """`bllama import` writes d = 1 blocks plus an fp32 `.scale` tensor: the scale is taken from there."""
    from bllama import bLlama
    from bllama.convert.hf_import import import_hf

    path = import_hf(ckpts["packed"], tmp_path / "i.gguf", progress=False)
    back = bLlama.from_pretrained(path).eval()
    m = bLlama.from_pretrained(ckpts["packed"]).eval()
    for (_, a), (_, b) in zip(m.model.bitlinears(), back.model.bitlinears()):
        assert torch.equal(a.ternary_codes(), b.ternary_codes())
        assert float(a.ternary_scale()) == float(b.ternary_scale())


def _train(argv):
    from bllama.cli import main

    main(["train", *argv, "--accelerator", "cpu", "--precision", "32-true", "--num-workers", "0", "--no-compile"])


def _weights(out):
    from bllama.train.trainer import load_checkpoint

    return {k: v.clone() for k, v in load_checkpoint(out).state_dict().items()}


def test_convert_with_warmup_lowers_loss_and_resumes_exactly(ckpts, tmp_path, capsys):
    """Full-precision LLaMA -> b1.58 with a quantization warm-up through the CLI: the loss stays finite through the
    switch and falls; a run stopped and resumed ends with the weights of an uninterrupted one."""
    import csv

    from hf_checkpoints import TEXT

    data = tmp_path / "text.txt"
    data.write_text(TEXT * 4, encoding="utf-8")
    common = [str(data), "--init-from", str(ckpts["llama"]), "--quant-warmup-steps", "6", "--batch-size", "4",
              "--set", "seq_len=64", "--set", "max_steps=16", "--set", "lr=3e-3", "--set", "warmup_steps=2",
              "--seed", "3"]
    _train(common + ["--out", str(tmp_path / "a"), "--max-steps", "16"])
    rows = list(csv.DictReader(open(next((tmp_path / "a" / "logs").rglob("metrics.csv")))))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    lams = [float(r["quant_lambda"]) for r in rows if r.get("quant_lambda")]
    assert losses and all(np.isfinite(losses)) and lams and lams[-1] == 1.0  # logged after the switch (step 6)

    from bllama import bLlama
    from bllama.train.trainer import load_checkpoint

    def b158_loss(model):  # the fully quantized function on the training text
        ids = torch.tensor([model_tok.encode(TEXT)[:65]])
        with torch.no_grad():
            logits = model.eval()(ids[:, :-1])
        return float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]))

    start = bLlama.from_pretrained(ckpts["llama"])
    model_tok = start.pretrained.tokenizer
    assert b158_loss(load_checkpoint(tmp_path / "a")) < 0.7 * b158_loss(start)
    capsys.readouterr()
    _train(common + ["--out", str(tmp_path / "b"), "--max-steps", "4"])  # stops inside the warm-up: says so
    assert "warning: training stopped at step 4 of the 6 quantization warm-up steps" in capsys.readouterr().err
    _train(common + ["--out", str(tmp_path / "b"), "--max-steps", "16", "--resume",
                     str(tmp_path / "b" / "checkpoints" / "last.ckpt")])
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert (tmp_path / "a" / "tokenizer.json").exists() and (tmp_path / "a" / "chat_template.jinja").exists()


def test_qwen2_converts_fine_tunes_exports_and_runs(tmp_path, capsys):
    """A full-precision Qwen2 folder (q/k/v biases) end to end through the CLI: train --init-from (the biases train
    with the rest), export to GGUF (--force-arch: no llama.cpp ternary graph has the biases) and to a Hugging Face
    Qwen2ForCausalLM folder; the engine runs both as the PyTorch checkpoint computes."""
    from transformers import AutoModelForCausalLM

    from bllama.cli import main
    from bllama.runtime import Runtime
    from bllama.train.trainer import load_checkpoint
    from hf_checkpoints import TEXT

    src = make_checkpoint(tmp_path / "qwen2", "qwen2", act="silu", tied=True, theta=1000000.0)
    data = tmp_path / "text.txt"
    data.write_text(TEXT * 2, encoding="utf-8")
    _train([str(data), "--init-from", str(src), "--quant-warmup-steps", "2", "--batch-size", "2", "--set",
            "seq_len=32", "--set", "max_steps=4", "--set", "warmup_steps=1", "--out", str(tmp_path / "run"),
            "--max-steps", "4", "--seed", "1"])
    model = load_checkpoint(tmp_path / "run").eval()
    assert model.config.qkv_bias and not model.config.sub_norms
    from safetensors.torch import load_file  # the biases moved with training (parameters like the rest)

    b0 = load_file(str(src / "model.safetensors"))["model.layers.0.self_attn.q_proj.bias"]
    assert not torch.equal(model.model.layers[0].attn.q_proj.bias.detach(), b0)

    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "refused.gguf")])
    assert "--force-arch bitnet" in capsys.readouterr().err and not (tmp_path / "refused.gguf").exists()
    main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.gguf"), "--force-arch", "bitnet"])
    main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "hf"), "--format", "hf"])
    assert "Hugging Face Qwen2ForCausalLM" in capsys.readouterr().out
    ids = Runtime.load(tmp_path / "m.gguf").tokenizer.encode(TEXT[:200])[:32]  # the run's seq_len
    with torch.no_grad():
        want = model.model(torch.tensor([ids]))[0].numpy()
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    scale = float(np.abs(want).max())
    # f16 embedding in the GGUF, int8 rounding-boundary flips: ~1% of the scale (test_engine_bindings says why)
    for got in (Runtime.load(tmp_path / "m.gguf", head="f16", kv_cache_dtype="float32").logits(ids),
                Runtime.load(tmp_path / "hf", head="f16", kv_cache_dtype="float32").logits(ids), theirs):
        assert np.abs(got - want).max() < 0.05 * scale
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_quant_blend_ends_are_linear_and_bitlinear():
    import torch.nn.functional as F

    from bllama.model.bitlinear import BitLinear

    torch.manual_seed(0)
    layer = BitLinear(256, 64)
    x = torch.randn(3, 256)
    full = layer(x)
    layer.quant_mix = 0.0
    assert torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-6)
    layer.quant_mix = 0.999999
    assert torch.allclose(layer(x), full, atol=1e-3)
    layer.quant_mix = 0.5
    y = layer(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_sft_labels_mask_everything_but_assistant_tokens(ckpts):
    from bllama import bLlama
    from bllama.train.sft import IGNORE, chat_tokens, encode_rendered

    info = bLlama.from_pretrained(ckpts["llama"]).pretrained
    tok, template = info.tokenizer, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                                    "{% if add_generation_prompt %}assistant:{% endif %}"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick fox"},
            {"role": "assistant", "content": "lazy dog"}, {"role": "user", "content": "once upon"},
            {"role": "assistant", "content": "a time"}]
    ids, trained = chat_tokens(msgs, tok, template)
    p1 = "system: Be brief.\nuser: the quick fox\nassistant:"
    r1 = " lazy dog\n"
    p2 = "user: once upon\nassistant:"
    r2 = " a time\n"
    eos = tok.eos_ids[0]
    expect = [(t, False) for t in encode_rendered(tok, p1)] + [(t, True) for t in tok.encode(r1, add_bos=False)] + \
        [(eos, True)] + [(t, False) for t in tok.encode(p2, add_bos=False)] + \
        [(t, True) for t in tok.encode(r2, add_bos=False)] + [(eos, True)]
    assert list(zip(ids, trained)) == expect
    from bllama.train.sft import ChatSFTDataset
    import json, tempfile, os
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "c.jsonl")
        open(p, "w").write(json.dumps({"messages": msgs}) + "\n" + json.dumps({"messages": msgs[:3]}) + "\n")
        ds = ChatSFTDataset([p], tok, template, 128)
        x, y = ds[1]
        n = len(chat_tokens(msgs[:3], tok, template)[0]) - 1
        assert x.shape == y.shape == (len(ids) - 1,)
        assert y.tolist()[:n] == [t if keep else IGNORE for t, keep in zip(ids[1:n + 1], trained[1:n + 1])]
        assert (y[n:] == IGNORE).all()


@pytest.mark.slow
def test_init_from_under_fsdp_keeps_the_loaded_weights_and_trains(ckpts, tmp_path):
    """`bllama train --init-from --strategy fsdp` on 2 CPU processes (tests/scripts/fsdp_init_from.py): each rank
    loads the checkpoint and FSDP shards it (per-block units). With lr 0 the sharded checkpoint written after two
    steps, gathered back into one model, equals load_pretrained's weights exactly (nothing re-initialized or
    mis-sharded them); with a real lr and the quantization warm-up (the conversion recipe) the b1.58 loss falls."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hf_checkpoints import TEXT

    from bllama import bLlama
    from bllama.train.trainer import load_checkpoint

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "text.txt"
    data.write_text(TEXT * 4, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}

    def train_fsdp(out, *argv):
        r = subprocess.run([sys.executable, str(root / "tests" / "scripts" / "fsdp_init_from.py"), str(ckpts["llama"]),
                            str(data), str(out), "--batch-size", "2", "--set", "seq_len=64", "--set",
                            "warmup_steps=2", "--seed", "3", *argv], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (out / "checkpoints" / "last.ckpt").is_dir()  # a sharded (per-rank) checkpoint: FSDP really ran
        return load_checkpoint(out)

    start = bLlama.from_pretrained(ckpts["llama"])
    kept = train_fsdp(tmp_path / "lr0", "--max-steps", "2", "--set", "max_steps=2", "--set", "lr=0")
    a, b = start.state_dict(), kept.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    tok = start.pretrained.tokenizer

    def b158_loss(model):
        ids = torch.tensor([tok.encode(TEXT)[:65]])
        with torch.no_grad():
            logits = model.eval()(ids[:, :-1])
        return float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]))

    trained = train_fsdp(tmp_path / "conv", "--max-steps", "16", "--set", "max_steps=16", "--set", "lr=3e-3",
                         "--quant-warmup-steps", "6")
    assert b158_loss(trained) < 0.7 * b158_loss(start)


def _foreign_gguf(path, extra_kv=(), extra_tensors=(), varied_block_scales=False):
    """A small `bitnet` file as another converter may write it: the model of test_engine_bindings._model plus
    metadata keys / tensors this reader does not copy, or TQ2_0 blocks of several scales (d) in one tensor."""
    import gguf

    import bllama.convert.gguf_schema as schema
    from bllama.convert.gguf_export import add_model_tensors
    from test_engine_bindings import _model

    net = _model()
    cfg = net.config
    w = gguf.GGUFWriter(str(path), schema.gguf_arch(cfg, "tq2_0"))
    schema.add_bitnet_metadata(w, cfg)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(3, cfg.vocab_size)])
    w.add_token_scores([-float(i) for i in range(cfg.vocab_size)])
    w.add_token_types([2, 3, 3] + [1] * (cfg.vocab_size - 3))
    for fn, key, value in extra_kv:
        getattr(w, fn)(key, value)
    saved = pack = schema.pack_tq2_0
    if varied_block_scales:  # row r's blocks get d = (1 + r % 3) x the tensor's scale, as llama-quantize may write
        def pack(codes, scale):
            out = saved(codes, scale).reshape(codes.shape[0], -1, 66)
            d = (np.float16(scale) * (1 + np.arange(codes.shape[0]) % 3)).astype(np.float16)
            out[:, :, 64:] = np.repeat(d[:, None], out.shape[1], 1)[..., None].view(np.uint8)
            return out.reshape(codes.shape[0], -1)
    schema.pack_tq2_0 = pack
    try:
        add_model_tensors(w, net, "tq2_0")
    finally:
        schema.pack_tq2_0 = saved
    for name, value in extra_tensors:
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return path


@pytest.mark.parametrize("extra_kv, extra_tensors, match", [
    ([("add_string", "bitnet.rope.scaling.type", "linear"), ("add_float32", "bitnet.rope.scaling.factor", 4.0)], [],
     "RoPE scaling is not supported"),
    ([("add_uint32", "bitnet.attention.key_length", 128)], [], "key_length"),
    ([], [("blk.0.attn_output.bias", np.ones(256, np.float32))], "unexpected tensor 'blk.0.attn_output.bias'"),
    ([], [("rope_freqs.weight", np.ones(32, np.float32))], "rope_freqs.weight .*without bllama.rope_scaling"),
], ids=["rope-scaling", "key-length", "bias", "rope-freqs"])
def test_gguf_the_engine_refuses_is_not_loaded_as_another_model(tmp_path, extra_kv, extra_tensors, match):
    """from_pretrained(file.gguf) read the keys and tensors it knew and dropped the rest: a file with RoPE scaling, a
    bias or per-frequency RoPE factors became a training start computing another function, without a word. It
    now refuses what the engine refuses, with the engine's message."""
    from bllama import bLlama

    plain = _foreign_gguf(tmp_path / "plain.gguf")
    assert bLlama.from_pretrained(plain).config.hidden_size == 256
    bad = _foreign_gguf(tmp_path / "bad.gguf", extra_kv, extra_tensors)
    with pytest.raises(ValueError, match=match):
        bLlama.from_pretrained(bad)


def test_gguf_with_some_qkv_biases_loads_them_and_zeros_for_the_rest(tmp_path):
    """A file with q/k/v biases (llama.cpp's qwen2 names) becomes a qkv_bias model; a bias the file leaves out is
    zeros, which is what the engine adds for it."""
    from bllama import _engine, bLlama

    q = np.linspace(-2, 2, 256).astype(np.float32)
    path = _foreign_gguf(tmp_path / "b.gguf", extra_tensors=[("blk.1.attn_q.bias", q)])
    model = bLlama.from_pretrained(path).eval()
    assert model.config.qkv_bias
    attn = model.model.layers[1].attn
    assert np.array_equal(attn.q_proj.bias.detach().numpy(), q) and not attn.k_proj.bias.any()
    assert not model.model.layers[0].attn.q_proj.bias.any() and model.model.layers[0].attn.o_proj.bias is None
    ids = [1, 5, 9, 20, 7]
    with torch.no_grad():
        want = model.model(torch.tensor([ids]))[0].numpy()
    got = _engine.Engine(str(path), threads=1, head="f16", kv_cache_dtype="float32").logits(ids)
    plain = _engine.Engine(str(_foreign_gguf(tmp_path / "p.gguf")), threads=1, head="f16",
                           kv_cache_dtype="float32").logits(ids)
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() < 1e-2 * scale < np.abs(plain - want).max()
    with pytest.raises(ValueError, match="qkv_bias=False, but the file's q/k/v projections have biases"):
        bLlama.from_pretrained(path, qkv_bias=False)


def test_gguf_with_several_block_scales_in_a_tensor_is_refused(tmp_path):
    """TQ2_0 blocks with different d (the engine runs them exactly) were all read with the tensor's largest d, so the
    latent weights computed another function (logits off by ~65% of their scale); one latent scale per tensor cannot
    hold them, so the file is refused, naming the tensor."""
    from bllama import _engine, bLlama

    path = _foreign_gguf(tmp_path / "varied.gguf", varied_block_scales=True)
    _engine.Engine(str(path), threads=1, head="f16")  # a valid model file
    with pytest.raises(ValueError, match="tensor 'blk.0.attn_q.weight' has blocks with different scales"):
        bLlama.from_pretrained(path)


def test_generate_and_eval_of_a_run_from_a_bpe_checkpoint(ckpts, tmp_path, capsys):
    """A run started from a byte-level BPE checkpoint writes tokenizer.json, not tokenizer.model: `bllama generate RUN`
    and `bllama eval RUN` stopped with "no tokenizer.model next to RUN; pass --tokenizer" (and --tokenizer took only a
    SentencePiece model). They use the run's own tokenizer, as export does."""
    import json

    from bllama.cli import main
    from bllama.train.run_tokenizer import load_run_tokenizer

    from hf_checkpoints import TEXT

    data = tmp_path / "text.txt"
    data.write_text(TEXT * 2, encoding="utf-8")
    out = tmp_path / "run"
    _train([str(data), "--init-from", str(ckpts["packed"]), "--batch-size", "2", "--set", "seq_len=32",
            "--max-steps", "1", "--out", str(out)])
    assert (out / "tokenizer.json").exists() and not (out / "tokenizer.model").exists()
    capsys.readouterr()
    main(["generate", str(out), "The quick brown", "--max-new-tokens", "4"])
    text = capsys.readouterr().out.strip("\n")
    tok, _ = load_run_tokenizer(out)
    assert text and len(tok.encode(text)) <= 4 + tok.add_bos  # the continuation, in the run's tokenizer
    (tmp_path / "held.txt").write_text(TEXT[:400], encoding="utf-8")
    main(["eval", str(out), "--data", str(tmp_path / "held.txt")])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["chars"] == 400 and metrics["tokens"] == len(tok.encode(TEXT[:400])) - tok.add_bos
    main(["export", str(out), "-o", str(tmp_path / "m.gguf")])  # carries the run's chat template, and says so
    assert ", the run's chat template)" in capsys.readouterr().out
    from bllama._engine import Engine
    from hf_checkpoints import CHAT_TEMPLATE

    assert Engine(str(tmp_path / "m.gguf")).metadata("tokenizer.chat_template") == CHAT_TEMPLATE


def test_generate_takes_a_quoted_home_path_to_a_checkpoint_folder(ckpts, monkeypatch, capsys):
    """`bllama generate "~/models/bitnet-2b4t" ...` (quoted, so the shell leaves the ~) said "checkpoint not found":
    the folder test saw no folder, so the path went to the PyTorch checkpoint loader, though Runtime.load expands ~."""
    from bllama.cli import main

    monkeypatch.setenv("HOME", str(ckpts["packed"].parent))
    main(["generate", "~/packed", "The quick brown", "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert "prompt tokens at" in captured.err  # the engine's report: it ran (a greedy reply may stop at EOS)
