"""Write a bLLaMa model as a Hugging Face BitNet checkpoint (`bllama export --format hf`).

The result loads with `transformers.BitNetForCausalLM.from_pretrained` (model_type `bitnet`, transformers >=
4.52): the seven projections as packed uint8 [out/4, in] (bits 2i..2i+1 of P[r, c] hold W[i*R + r, c] + 1,
R = out/4) plus `weight_scale` = our s (`quantization_config.linear_class = "autobitlinear"`: the output is
multiplied by it, `quantization_mode = "offline"`), norms and the embedding in float32, and the tokenizer files
(tokenizer.model, or a byte-level BPE model's tokenizer.json, + tokenizer_config.json). The function is the same as
ours: HF's AutoBitLinear quantizes activations per token to int8 with 127 / absmax exactly like
bllama/model/bitlinear.py, its RMSNorm and rotate_half
RoPE are ours, and its BitNet block puts the sub-norms where we do. A model without sub-norms (converted from a
LLaMA) is written as `LlamaForCausalLM` with the same quantization_config (HF1BitLLM's form, which
`bllama import` reads back): transformers' LLaMA block is ours without them; one with QK-norm (converted from a
Qwen3) as `Qwen3ForCausalLM`, whose block is the LLaMA one with q_norm / k_norm before RoPE; with q/k/v biases
(converted from a Qwen2) as `Qwen2ForCausalLM`, whose q_proj / k_proj / v_proj carry them. AutoBitLinear multiplies
the bias by weight_scale with the output, so the file holds ours divided by s. An explicit head width (attn_head_dim)
is config.json's head_dim, which every class sizes its projections by. A model with sub-norms and q/k/v biases, or
with both QK-norm and biases, has no transformers class and is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..atomic import atomic_dir

NAMES = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
         "attn.o_proj": "self_attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
         "mlp.down_proj": "mlp.down_proj"}
NORMS = {"input_layernorm": "input_layernorm", "attn.sub_norm": "self_attn.attn_sub_norm",
         "post_attention_layernorm": "post_attention_layernorm", "mlp.sub_norm": "mlp.ffn_sub_norm"}
QK_NORMS = {"attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm"}


def pack_hf(codes: np.ndarray) -> np.ndarray:
    """codes int8 [out, in] in {-1,0,1}, out % 4 == 0 -> HF packed uint8 [out/4, in]."""
    out = codes.shape[0]
    if out % 4:
        raise ValueError(f"HF packing needs out features divisible by 4, got {out}")
    q = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(4, out // 4, -1)
    return q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6)


def _bpe_json(tokenizer) -> str:
    """The tokenizer's tokenizer.json with a post-processor that adds BOS (and EOS) exactly when ours does:
    transformers' fast tokenizer takes that from tokenizer.json alone (add_bos_token / add_eos_token in
    tokenizer_config.json are not read), and ours never runs the post-processor, so the source folder's one may say
    otherwise (SmolLM: none; a run set add_bos). Written as JSON, not the template string syntax, which cannot spell a
    token with a space or a colon."""
    data = json.loads(tokenizer.json_text)
    ends = [(tokenizer.bos_id, 0)] if tokenizer.add_bos else []
    ends += [(tokenizer.eos_id, 1)] if getattr(tokenizer, "add_eos", False) else []
    if not ends:
        data["post_processor"] = None
        return json.dumps(data, ensure_ascii=False)
    special = lambda name, type_id: {"SpecialToken": {"id": name, "type_id": type_id}}
    sequence = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}

    def around(seq: str, type_id: int) -> list:
        out = [special(tokenizer.id_to_piece(i), type_id) for i, end in ends if end == 0] + [sequence(seq, type_id)]
        return out + [special(tokenizer.id_to_piece(i), type_id) for i, end in ends if end == 1]

    data["post_processor"] = {
        "type": "TemplateProcessing", "single": around("A", 0), "pair": around("A", 0) + around("B", 1),
        "special_tokens": {tokenizer.id_to_piece(i): {"id": tokenizer.id_to_piece(i), "ids": [i],
                                                      "tokens": [tokenizer.id_to_piece(i)]} for i, _ in ends}}
    return json.dumps(data, ensure_ascii=False)


def export_hf(model, tokenizer, out_dir: Union[str, os.PathLike], dtype: str = "float32",
              chat_template: Optional[str] = None) -> Path:
    """Write the checkpoint folder `out_dir` (created; an existing non-empty folder is refused). chat_template (else
    the tokenizer's own) goes into tokenizer_config.json, where transformers' apply_chat_template finds it."""
    from safetensors.torch import save_file

    from ..model.transformer import Transformer
    from ..tokenizers.sentencepiece import SentencePieceTokenizer

    net = model.model if hasattr(model, "model") and isinstance(model.model, Transformer) else model
    cfg = net.config
    if not cfg.quantize:
        raise ValueError("this model has full-precision linear layers (quantize=False); only b1.58 models export")
    if cfg.bias:
        raise ValueError("transformers' BitNet has no projection biases; export a model with bias=False")
    if cfg.sub_norms and cfg.qk_norm:
        raise ValueError("no transformers class has both b1.58 sub-norms and QK-norm (BitNet has the first, Qwen3 "
                         "the second); this model cannot be exported as a Hugging Face checkpoint")
    if cfg.sub_norms and cfg.attn_dim != cfg.hidden_size:
        raise ValueError(f"transformers' BitNet sizes its attention sub-norm by hidden_size ({cfg.hidden_size}), this "
                         f"model's is num_heads x head_dim = {cfg.attn_dim}: it cannot be exported as a Hugging Face "
                         "BitNet checkpoint")
    if cfg.qkv_bias and cfg.sub_norms:
        raise ValueError("this model has sub-norms and q/k/v biases (qkv_bias): no transformers class has both "
                         "(BitNet's attention_bias would add an o_proj bias, Qwen2 has no sub-norms); export it as "
                         "GGUF")
    if cfg.qkv_bias and cfg.qk_norm:
        raise ValueError("this model has QK-norm and q/k/v biases: no transformers class has both (Qwen3 has the "
                         "first, Qwen2 the second); export it as GGUF")
    from ..tokenizers.bpe import BPETokenizer

    bpe = isinstance(tokenizer, BPETokenizer)
    if not bpe and not isinstance(tokenizer, SentencePieceTokenizer):
        raise ValueError(f"export needs a SentencePiece or byte-level BPE tokenizer, got {type(tokenizer).__name__}")
    # a checkpoint's embedding often has more rows than its tokenizer has tokens (padded to a round number); both
    # transformers and our import take that as it is
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}")
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if tdtype is None:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if chat_template is not None:
        from ..tokenizers.chat_templates import check_template_for

        check_template_for(tokenizer, chat_template)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} exists and is not empty")

    sd = {}
    with torch.no_grad():
        sd["model.embed_tokens.weight"] = net.embed_tokens.weight.detach().to(tdtype).contiguous()
        sd["model.norm.weight"] = net.norm.weight.detach().to(tdtype).contiguous()
        if not cfg.tie_embeddings:
            sd["lm_head.weight"] = net.lm_head.weight.detach().to(tdtype).contiguous()
        for i, block in enumerate(net.layers):
            p = f"model.layers.{i}."
            for ours, theirs in NORMS.items():
                if "sub_norm" in ours and not cfg.sub_norms:
                    continue
                sd[p + theirs + ".weight"] = block.get_submodule(ours).weight.detach().to(tdtype).contiguous()
            for ours, theirs in QK_NORMS.items() if cfg.qk_norm else ():
                sd[p + theirs + ".weight"] = block.get_submodule(ours).weight.detach().to(tdtype).contiguous()
            for ours, theirs in NAMES.items():
                layer = block.get_submodule(ours)
                codes = layer.ternary_codes().cpu().numpy().astype(np.int8)
                sd[p + theirs + ".weight"] = torch.from_numpy(pack_hf(codes))
                # float32 whatever the model dtype: s is an fp16-rounded float32 in our model
                s = layer.ternary_scale().detach().float().reshape(1)
                sd[p + theirs + ".weight_scale"] = s.contiguous()
                if layer.bias is not None:  # AutoBitLinear: (x W^T + b) * weight_scale
                    sd[p + theirs + ".bias"] = (layer.bias.detach().float() / s).to(tdtype).contiguous()
    # every end-of-turn id (LLaMA-3 instruct: <|end_of_text|> and <|eot_id|>), so transformers' generate stops on each
    eos = tokenizer.eos_ids if bpe and len(tokenizer.eos_ids) > 1 else tokenizer.eos_id
    kind = "bitnet" if cfg.sub_norms else "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"
    classes = {"bitnet": "BitNetForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "llama": "LlamaForCausalLM"}
    config = {
        "architectures": [classes[kind]],
        "model_type": kind, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "hidden_act": cfg.activation,
        "max_position_embeddings": cfg.context, "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling is None else {**cfg.rope_scaling, "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": bool(cfg.tie_embeddings), "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": tokenizer.bos_id, "eos_token_id": eos, "pad_token_id": None,
        "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline"},
    }
    if kind == "qwen2":  # every layer full attention (we have no sliding window); Qwen2 reads no attention_bias
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers,
                      layer_types=["full_attention"] * cfg.num_layers)
        del config["attention_bias"]
    if cfg.rope_scaling is not None:  # transformers 4.x reads the scaling from here
        config["rope_scaling"] = dict(cfg.rope_scaling)
    if cfg.qk_norm:  # Qwen3Config's default would be sliding windows off anyway; said, not assumed
        config["use_sliding_window"] = False
    piece = lambda i: tokenizer.id_to_piece(i) if i is not None else None
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast" if bpe else "LlamaTokenizer",
               "bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
               "unk_token": piece(tokenizer.unk_id), "add_bos_token": bool(tokenizer.add_bos),
               "add_eos_token": bool(getattr(tokenizer, "add_eos", False)), "legacy": False, "model_max_length": cfg.context}
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if template:
        tok_cfg["chat_template"] = template
    with atomic_dir(out_dir, size_hint=sum(t.numel() * t.element_size() for t in sd.values())) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos}, indent=2))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
        (tmp / "special_tokens_map.json").write_text(json.dumps(
            {k: tok_cfg[k] for k in ("bos_token", "eos_token", "unk_token") if tok_cfg[k]}, indent=2))
        if bpe:
            (tmp / "tokenizer.json").write_text(_bpe_json(tokenizer), encoding="utf-8")
        else:
            (tmp / "tokenizer.model").write_bytes(tokenizer.serialized())
    return out_dir
