"""`bllama export --format hf`: transformers.BitNetForCausalLM.from_pretrained loads what we write, and its
logits match ours on the trained tiny model.

Tolerance: both sides compute the same fp32 function (per-token int8 absmax activations, ternary codes times
the same fp32 s), but in a different order (HF: fake-quantized (xq / a) @ W then * s; ours: (xq @ W) * s / a),
so a 1-ulp difference can flip an activation rounding tie (one int8 by 1) and move later logits by ~1e-3 of
their range. Position 0 must agree to 1e-5 relative; all positions to 2e-2; greedy argmax nearly everywhere.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch  # noqa: E402

import hf_checkpoints  # noqa: E402,F401  (offline env vars, no torch.compile)


def _eval_copy(model):
    import copy

    m = copy.deepcopy(model).eval()
    return m


def test_hf_export_loads_in_transformers_and_matches(trained_tiny, tmp_path):
    from transformers import BitNetForCausalLM

    from bllama.convert.hf_export import export_hf

    model, tok = _eval_copy(trained_tiny["model"]), trained_tiny["tokenizer"]
    out = export_hf(model, tok, tmp_path / "hf")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "bitnet"
    hf = BitNetForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tok.encode(trained_tiny["held_out"][:400])[:96]
    with torch.no_grad():
        ours = model.model(torch.tensor([ids]))[0].float().numpy()
        theirs = hf(torch.tensor([ids])).logits[0].float().numpy()
    rel = np.abs(ours - theirs).max(-1) / np.abs(ours).max(-1)
    assert rel[0] < 1e-5, rel
    assert np.all(rel < 2e-2) and np.mean(rel) < 5e-3, rel
    assert np.mean(ours.argmax(-1) == theirs.argmax(-1)) >= 0.95


def test_hf_export_roundtrips_through_import(trained_tiny, tmp_path):
    """export --format hf, then import: the engine gives the logits of the direct GGUF export (up to the
    same tie flips; the HF path keeps s in fp32 scale tensors, the direct path in fp16 d: both are s exactly)."""
    from bllama.convert.gguf_export import export_gguf
    from bllama.convert.hf_export import export_hf
    from bllama.runtime import Runtime

    model, tok = _eval_copy(trained_tiny["model"]), trained_tiny["tokenizer"]
    a = Runtime.load(export_gguf(model, tok, tmp_path / "direct.gguf"))
    b = Runtime.load(export_hf(model, tok, tmp_path / "hf"))
    ids = tok.encode(trained_tiny["held_out"][:300])[:64]
    la, lb = a.logits(ids), b.logits(ids)
    rel = np.abs(la - lb).max(-1) / np.abs(la).max(-1)
    assert rel[0] < 1e-5 and np.all(rel < 2e-2), rel
    assert b.tokenizer.encode("hello world") == tok.encode("hello world")


def test_pack_hf_matches_transformers():
    from transformers.integrations.bitnet import pack_weights

    from bllama.convert.hf_export import pack_hf
    from bllama.convert.hf_import import unpack_hf

    g = torch.Generator().manual_seed(3)
    w = torch.randint(-1, 2, (32, 24), generator=g)
    np.testing.assert_array_equal(pack_hf(w.numpy().astype(np.int8)), pack_weights(w.float().clone()).numpy())
    np.testing.assert_array_equal(unpack_hf(pack_hf(w.numpy().astype(np.int8))), w.numpy())
    with pytest.raises(ValueError, match="divisible by 4"):
        pack_hf(np.zeros((6, 8), np.int8))


def test_hf_export_refuses_nonempty_folder(trained_tiny, tmp_path):
    from bllama.convert.hf_export import export_hf

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        export_hf(trained_tiny["model"], trained_tiny["tokenizer"], tmp_path / "x")


def test_hf_export_of_a_model_without_sub_norms(sp_tokenizer, tmp_path):
    """A model converted from a LLaMA has no sub-norms, which transformers' BitNet block always has: it is written
    as a LlamaForCausalLM with the bitnet quantization_config (it crashed on the missing sub-norm weights), loads in
    transformers with our logits, and comes back through our import with the chat template it was given."""
    from transformers import LlamaForCausalLM

    from bllama import bLlama, bLlamaConfig
    from bllama.convert.hf_export import export_hf
    from bllama.runtime import Runtime
    from bllama.tokenizers.chat_templates import resolve_chat_template

    torch.manual_seed(4)
    model = bLlama(bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=64, hidden_size=64, num_heads=4,
                                num_kv_heads=2, num_layers=2, ffn_size=128, sub_norms=False,
                                context_length=96)).eval()  # fine-tuned on blocks shorter than its context
    with torch.no_grad():  # the engine keeps the embedding in fp16: make that exact
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight.half().float())
    template = resolve_chat_template("chatml")
    out = export_hf(model, sp_tokenizer, tmp_path / "hf", chat_template=template)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["quantization_config"]["quant_method"] == "bitnet"
    assert cfg["max_position_embeddings"] == 96
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == template
    hf = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = sp_tokenizer.encode("To be, or not to be, that is the question")
    with torch.no_grad():
        ours = model.model(torch.tensor([ids]))[0].float().numpy()
        theirs = hf(torch.tensor([ids])).logits[0].float().numpy()
    rel = np.abs(ours - theirs).max(-1) / np.abs(ours).max(-1)
    assert rel[0] < 1e-5 and np.all(rel < 2e-2), rel  # the module docstring's tolerance
    rt = Runtime.load(out, head="f16", kv_cache_dtype="float32")
    assert rt.tokenizer.chat_template == template
    lr = rt.logits(ids)
    rel = np.abs(lr - ours).max(-1) / np.abs(ours).max(-1)
    assert rel[0] < 1e-4 and np.all(rel < 2e-2), rel


@pytest.mark.parametrize("add_bos,add_eos", [(True, False), (False, False), (True, True)])
def test_hf_export_of_a_bpe_model(tmp_path, add_bos, add_eos):
    """A model fine-tuned from a checkpoint with a byte-level BPE tokenizer (BitNet 2B4T, LLaMA-3, SmolLM) was refused
    ("export needs a SentencePiece tokenizer"): it exports with its tokenizer.json, and transformers' tokenizer gives
    our ids (BOS first exactly when ours puts it there), its model our logits, its generate every end id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bllama import bLlama
    from bllama.convert.hf_export import export_hf
    from hf_checkpoints import make_checkpoint

    src = make_checkpoint(tmp_path / "src", "bitnet-online", kv_heads=1, vocab=352)  # rows beyond the tokenizer's
    model = bLlama.from_pretrained(src).eval()
    tok = model.pretrained.tokenizer
    tok.add_bos, tok.add_eos = add_bos, add_eos  # add_eos: every text ends with EOS (written False before)
    out = export_hf(model, tok, tmp_path / "hf", chat_template=model.pretrained.chat_template)
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok.encode(text)
    assert (ids[0] == tok.bos_id) == add_bos and (ids[-1] == tok.eos_id) == add_eos
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == ids
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eos_token_id"] == tok.eos_ids and len(tok.eos_ids) == 2 and cfg["vocab_size"] == 352
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model.model(torch.tensor([ids]))[0].float().numpy()
        theirs = hf(torch.tensor([ids])).logits[0].float().numpy()
    rel = np.abs(ours - theirs).max(-1) / np.abs(ours).max(-1)
    assert rel[0] < 1e-5 and np.all(rel < 2e-2) and np.mean(rel) < 5e-3, rel  # the module docstring's tolerance
    back = bLlama.from_pretrained(out).pretrained
    assert back.tokenizer.encode(text) == ids and back.tokenizer.eos_ids == tok.eos_ids
    assert back.chat_template == model.pretrained.chat_template


@pytest.mark.parametrize("add_bos,add_eos", [(True, False), (False, False), (True, True)])
def test_hf_export_keeps_a_sentencepiece_tokenizers_add_bos(sp_model_path, tmp_path, add_bos, add_eos):
    """A SentencePiece model that puts no BOS first (a folder with add_bos_token false, fine-tuned and exported) was
    written with add_bos_token true: transformers and our own import of the export then put a BOS first that the
    model never saw."""
    from transformers import AutoTokenizer

    from bllama import bLlama, bLlamaConfig
    from bllama.convert.hf_export import export_hf
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer

    tok = SentencePieceTokenizer(sp_model_path)
    tok.add_bos, tok.add_eos = add_bos, add_eos
    # more embedding rows than tokens (a checkpoint padded to a round size): that was refused too
    model = bLlama(bLlamaConfig(vocab_size=tok.vocab_size + 16, seq_len=32, hidden_size=64, num_heads=4,
                                num_kv_heads=2, num_layers=1, ffn_size=128))
    out = export_hf(model, tok, tmp_path / "hf")
    text = "To be, or not to be"
    ids = tok.encode(text)
    assert (ids[0] == tok.bos_id) == add_bos and (ids[-1] == tok.eos_id) == add_eos
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == ids
    back = bLlama.from_pretrained(out)
    assert back.pretrained.tokenizer.encode(text) == ids and back.config.vocab_size == tok.vocab_size + 16
    with pytest.raises(ValueError, match=f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is 300"):
        export_hf(bLlama(bLlamaConfig(vocab_size=300, seq_len=32, hidden_size=64, num_heads=4, num_kv_heads=2,
                                      num_layers=1, ffn_size=128)), tok, tmp_path / "small")


def test_hf_export_of_a_bpe_model_whose_bos_has_a_space_and_colon(tmp_path):
    """The BOS post-processor was built from the template string syntax, which cannot spell such a token."""
    from transformers import AutoTokenizer

    from bllama import bLlama, bLlamaConfig
    from bllama.convert.hf_export import export_hf
    from bllama.tokenizers.bpe import BPETokenizer
    from hf_checkpoints import SPECIALS, bpe_tokenizer_json

    text = bpe_tokenizer_json().replace(SPECIALS[0], "<bos: x>")
    tok = BPETokenizer(text, bos_id=0, eos_ids=[1])
    assert tok.id_to_piece(0) == "<bos: x>" and tok.add_bos
    model = bLlama(bLlamaConfig(vocab_size=tok.vocab_size, seq_len=32, hidden_size=64, num_heads=4, num_kv_heads=2,
                                num_layers=1, ffn_size=128))
    out = export_hf(model, tok, tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(out)("The quick brown fox").input_ids == tok.encode("The quick brown fox")
