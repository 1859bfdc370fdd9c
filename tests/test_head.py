"""The int8 and 4-bit LM heads (Runtime.load(head="q8" | "q4"), csrc/kernels/head_q8.h / head_q4.h) against the
file's f16 head.

Error model. The q8 logit is sum_k (w_k + e_k)(x_k + f_k) with e the weight rounding error (|e| <= d/2 per row,
d = absmax/127) and f the per-token activation rounding error (|f| <= 1/(2a), a = 127/absmax). Both are
zero-mean and uncorrelated with the signal, so over many rows/tokens the relative L2 error of the logits is
about sqrt(eps_w^2 + eps_x^2), eps_w = ||W - W_q||/||W|| (measured here from the exported head with numpy,
the engine's own formula) and eps_x the same ratio for the final-normed hidden rows (measured from the PyTorch
model via a hook). The test allows 2x that estimate and requires argmax agreement where the f16 top-2 margin
exceeds 4x the typical error (a tie-breaking flip between near-equal logits is not a defect). The q4 head has the
same model with eps_w from its own rounding (4 bits, an f16 scale per 32 columns; q4_rel_error below).
"""
import copy

import gguf
import numpy as np
import pytest
import torch

from bllama import Runtime, bLlama, bLlamaConfig
from bllama.tools.evaluate import text_metrics
from bllama.convert.gguf_export import export_gguf


def q8_rel_error(m: np.ndarray) -> float:
    """Relative Frobenius error of per-row absmax int8 quantization, as the engine does it."""
    m = m.astype(np.float32)
    d = np.abs(m).max(axis=-1, keepdims=True) / np.float32(127)
    q = np.clip(np.rint(m / np.where(d > 0, d, 1)), -127, 127)
    return float(np.linalg.norm(m - q * d) / np.linalg.norm(m))


def q4_rel_error(m: np.ndarray) -> float:
    """Relative Frobenius error of absmax 4-bit quantization: per 32 columns, the value of largest magnitude maps to
    -8 (scale rounded to f16), q = clip(rint(w / d), -8, 7). The engine searches each block's scale for a squared
    error never larger than this one's (weighted by the final norm's gain squared, which is 1 in an untrained
    model), so this bounds its error from above."""
    m = m.astype(np.float32)
    b = m.reshape(m.shape[0], -1, 32)
    big = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
    d = (big / np.float32(-8)).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(b / np.where(d == 0, 1, d)), -8, 7)
    return float(np.linalg.norm(b - q * d) / np.linalg.norm(b))


def head_from_file(path) -> np.ndarray:
    r = gguf.GGUFReader(str(path))
    t = {t.name: t for t in r.tensors}
    h = t.get("output.weight", t["token_embd.weight"])
    return np.asarray(h.data, dtype=np.float32).reshape(-1, int(h.shape[0]))


@pytest.mark.parametrize("head", ["q8", "q4"])
@pytest.mark.parametrize("tied", [True, False])
def test_low_byte_head_logits_close_to_f16(tmp_path, sp_tokenizer, tied, head):
    torch.manual_seed(0)
    cfg = bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=96, hidden_size=256, num_layers=2, ffn_size=512,
                       tie_embeddings=tied)
    model = bLlama(cfg)
    model.quantize_weights_to_ternary()
    path = export_gguf(model, sp_tokenizer, tmp_path / "m.gguf")
    f16, q8 = Runtime.load(path, threads=2, head="f16"), Runtime.load(path, threads=2, head=head)
    V, D = cfg.vocab_size, cfg.hidden_size
    assert f16.config["head"] == "f16" and q8.config["head"] == head
    assert f16.config["head_bytes"] == 2 * V * D
    assert q8.config["head_bytes"] == (V * D + 8 * V if head == "q8" else V * D // 2 + 2 * V * D // 32)

    ids = torch.randint(3, V, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    a, b = f16.logits(ids), q8.logits(ids)
    rel = float(np.linalg.norm(b - a) / np.linalg.norm(a))

    hidden = []
    hook = model.model.norm.register_forward_hook(lambda m, i, o: hidden.append(o[0].detach().numpy()))
    with torch.no_grad():
        model.model(torch.tensor([ids]))
    hook.remove()
    w = head_from_file(path)
    eps_w, eps_x = (q8_rel_error if head == "q8" else q4_rel_error)(w), q8_rel_error(hidden[0])
    est = float(np.hypot(eps_w, eps_x))
    print(f"\n{head} head ({'tied' if tied else 'untied'}): logits rel L2 {rel:.2e}, estimate {est:.2e} "
          f"(eps_w {eps_w:.2e}, eps_x {eps_x:.2e})")
    assert rel < 2 * est and rel < (2e-2 if head == "q8" else 2e-1), (rel, est)

    top2 = np.sort(a, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 4 * est * np.sqrt(np.mean(a * a))
    agree = a.argmax(-1) == b.argmax(-1)
    # A random model's logits are nearly flat, so many top-2 margins lie inside q4's ~9% error (4 bits on Gaussian
    # weights): flips there are expected; the clear margins above must all agree.
    assert agree[clear].all() and agree.mean() >= (0.9 if head == "q8" else 0.7), (agree.mean(), clear.sum())

    # The decode path (single-token GEMV tiles) picks what the prompt path (multi-token tiles) ranks first.
    gen = q8._engine.generate(ids[:8], 8, stop_ids=[])
    assert len(gen) == 8
    assert q8.logits(ids[:8] + gen)[7:15].argmax(-1).tolist() == gen


@pytest.mark.parametrize("head", ["q8", "q4"])
def test_low_byte_head_perplexity_within_half_percent(trained_tiny, tmp_path, head):
    model, tok = copy.deepcopy(trained_tiny["model"]), trained_tiny["tokenizer"]  # the fixture is shared
    model.quantize_weights_to_ternary()
    path = export_gguf(model, tok, tmp_path / "tiny.gguf")
    text = trained_tiny["held_out"][:6000]
    f16 = Runtime.load(path, threads=2, head="f16").evaluate(text)
    q8 = Runtime.load(path, threads=2, head=head).evaluate(text)
    change = q8["perplexity"] / f16["perplexity"] - 1
    print(f"\ntrained tiny: perplexity f16 head {f16['perplexity']:.4f}, {head} head {q8['perplexity']:.4f} "
          f"({100 * change:+.3f}%), {f16['tokens']} tokens")
    assert f16["tokens"] == q8["tokens"] > 500
    assert abs(change) < 0.005, (f16, q8)


def test_head_option_errors(tmp_path, sp_tokenizer):
    model = bLlama(bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=32, hidden_size=256, num_layers=1,
                                ffn_size=512))
    model.quantize_weights_to_ternary()
    path = export_gguf(model, sp_tokenizer, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="head"):
        Runtime.load(path, head="int4")
    from bllama import _engine

    with pytest.raises(ValueError, match="head"):
        _engine.Engine(str(path), 1, head="q3")


def test_defaults_are_low_byte(tmp_path, sp_tokenizer):
    """Runtime.load and the engine default to the 4-bit head and the fp16 KV cache (issue 20); f16 / float32 stay
    one argument away."""
    model = bLlama(bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=32, hidden_size=256, num_layers=1,
                                ffn_size=512))
    model.quantize_weights_to_ternary()
    path = export_gguf(model, sp_tokenizer, tmp_path / "m.gguf")
    rt = Runtime.load(path, threads=1)
    assert rt.config["head"] == "q4" and rt.config["kv_cache_dtype"] == "float16"
    exact = Runtime.load(path, threads=1, head="f16", kv_cache_dtype="float32")
    assert exact.config["head"] == "f16" and exact.config["kv_cache_dtype"] == "float32"


def test_shipped_model_q4_perplexity_within_half_percent():
    """Issue 20's bound on a real trained head, the shipped model's (tied, hidden 256), over the first 40,000 of
    its model card's held-out characters: absmax block scales missed it there (+1.35% on this text, +0.95% on all
    of it), the searched, norm-weighted scales hold it (+0.15% here, -0.02% on all of it; unweighted searched
    scales +0.29% here; bench/RESULTS.md, "4-bit head: searched scales")."""
    from bllama.assets import shakespeare_model
    from bllama.tools import demo

    text, what = demo.demo_corpus()
    assert "Shakespeare" in what  # the tests run from a clone: bench/data is there
    held = demo.split_lines(text)[1][:40_000]
    f16 = Runtime.load(shakespeare_model(), threads=2, head="f16").evaluate(held)
    q4 = Runtime.load(shakespeare_model(), threads=2, head="q4").evaluate(held)
    change = q4["perplexity"] / f16["perplexity"] - 1
    print(f"\nshipped model: perplexity f16 {f16['perplexity']:.4f}, q4 {q4['perplexity']:.4f} ({100 * change:+.3f}%)")
    assert f16["tokens"] == q4["tokens"] > 10_000
    assert abs(change) < 0.005, (f16, q4)
