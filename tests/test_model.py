import copy
import warnings

import pytest
import torch

from bllama import bLlama, bLlamaConfig
from bllama.model.bitlinear import BitLinear, quantize_activations, weight_scale
from bllama.model.generate import apply_repetition_penalty, filter_top_k_top_p, generate_ids
from bllama.model.transformer import Transformer, count_parameters


def tiny(**kw):
    base = dict(vocab_size=97, seq_len=64, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2, ffn_size=128)
    return bLlamaConfig(**{**base, **kw})


def test_default_is_the_original_1p7b_counted_on_meta():
    c = bLlamaConfig()
    assert (c.vocab_size, c.seq_len, c.hidden_size, c.num_heads, c.num_layers, c.ffn_size) == \
        (32000, 1024, 2048, 16, 24, 8192)
    with torch.device("meta"):
        m = Transformer(c)
    d, f, v = 2048, 8192, 32000
    per_layer = 4 * d * d + 3 * d * f + 2 * d + d + f  # projections, 2 pre-norms, 2 sub-norms
    assert count_parameters(m) == v * d + 24 * per_layer + d  # tied head counted once
    assert 1.67e9 < count_parameters(m) < 1.69e9


def test_presets_sizes():
    assert 2e6 < count_parameters(Transformer(bLlamaConfig.preset("tiny"))) < 1e7
    assert 1e7 < count_parameters(Transformer(bLlamaConfig.preset("small"))) < 1e8
    with pytest.raises(ValueError, match="unknown preset"):
        bLlamaConfig.preset("huge")
    with pytest.raises(ValueError, match="activation"):
        bLlamaConfig(activation="gelu")


def test_config_fields_are_named_typed_and_bounded():
    """`bllama train --set` values: an unknown name was a TypeError traceback, lr="abc" failed inside torch's
    optimizer, seq_len=10**8 was killed for memory building RoPE tables."""
    import numpy as np

    with pytest.raises(ValueError, match=r"unknown config fields: \['foo'\]; the fields are \['vocab_size'"):
        bLlamaConfig.preset("tiny", foo=1)
    with pytest.raises(TypeError, match="config field lr must be a float, got 'abc'"):
        bLlamaConfig.preset("tiny", lr="abc")
    with pytest.raises(TypeError, match="config field num_layers must be an int, got 2.5"):
        tiny(num_layers=2.5)
    with pytest.raises(TypeError, match="config field bias must be a bool, got 1"):
        tiny(bias=1)
    with pytest.raises(TypeError, match="betas must be two numbers"):
        tiny(betas=(0.9,))
    with pytest.raises(ValueError, match="seq_len must be at most 1048576, got 100000000"):
        tiny(seq_len=10**8)
    c = tiny(lr=1, num_layers=np.uint32(3), rope_theta=np.float32(500.0), tie_embeddings=np.bool_(False))
    assert (type(c.lr), c.num_layers, type(c.num_layers), type(c.rope_theta), c.tie_embeddings) == \
        (float, 3, int, float, False)
    with pytest.raises(ValueError, match="config field warmup_steps must be an int, got 'x'"):  # --set, as text
        bLlamaConfig.check_overrides({"warmup_steps": "x"})
    bLlamaConfig.check_overrides({"num_heads": 3})  # a bad combination is the config's to refuse, not this


def test_explicit_head_dim_and_qk_norm():
    """attn_head_dim (Qwen3 / Mistral-Nemo heads: not hidden / heads) sizes q, k, v, o and the attention sub-norm;
    qk_norm adds a [head_dim] RMSNorm for q and k. Bad widths are refused; both survive to_dict / from_dict, and
    the model runs with a KV cache as without."""
    c = tiny(attn_head_dim=24, qk_norm=True)
    assert (c.head_dim, c.attn_dim) == (24, 96)
    assert bLlamaConfig.from_dict(c.to_dict()) == c
    m = Transformer(c).eval()
    a = m.layers[0].attn
    assert tuple(a.q_proj.weight.shape) == (96, 64) and tuple(a.k_proj.weight.shape) == (48, 64)
    assert tuple(a.o_proj.weight.shape) == (64, 96) and tuple(a.sub_norm.weight.shape) == (96,)
    assert tuple(a.q_norm.weight.shape) == tuple(a.k_norm.weight.shape) == (24,)
    assert not hasattr(Transformer(tiny()).layers[0].attn, "q_norm")
    from bllama.model.transformer import KVCache

    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        full = m(ids)
        cache = KVCache(c, 2, "cpu")
        parts = torch.cat([m(ids[:, :4], cache, 0), m(ids[:, 4:5], cache, 4), m(ids[:, 5:], cache, 5)], 1)
    torch.testing.assert_close(parts, full, rtol=1e-4, atol=1e-4)
    assert tiny(hidden_size=60, num_heads=8, attn_head_dim=16).head_dim == 16  # 60 / 8 need not divide
    for bad, match in [(dict(attn_head_dim=0), "attn_head_dim must be in"),
                       (dict(attn_head_dim=4096), "attn_head_dim must be in"),
                       (dict(attn_head_dim=15), "head dimension 15 must be even"),
                       (dict(hidden_size=60, num_heads=8), "set attn_head_dim")]:
        with pytest.raises(ValueError, match=match):
            tiny(**bad)


def test_bitlinear_training_mode_is_fake_quant_with_ste():
    torch.manual_seed(0)
    layer = BitLinear(256, 32)
    x = torch.randn(3, 5, 256, requires_grad=True)
    y = layer(x)
    s = weight_scale(layer.weight)
    wq = (layer.weight / s).round().clamp(-1, 1) * s
    a = 127 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    xq = (x * a).round().clamp(-128, 127) / a
    torch.testing.assert_close(y, xq @ wq.T, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    # straight-through: gradients are those of a plain linear layer at the quantized point
    torch.testing.assert_close(x.grad, wq.sum(0).expand_as(x).detach(), rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_bitlinear_quantized_equals_fake_quant():
    torch.manual_seed(1)
    for fin, fout in [(256, 64), (512, 17), (768, 256)]:
        layer = BitLinear(fin, fout)
        x = torch.randn(4, 7, fin) * 3
        ref = layer(x)
        layer.quantize()
        assert layer.weight_codes.dtype == torch.int8 and set(layer.weight_codes.unique().tolist()) <= {-1, 0, 1}
        assert not hasattr(layer, "weight") or "weight" not in dict(layer.named_parameters())
        out = layer(x)
        # Same function; only fp32 summation order differs (exact int sums * one multiply vs a float dot of
        # rounded products): relative error ~1e-6, bounded here at 1e-5 of the output scale.
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_activation_quantization_matches_recipe():
    x = torch.tensor([[0.5, -1.0, 0.25, 0.0]])
    xq, a = quantize_activations(x)
    assert a.item() == pytest.approx(127.0)
    assert xq.tolist() == [[64.0, -127.0, 32.0, 0.0]]  # 63.5 rounds half to even -> 64


@pytest.mark.parametrize("kw", [dict(), dict(activation="relu2", tie_embeddings=False), dict(num_kv_heads=1),
                                dict(attn_head_dim=24, qk_norm=True)])
def test_cached_generation_equals_uncached(kw):
    torch.manual_seed(2)
    m = Transformer(tiny(**kw)).eval()
    for _, layer in m.bitlinears():
        layer.quantize()
    prompt = [5, 17, 3, 42, 8]
    a = generate_ids(m, prompt, 30, use_cache=True)
    b = generate_ids(m, prompt, 30, use_cache=False)
    assert a == b and len(a[0]) == 30
    s1 = generate_ids(m, prompt, 20, do_sample=True, top_k=10, top_p=0.9, temperature=0.8, seed=7,
                      num_return_sequences=3, use_cache=True)
    s2 = generate_ids(m, prompt, 20, do_sample=True, top_k=10, top_p=0.9, temperature=0.8, seed=7,
                      num_return_sequences=3, use_cache=False)
    assert s1 == s2 and len(s1) == 3


def test_cached_logits_equal_full_forward():
    torch.manual_seed(3)
    m = Transformer(tiny()).eval()
    idx = torch.randint(0, 97, (2, 20))
    full = m(idx)
    from bllama.model.transformer import KVCache
    cache = KVCache(m.config, 2, "cpu")
    parts = [m(idx[:, :7], cache, 0), m(idx[:, 7:8], cache, 7), m(idx[:, 8:], cache, 8)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-4)


def test_generation_stops_at_eos_and_validates():
    torch.manual_seed(4)
    m = Transformer(tiny()).eval()
    greedy = generate_ids(m, [1, 2, 3], 10)[0]
    eos = greedy[3]
    out = generate_ids(m, [1, 2, 3], 10, eos_id=eos)[0]
    assert out == greedy[:greedy.index(eos)]
    with pytest.raises(ValueError, match="empty"):
        generate_ids(m, [], 5)
    with pytest.raises(IndexError, match="out of range"):
        generate_ids(m, [1, 97], 5)
    with pytest.raises(ValueError, match="context length"):
        generate_ids(m, list(range(64)), 5)
    with pytest.warns(UserWarning, match="exceeds the context"):
        assert len(generate_ids(m, list(range(60)), 10)[0]) == 4


def test_repetition_penalty_and_filters():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[0, 1]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    f = filter_top_k_top_p(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), top_k=2, top_p=None)
    assert torch.isinf(f).tolist() == [[True, False, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    f = filter_top_k_top_p(probs, top_k=None, top_p=0.75)
    assert torch.isinf(f).tolist() == [[False, False, True, True]]


def test_module_quantize_reports_sizes_and_warns_when_unquantized(sp_tokenizer):
    torch.manual_seed(5)
    m = bLlama(tiny(vocab_size=sp_tokenizer.vocab_size))
    with pytest.warns(UserWarning, match="not quantized"):
        m.generate("hello", sp_tokenizer, max_len=5)
    info = m.quantize_weights_to_ternary()
    assert info["bytes_after"] < info["bytes_before"]
    assert info["packed_file_bytes"] < info["bytes_after"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = m.generate("hello", sp_tokenizer, max_len=5, do_sample=False, top_k=3, repetition_penalty=2)
    assert isinstance(text, str) and text.startswith("hello")


@pytest.mark.parametrize("bias", [False, True])
def test_lean_autograd_function_matches_textbook_ste(bias):
    torch.manual_seed(6)
    layer = BitLinear(256, 48, bias=bias)
    x = torch.randn(2, 9, 256)
    outs = {}
    for lean in (True, False):
        layer.lean = lean
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y * torch.linspace(-1, 1, 48)).sum().backward()
        outs[lean] = (y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone() if bias else None)
    for a, b in zip(outs[True], outs[False]):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lean_function_under_bf16_autocast_and_compile():
    torch.manual_seed(7)
    layer = BitLinear(256, 32)
    x = torch.randn(4, 256, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
    # fullgraph=True fails on any graph break
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x2 = x.detach().clone().requires_grad_(True)
    layer.zero_grad()
    compiled(x2).sum().backward()
    g_compiled = layer.weight.grad.clone()
    layer.zero_grad()
    layer(x.detach()).sum().backward()
    torch.testing.assert_close(g_compiled, layer.weight.grad)
