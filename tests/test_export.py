import gguf
import numpy as np
import pytest
import torch

from bllama import bLlama, bLlamaConfig
from bllama.convert.gguf_export import export_gguf
from bllama.convert.gguf_schema import pack_tq2_0


def small_cfg(vocab, **kw):
    base = dict(vocab_size=vocab, seq_len=64, hidden_size=256, num_heads=4, num_kv_heads=2, num_layers=2,
                ffn_size=512)
    return bLlamaConfig(**{**base, **kw})


def test_pack_tq2_0_matches_gguf_dequantize():
    rng = np.random.default_rng(0)
    for rows, cols in [(1, 256), (3, 512), (17, 1280)]:
        codes = rng.integers(-1, 2, size=(rows, cols)).astype(np.int8)
        scale = float(np.float16(0.0371))
        packed = pack_tq2_0(codes, scale)
        assert packed.shape == (rows, cols // 256 * 66)
        values = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.TQ2_0)
        np.testing.assert_array_equal(values, codes.astype(np.float32) * np.float32(scale))
        # bytes equal gguf's own quantizer wherever a block has a nonzero (its d is the block absmax)
        ref = gguf.quants.quantize(values, gguf.GGMLQuantizationType.TQ2_0)
        np.testing.assert_array_equal(ref, packed)
    with pytest.raises(ValueError, match="multiple of 256"):
        pack_tq2_0(np.zeros((2, 100), np.int8), 1.0)


@pytest.mark.parametrize("weight_type", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, activation="relu2")])
def test_export_writes_bitnet_gguf(tmp_path, sp_tokenizer, weight_type, kw):
    torch.manual_seed(0)
    m = bLlama(small_cfg(sp_tokenizer.vocab_size, **kw))
    m.quantize_weights_to_ternary()
    path = export_gguf(m, sp_tokenizer, tmp_path / "m.gguf", weight_type=weight_type)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temp file left behind
    r = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items()}
    val = lambda k: fields[k].contents()
    arch = "bitnet-b1.58" if kw.get("activation") == "relu2" else "bitnet"  # ReLU^2 never under llama.cpp's SiLU `bitnet`
    assert val("general.architecture") == arch
    assert val(f"{arch}.embedding_length") == 256 and val(f"{arch}.block_count") == 2
    assert val(f"{arch}.attention.head_count_kv") == 2 and val(f"{arch}.feed_forward_length") == 512
    assert val("bllama.activation") == kw.get("activation", "silu")
    assert val("tokenizer.ggml.model") == "llama"
    assert bytes(val("bllama.tokenizer.sp_model")) == sp_tokenizer.serialized()
    tensors = {t.name: t for t in r.tensors}
    assert ("output.weight" in tensors) == (not m.config.tie_embeddings)
    qtype = gguf.GGMLQuantizationType.TQ2_0 if weight_type == "tq2_0" else gguf.GGMLQuantizationType.TQ1_0
    net = m.model
    for i, block in enumerate(net.layers):
        for attr, name in [("attn.q_proj", "attn_q"), ("attn.k_proj", "attn_k"), ("mlp.down_proj", "ffn_down")]:
            t = tensors[f"blk.{i}.{name}.weight"]
            assert t.tensor_type == qtype
            layer = block.get_submodule(attr)
            values = gguf.quants.dequantize(t.data, qtype).reshape(layer.out_features, layer.in_features)
            expect = layer.weight_codes.float().numpy() * layer.weight_scale.item()
            np.testing.assert_array_equal(values, expect)
        assert tensors[f"blk.{i}.attn_sub_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16


@pytest.mark.parametrize("kw,arch", [(dict(), "bitnet"), (dict(activation="relu2"), "bitnet-b1.58"),
                                     (dict(activation="relu2", tie_embeddings=False), "bitnet-b1.58")])
def test_export_i2_s_for_bitnet_cpp(tmp_path, sp_tokenizer, kw, arch):
    """I2_S export: bitnet.cpp's b1.58 architecture where the model is one (ReLU^2, tied head), else `bitnet`;
    every projection is the exact I2_S bytes of its codes and fp32 scale, and the engine runs the file."""
    from bllama import _engine
    from bllama.convert.gguf_schema import pack_i2_s

    torch.manual_seed(1)
    m = bLlama(small_cfg(sp_tokenizer.vocab_size, **kw))
    m.quantize_weights_to_ternary()
    path = export_gguf(m, sp_tokenizer, tmp_path / "m.gguf", weight_type="i2_s")
    e = _engine.Engine(str(path), threads=1)
    assert e.metadata("general.architecture") == arch and e.config["weight_type"] == "I2_S"
    assert e.config["activation"] == kw.get("activation", "silu")
    raw = path.read_bytes()
    layer = m.model.layers[1].mlp.down_proj
    assert pack_i2_s(layer.weight_codes.numpy(), layer.weight_scale.item()).tobytes() in raw
    assert e.logits([1, 2, 3]).shape == (3, sp_tokenizer.vocab_size)


def test_export_rejects_what_it_cannot_write(tmp_path, sp_tokenizer):
    v = sp_tokenizer.vocab_size
    with pytest.raises(ValueError, match="vocab_size"):
        export_gguf(bLlama(small_cfg(v + 1)), sp_tokenizer, tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="full-precision"):
        export_gguf(bLlama(small_cfg(v, quantize=False)), sp_tokenizer, tmp_path / "b.gguf")
    with pytest.raises(ValueError, match="weight_type"):
        export_gguf(bLlama(small_cfg(v)), sp_tokenizer, tmp_path / "d.gguf", weight_type="q4_0")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("weight_type", ["tq2_0", "tq1_0", "i2_s"])
def test_export_pads_rows_to_whole_blocks(tmp_path, sp_tokenizer, weight_type):
    """A model whose hidden or FFN size is not a multiple of 256 (a fine-tuned SmolLM: 576 / 1536) exports with each
    projection's rows zero-padded to whole blocks, and the engine runs it as the model."""
    from bllama import _engine

    torch.manual_seed(2)
    m = bLlama(small_cfg(sp_tokenizer.vocab_size, hidden_size=96, ffn_size=300))
    m.quantize_weights_to_ternary()
    path = export_gguf(m, sp_tokenizer, tmp_path / "m.gguf", weight_type=weight_type)
    if weight_type != "i2_s":  # gguf-py cannot read I2_S, a type it does not know
        dims = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(path)).tensors}
        assert dims["blk.0.attn_q.weight"] == [256, 96] and dims["blk.0.ffn_down.weight"] == [512, 96]
    e = _engine.Engine(str(path), threads=2, head="f16", kv_cache_dtype="float32")
    ids = torch.randint(0, sp_tokenizer.vocab_size, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = m.model(ids)[0].numpy()
    got = e.logits(ids[0].tolist())
    # The tolerance of test_engine_bindings.test_logits_match_pytorch (an int8 rounding flip moves later positions
    # by ~1%); a padding column that contributed, or a misread row length, is O(100%).
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() < 0.05 * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
