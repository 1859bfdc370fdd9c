"""Tiny random Hugging Face BitNet checkpoints, written with transformers' own classes and packing helpers.

Nothing here touches the network: configs are built in code, weights are random, tokenizers are trained on a
few lines of text with the `tokenizers` library (or the session's SentencePiece model is copied in).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# transformers' unpack_weights is wrapped in torch.compile; eager is the same math and needs no compiler run.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
TEXT = ("The quick brown fox jumps over the lazy dog. Ternary weights are -1, 0 or +1; activations are int8. "
        "Once upon a time there was a tiny language model that wanted to run fast on a CPU. ") * 20
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def bpe_tokenizer_json(vocab_size: int = 320) -> str:
    """A byte-level BPE tokenizer.json (LLaMA-3 style: ByteLevel pre-tokenizer and decoder, a post-processor that
    puts <|begin_of_text|> first), specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    bos = SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                                       special_tokens=[(bos, 0)])
    return tok.to_str()


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                      "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                      "{% endif %}")


def use_qwen_tokenizer(path: Path) -> Path:
    """Give a checkpoint folder a Qwen2 / Qwen3-style tokenizer: byte-level BPE behind Qwen2's split regex, a
    ByteLevel post-processor (no BOS added), tokenizer_config's bos_token null and eos <|im_end|>, ChatML, while
    config.json still names <|endoftext|> as bos_token_id (as the released folders do)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    split = Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(split, behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=QWEN_SPECIALS,
                                                        show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = Path(path)
    tok.save(str(path / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in QWEN_SPECIALS}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace",
        "chat_template": QWEN_CHAT_TEMPLATE, "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False} for s, i in ids.items()}}))
    cfg = json.loads((path / "config.json").read_text())
    cfg["bos_token_id"], cfg["eos_token_id"] = ids["<|endoftext|>"], ids["<|im_end|>"]
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]]}))
    return path


def _randomize(model, seed: int, std: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):  # Qwen2's q/k/v biases: as large as the projections' outputs, so they matter
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # norms: around one, not exactly one, so a dropped/misplaced norm shows
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def _ternarize(w: torch.Tensor):
    """absmean as transformers' WeightQuant: codes and s = mean|W| (the value multiplied back)."""
    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * inv).round().clamp(-1, 1), (1.0 / inv)


def make_checkpoint(path: Path, style: str = "bitnet", *, hidden: int = 256, ffn: int = 512, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, act: str = "relu2", tied: bool = True,
                    linear_class: str = "autobitlinear", vocab: int = 0, tokenizer: str = "bpe", sp_model=None,
                    theta: float = 500000.0, rope_form: str = "parameters", seed: int = 0, context: int = 128,
                    rms_eps: float = 1e-5, dtype=torch.float32, rope_scaling: dict = None,
                    head_dim: int = None) -> Path:
    """Write a checkpoint folder.

    style: "bitnet" (BitNetForCausalLM, packed weights + weight_scale of `linear_class`),
           "bitnet-online" (BitNetForCausalLM, autobitlinear online: latent weights),
           "llama-bitnet" (LlamaForCausalLM with quant_method bitnet: packed, no sub-norms),
           "1bitllm" (model_type llama, latent weights, sub-norms inner_attn_ln / ffn_layernorm, no quant config),
           "llama" (a full-precision LlamaForCausalLM, weights stored as `dtype`),
           "qwen3" / "qwen3-bitnet" (Qwen3ForCausalLM: QK-norm; full precision, or packed as "llama-bitnet"),
           "qwen2-bitnet" / "qwen2": Qwen2ForCausalLM (q/k/v biases), packed as "llama-bitnet" / full precision.
    head_dim: an explicit per-head width (config.json head_dim; Qwen3's default is 128).
    rope_scaling: extra rope_parameters (Llama-3.1's: rope_type "llama3", factor, low/high_freq_factor, ...).
    """
    from safetensors.torch import save_file
    from transformers import (BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
    from transformers.integrations.bitnet import pack_weights

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer == "bpe":
        tok_json = bpe_tokenizer_json()
        (path / "tokenizer.json").write_text(tok_json, encoding="utf-8")
        n_tok = json.loads(tok_json)["model"]["vocab"].__len__()
        bos, eos = 0, [1, 2]
        (path / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": SPECIALS[0], "eos_token": SPECIALS[2], "chat_template": CHAT_TEMPLATE}))
    else:  # a SentencePiece tokenizer.model
        shutil.copy(sp_model, path / "tokenizer.model")
        import sentencepiece as spm

        n_tok = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
        bos, eos = 1, [2]
    V = max(vocab, n_tok)
    common = dict(vocab_size=V, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_act=act,
                  max_position_embeddings=context, rms_norm_eps=rms_eps, tie_word_embeddings=tied,
                  bos_token_id=bos, eos_token_id=eos if len(eos) > 1 else eos[0])
    rope = {"rope_type": "default", "rope_theta": theta, **(rope_scaling or {})}
    if head_dim is not None:
        common["head_dim"] = head_dim
    packed = style in ("bitnet", "llama-bitnet", "qwen2-bitnet", "qwen3-bitnet")
    if style in ("qwen3", "qwen3-bitnet"):
        cfg = Qwen3Config(**common, rope_parameters=rope)
        model = Qwen3ForCausalLM(cfg)
    elif style in ("llama-bitnet", "llama"):
        cfg = LlamaConfig(**common, rope_parameters=rope)
        model = LlamaForCausalLM(cfg)
    elif style in ("qwen2-bitnet", "qwen2"):
        cfg = Qwen2Config(**common, rope_parameters=rope, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = BitNetConfig(**common, rope_parameters=rope)
        model = BitNetForCausalLM(cfg)
    _randomize(model, seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and tied:
            continue
        if k.endswith("_proj.weight") and packed:
            codes, s = _ternarize(v.float())
            sd[k] = pack_weights(codes.clone()).contiguous()
            ws = s if linear_class == "autobitlinear" else 1.0 / s
            sd[k[:-len("weight")] + "weight_scale"] = ws.reshape(1).float().contiguous()
        else:
            if style == "1bitllm":
                k = k.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln").replace(
                    "mlp.ffn_sub_norm", "mlp.ffn_layernorm")
            sd[k] = v.to(dtype).contiguous()
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    d = cfg.to_dict()
    d.pop("transformers_version", None)
    if rope_form == "theta":  # the older config form
        d.pop("rope_parameters", None)
        d["rope_theta"] = theta
    if packed:
        d["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                    "quantization_mode": "offline"}
    elif style == "bitnet-online":
        d["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                    "quantization_mode": "online"}
    elif style == "1bitllm":
        d["model_type"], d["architectures"] = "llama", ["BitnetForCausalLM"]
    (path / "config.json").write_text(json.dumps(d, indent=1))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    return path


def fp16_scales(ref, linear_class):
    """The reference with its weight_scale rounded to fp16, as bLlama (and the GGUF file) hold every scale."""
    with torch.no_grad():
        for n, b in list(ref.named_buffers()) + list(ref.named_parameters()):
            if n.endswith("weight_scale"):
                s = b.float() if linear_class == "autobitlinear" else 1.0 / b.float()
                s = s.half().float()
                b.copy_(s if linear_class == "autobitlinear" else 1.0 / s)
    return ref


def reference_model(path: Path, style: str):
    """The transformers model that defines the checkpoint's function (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, BitNetForCausalLM

    if style == "1bitllm":  # same math as transformers' BitNet with online (absmean) weight quantization
        ref_dir = Path(str(path) + "-ref")
        if not ref_dir.exists():
            ref_dir.mkdir()
            from safetensors.torch import load_file, save_file

            sd = {k.replace("inner_attn_ln", "attn_sub_norm").replace("ffn_layernorm", "ffn_sub_norm"): v
                  for k, v in load_file(str(path / "model.safetensors")).items()}
            save_file(sd, str(ref_dir / "model.safetensors"), metadata={"format": "pt"})
            d = json.loads((path / "config.json").read_text())
            d.update(model_type="bitnet", architectures=["BitNetForCausalLM"],
                     quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear",
                                          "quantization_mode": "online"})
            (ref_dir / "config.json").write_text(json.dumps(d))
        return BitNetForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
