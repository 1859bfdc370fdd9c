"""Real weights into a trainable bLlama: `load_pretrained(path)` (= `bLlama.from_pretrained`).

Sources:

* Hugging Face `LlamaForCausalLM`-family folders (model_type llama / mistral without sliding window, an explicit
  head_dim included), `Qwen3ForCausalLM` ones (model_type qwen3: QK-norm, head_dim) and `Qwen2ForCausalLM` ones
  (model_type qwen2, whose q_proj / k_proj / v_proj biases become `qkv_bias=True`) in fp16, bf16
  or fp32: no sub-norms, so the model gets `sub_norms=False`. With `quantize=False` it is the checkpoint's function
  exactly (full-precision nn.Linear); with `quantize=True` (the default) the weights become the latent weights of
  BitLinear layers, which is where 1.58-bit conversion starts (`--quant-warmup-steps`).
* Hugging Face `BitNetForCausalLM` folders: latent (bf16 master / `quantization_mode: online`) weights are taken as
  they are; packed uint8 codes + `weight_scale` become latent weights `codes * s / f`, with s the output scale and
  f the fraction of nonzero codes, so that absmean re-quantization gives back exactly those codes and (to fp16)
  that scale. What is lost: the master weights' distance from the rounding thresholds, so every latent weight
  starts at 0 or +-s/f, and fine-tuning must move a weight by about s/(2f) before its code changes.
  Also LLaMA folders with `quant_method: bitnet` (packed, no sub-norms) and 1bitLLM ones (latent, sub-norms
  `inner_attn_ln` / `ffn_layernorm`).
* Our GGUF files (TQ2_0 / TQ1_0 / I2_S): codes x scale as latent weights, the same way as packed HF weights.

Tensors are read one at a time from memory-mapped safetensors (shards included) into the model's own parameters,
so peak memory is the model in fp32 plus one source tensor.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..model.config import bLlamaConfig
from .hf_export import QK_NORMS as _QK_NORMS_TO_HF
from .hf_import import (HFImportError, QKV, SUB_NORMS, check_all_converted, checked_activation, checked_attention,
                        checked_biases, checked_heads, checked_tensors, hf_bias, number, quant_config,
                        read_config_json, rope_scaling_of, special_ids, _rope_theta, _Tensors, unpack_hf)

# HF names inside a layer -> ours (Transformer.layers.N.<ours>)
LAYER_NAMES = {"self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
               "self_attn.o_proj": "attn.o_proj", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
               "mlp.down_proj": "mlp.down_proj", "input_layernorm": "input_layernorm",
               "post_attention_layernorm": "post_attention_layernorm"}
HF_QK_NORMS = {theirs: ours for ours, theirs in _QK_NORMS_TO_HF.items()}  # Qwen3's, HF name -> ours
DEFAULT_MAX_SEQ_LEN = 4096  # a 128k-context model trains on blocks this long unless seq_len is given


@dataclass
class Pretrained:
    """What a checkpoint brings besides its weights."""
    tokenizer: object                      # SentencePieceTokenizer or BPETokenizer
    chat_template: Optional[str] = None
    source: str = ""                       # "hf:llama", "hf:bitnet", "gguf", ...


def latent_from_ternary(codes: torch.Tensor, scale: float) -> torch.Tensor:
    """Latent weights whose absmean ternarization (bitlinear.weight_scale / ternarize) gives back `codes` and
    `scale`: codes * scale / (fraction of nonzero codes)."""
    codes = codes.float()
    frac = float(codes.abs().mean())
    return codes * (scale / frac) if frac > 0 else codes * 0.0


def _layers(net, name: str):
    """net.layers with a bar on stderr where that is a terminal: a large checkpoint takes a while to read."""
    from tqdm import tqdm

    return tqdm(net.layers, desc=f"loading {name}", unit="layer", disable=None, leave=False, file=sys.stderr)


# ---- Hugging Face folders --------------------------------------------------------------------------------------
def _hf_config(cfg: dict, tensors: _Tensors, overrides: dict):
    """(bLlamaConfig, style) of a HF config.json; refuses what the model cannot compute, naming the field."""
    mt = cfg.get("model_type")
    qc = quant_config(cfg)
    if qc and qc.get("quant_method") != "bitnet":
        raise HFImportError(f"unsupported quantization_config.quant_method {qc.get('quant_method')!r}: full-precision "
                            "weights or 'bitnet' (ternary b1.58) ones can be loaded")
    if qc.get("use_rms_norm"):
        raise HFImportError("quantization_config.use_rms_norm (an RMSNorm inside every BitLinear) is not supported")
    if qc.get("linear_class", "bitlinear") not in ("bitlinear", "autobitlinear"):
        raise HFImportError(f"unsupported quantization_config.linear_class {qc.get('linear_class')!r}")
    names = set(tensors.names())
    has = lambda suffix: f"model.layers.0.{suffix}.weight" in names
    context = number(cfg, "max_position_embeddings", int, 2048, nullable=True)
    if mt == "bitnet":
        style, sub = "bitnet", SUB_NORMS["bitnet"]
    elif mt == "qwen2":  # LLaMA blocks with q/k/v biases (checked_biases refuses sub-norms)
        style, sub = "qwen2-bitnet" if qc else "qwen2", None
    elif mt in ("llama", "mistral", "qwen3"):
        sub = SUB_NORMS["1bitllm"] if has(SUB_NORMS["1bitllm"][0]) else \
            SUB_NORMS["bitnet"] if has(SUB_NORMS["bitnet"][0]) else None
        style = "1bitllm" if sub == SUB_NORMS["1bitllm"] else "llama-bitnet" if qc else "llama"
    else:
        raise HFImportError(f"unsupported model_type {mt!r} (architectures {cfg.get('architectures')}): "
                            "LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM and "
                            "BitNetForCausalLM folders can be loaded")
    act = checked_activation(cfg)
    dim, heads, kv = checked_heads(cfg)
    attn_head_dim, qk_norm = checked_attention(cfg, tensors, dim, heads, kv)
    layers = number(cfg, "num_hidden_layers")
    check_all_converted(qc, layers)
    qkv_bias = checked_biases(cfg, names, layers)
    vocab, tied = checked_tensors(cfg, tensors, dim, layers, qk_norm)
    fields = dict(vocab_size=vocab, seq_len=min(context, DEFAULT_MAX_SEQ_LEN), hidden_size=dim, num_heads=heads,
                  num_kv_heads=kv, num_layers=layers, attn_head_dim=attn_head_dim, qk_norm=qk_norm,
                  ffn_size=number(cfg, "intermediate_size"), activation=act, rope_theta=_rope_theta(cfg),
                  rope_scaling=rope_scaling_of(cfg),
                  rms_eps=number(cfg, "rms_norm_eps", float, 1e-6), sub_norms=sub is not None, tie_embeddings=tied,
                  qkv_bias=qkv_bias,
                  quantize=True, context_length=context)  # a full-precision LLaMA too: its weights become latent ones (conversion)
    fields.update(overrides)
    if fields["qkv_bias"] != qkv_bias:  # the biases are part of the checkpoint's function, or there are none to load
        raise HFImportError(f"qkv_bias={fields['qkv_bias']}: this checkpoint's q_proj / k_proj / v_proj have "
                            f"{'biases' if qkv_bias else 'no biases'} (qkv_bias={qkv_bias})")
    # A b1.58 checkpoint's function ternarizes its weights; full-precision layers would run the latent weights
    # instead (packed ones: codes * s / f, off by the factor 1/f), another model. A full-precision BitNet (no
    # quantization_config) is what transformers runs with plain nn.Linear, so that one may stay unquantized.
    if not fields["quantize"] and (qc or (mt != "bitnet" and sub is not None)):
        why = "quantization_config.quant_method bitnet" if qc else f"sub-norms {sub[0]}"
        raise HFImportError(f"quantize=False: this is a b1.58 checkpoint ({why}) whose function ternarizes its "
                            "weights; it loads as a b1.58 model (quantize=True) only")
    if fields["seq_len"] > context:
        raise HFImportError(f"seq_len {fields['seq_len']} exceeds the model's max_position_embeddings {context}")
    return bLlamaConfig(**fields), style, sub, qc.get("linear_class", "bitlinear")


def _hf_weight(tensors: _Tensors, prefix: str, linear_class: str) -> torch.Tensor:
    """A projection's weight as a latent float tensor: packed codes x scale re-expressed, latent ones as stored."""
    w = tensors.get(prefix + ".weight")
    if w.dtype != torch.uint8:
        return w
    if prefix + ".weight_scale" not in tensors:
        raise HFImportError(f"packed tensor '{prefix}.weight' has no '{prefix}.weight_scale'")
    ws = tensors.get(prefix + ".weight_scale").float().reshape(-1)
    if ws.numel() != 1 or not torch.isfinite(ws).all() or float(ws) == 0:
        raise HFImportError(f"'{prefix}.weight_scale' must be one finite nonzero value, got {ws.tolist()[:4]}")
    scale = float(ws) if linear_class == "autobitlinear" else 1.0 / float(ws)  # "bitlinear" divides by it
    return latent_from_ternary(torch.from_numpy(unpack_hf(w.numpy())), scale)


def _copy(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if not value.is_floating_point():  # int8 codes of some other quantization scheme would be cast to -127..127
        raise HFImportError(f"tensor '{name}' has dtype {str(value.dtype).replace('torch.', '')}; float weights "
                            "(float32 / bfloat16 / float16), or packed uint8 projections with a weight_scale, expected")
    if tuple(value.shape) != tuple(param.shape):
        raise HFImportError(f"tensor '{name}' has shape {list(value.shape)}, the model expects {list(param.shape)}")
    param.copy_(value.to(param.dtype))


def _hf_tokenizer(hf_dir: Path, cfg: dict, vocab: int) -> Pretrained:
    from types import SimpleNamespace

    from .hf_import import load_hf_tokenizer

    bos, eos = special_ids(hf_dir, cfg)
    plan = SimpleNamespace(vocab=vocab, bos_id=bos, eos_ids=eos)
    tok, kind, template = load_hf_tokenizer(hf_dir, plan)
    if kind == "bpe":
        tok._eos = list(plan.eos_ids)  # every end-of-turn id the config names, not only tokenizer_config's
    return Pretrained(tokenizer=tok, chat_template=template)


def load_hf(hf_dir: Union[str, os.PathLike], quantize: Optional[bool] = None, **overrides):
    """(bLlama, Pretrained) from a Hugging Face checkpoint folder; `overrides` are bLlamaConfig fields (training
    hyperparameters, seq_len)."""
    from ..train.module import bLlama

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise HFImportError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint folder)")
    cfg = read_config_json(hf_dir)
    tensors = _Tensors(hf_dir)
    if quantize is not None:
        overrides = {**overrides, "quantize": quantize}
    config, style, sub, linear_class = _hf_config(cfg, tensors, overrides)
    model = bLlama(config)
    net = model.model
    with torch.no_grad():
        _copy(net.embed_tokens.weight, tensors.get("model.embed_tokens.weight"), "model.embed_tokens.weight")
        _copy(net.norm.weight, tensors.get("model.norm.weight"), "model.norm.weight")
        if not config.tie_embeddings:
            _copy(net.lm_head.weight, tensors.get("lm_head.weight"), "lm_head.weight")
        for i, block in enumerate(_layers(net, hf_dir.name)):
            hp = f"model.layers.{i}."
            names = dict(LAYER_NAMES)
            if sub:
                names.update({sub[0]: "attn.sub_norm", sub[1]: "mlp.sub_norm"})
            if config.qk_norm:
                names.update(HF_QK_NORMS)
            for hn, ours in names.items():
                param = block.get_submodule(ours).weight
                value = _hf_weight(tensors, hp + hn, linear_class) if hn.endswith("_proj") else \
                    tensors.get(hp + hn + ".weight")
                _copy(param, value, hp + hn + ".weight")
            if config.qkv_bias:
                for hn in QKV:
                    layer = block.get_submodule(LAYER_NAMES[hn])
                    _copy(layer.bias, hf_bias(tensors, hp + hn, layer.out_features, linear_class), hp + hn + ".bias")
    info = _hf_tokenizer(hf_dir, cfg, config.vocab_size)
    info.source = f"hf:{style}"
    return model, info


# ---- our GGUF files --------------------------------------------------------------------------------------------
class _GGUFMetadata:
    """GGUFReader fields behind the engine's metadata_keys() / metadata() interface (for tokenizer_from_gguf)."""

    def __init__(self, reader):
        self.fields = reader.fields

    def metadata_keys(self):
        return list(self.fields)

    def metadata(self, key):
        return self.fields[key].contents()


def _reader(path):
    """A gguf.GGUFReader that also reads bitnet.cpp's I2_S tensors (type 36, which gguf-py has no name for): their
    bytes (n/4 of 2-bit codes and a 32-byte scale tail) come back as uint8 with tensor_type the int 36."""
    import gguf
    from gguf.gguf_reader import ReaderTensor

    from .gguf_schema import I2_S

    class Reader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            i2s = [f for f in fields if int(f.parts[4][0]) == I2_S]
            super()._build_tensors(start_offs, [f for f in fields if int(f.parts[4][0]) != I2_S])
            for field in i2s:
                _, name, _, dims, _, offset = field.parts
                n = int(np.prod(dims))
                offs = int(start_offs + offset[0])
                self.tensors.append(ReaderTensor(name=str(bytes(name), encoding="utf-8"), tensor_type=I2_S, shape=dims,
                                                 n_elements=n, n_bytes=n // 4 + 32, data_offset=offs,
                                                 data=self._get(offs, np.uint8, n // 4 + 32), field=field))

    return Reader(str(path))


def _unpack_i2_s(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The inverse of gguf_schema.pack_i2_s: (codes int8 [rows, cols], scale)."""
    raw = np.asarray(raw).view(np.uint8).reshape(-1)
    n = rows * cols
    packed = raw[:n // 4].reshape(-1, 32)
    q = np.stack([(packed >> s) & 3 for s in (6, 4, 2, 0)], axis=1)  # [blocks, 4, 32]
    codes = q.reshape(rows, cols).astype(np.int8) - 1
    scale = float(raw[n // 4:n // 4 + 4].view(np.float32)[0])
    return codes, scale


def _gguf_ternary(tensor, out: int, inp: int):
    """(codes [out, inp], scale) of a TQ2_0 / TQ1_0 / I2_S tensor (padded columns dropped)."""
    import gguf

    from .gguf_schema import I2_S

    cols = int(tensor.shape[0])  # ggml dims: {cols (padded to 256), rows}
    if int(tensor.tensor_type) == I2_S:
        codes, scale = _unpack_i2_s(tensor.data, out, cols)
    elif tensor.tensor_type in (gguf.GGMLQuantizationType.TQ2_0, gguf.GGMLQuantizationType.TQ1_0):
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(out, cols)
        codes = np.sign(values).astype(np.int8)
        scale = float(np.abs(values).max()) if codes.any() else 1.0
        # One latent scale per tensor: blocks with other scales (d; llama-quantize of weights that are not one
        # ternary matrix times one scale) would all be read as the largest. The engine runs them; training cannot.
        nonzero = np.abs(values[codes != 0])
        if nonzero.size and nonzero.min() != nonzero.max():
            raise ValueError(f"tensor '{tensor.name}' has blocks with different scales ({float(nonzero.min()):g} to "
                             f"{scale:g}): only one scale per tensor can become latent weights")
    else:
        raise ValueError(f"tensor '{tensor.name}' has type {tensor.tensor_type.name}: TQ2_0, TQ1_0 or I2_S expected")
    return codes[:, :inp], scale


def load_gguf(path: Union[str, os.PathLike], **overrides):
    """(bLlama, Pretrained) from one of our GGUF files: codes x scale as latent weights."""
    import gguf

    from ..runtime.engine import engine_module
    from ..tokenizers.from_gguf import tokenizer_from_gguf
    from ..train.module import bLlama
    from .gguf_schema import ARCHES, BIASED, NORMS, PROJECTIONS, QK_NORMS

    # The engine's own checks first (architecture, every metadata key that changes the function, every tensor's
    # name, type and shape): what it would refuse to run must not become a training start either; a tensor this
    # reader does not copy (a bias, RoPE factors) or a key it does not read (RoPE scaling) was a silent other model.
    engine_module().check_model(path)
    r = _reader(path)
    meta = _GGUFMetadata(r)
    get = lambda k, d=None: meta.metadata(k) if k in meta.fields else d
    arch = get("general.architecture")
    if arch not in ARCHES:
        raise ValueError(f"{path}: unsupported general.architecture {arch!r}; {ARCHES} can be loaded")
    p = arch + "."
    tensors = {t.name: t for t in r.tensors}
    emb = tensors["token_embd.weight"]
    dim, heads = int(get(p + "embedding_length")), int(get(p + "attention.head_count"))
    # key_length: heads of another width than dim / heads (the engine has refused key_length != value_length)
    key_length = get(p + "attention.key_length")
    head_dim = int(key_length) if key_length is not None else dim // heads
    attn_head_dim = head_dim if key_length is not None and (dim % heads or head_dim != dim // heads) else None
    ctx = int(get(p + "context_length"))
    theta = float(get(p + "rope.freq_base", 10000.0))
    fields = dict(vocab_size=int(get(p + "vocab_size", emb.shape[1])), seq_len=ctx, context_length=ctx,
                  hidden_size=dim, num_heads=heads, num_kv_heads=int(get(p + "attention.head_count_kv", heads)),
                  num_layers=int(get(p + "block_count")), ffn_size=int(get(p + "feed_forward_length")),
                  activation=str(get("bllama.activation", "silu" if arch == "bitnet" else "relu2")),
                  rope_theta=theta,
                  rms_eps=float(get(p + "attention.layer_norm_rms_epsilon")),
                  tie_embeddings=bool(get("bllama.tie_embeddings", "output.weight" not in tensors)),
                  sub_norms=bool(get("bllama.sub_norms", True)), attn_head_dim=attn_head_dim,
                  qk_norm="blk.0.attn_q_norm.weight" in tensors,  # the engine has checked every layer has both
                  # the engine adds any of these it finds (and refused every other bias); a missing one is zeros
                  qkv_bias=any(n.endswith(".bias") for n in tensors),
                  rope_scaling=_gguf_rope_scaling(path, get("bllama.rope_scaling"), tensors, head_dim, theta))
    has_bias = fields["qkv_bias"]
    fields.update(overrides)
    if has_bias and not (fields["qkv_bias"] or fields.get("bias")):
        raise ValueError(f"{path}: qkv_bias=False, but the file's q/k/v projections have biases")
    config = bLlamaConfig(**fields)
    model = bLlama(config)
    net = model.model
    f32 = lambda name, shape: torch.from_numpy(
        gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type).astype(np.float32).reshape(shape))
    with torch.no_grad():
        net.embed_tokens.weight.copy_(f32("token_embd.weight", net.embed_tokens.weight.shape))
        net.norm.weight.copy_(f32("output_norm.weight", net.norm.weight.shape))
        if not config.tie_embeddings:
            net.lm_head.weight.copy_(f32("output.weight", net.lm_head.weight.shape))
        for i, block in enumerate(_layers(net, Path(path).name)):
            for attr, gname in NORMS.items():
                if "sub_norm" in gname and not config.sub_norms:
                    continue
                w = block.get_submodule(attr).weight
                w.copy_(f32(f"blk.{i}.{gname}.weight", w.shape))
            for attr, gname in QK_NORMS.items() if config.qk_norm else ():
                w = block.get_submodule(attr).weight
                w.copy_(f32(f"blk.{i}.{gname}.weight", w.shape))
            for attr, gname in PROJECTIONS.items():
                layer = block.get_submodule(attr)
                codes, scale = _gguf_ternary(tensors[f"blk.{i}.{gname}.weight"], layer.out_features, layer.in_features)
                if f"blk.{i}.{gname}.scale" in tensors:  # imported HF files: d = 1 and the scale beside it
                    scale *= float(np.asarray(tensors[f"blk.{i}.{gname}.scale"].data).reshape(-1)[0])
                layer.weight.copy_(latent_from_ternary(torch.from_numpy(codes), scale))
                if gname in BIASED and layer.bias is not None:
                    b = f"blk.{i}.{gname}.bias"
                    layer.bias.copy_(f32(b, layer.bias.shape) if b in tensors else torch.zeros_like(layer.bias))
    tok = tokenizer_from_gguf(meta)
    template = get("tokenizer.chat_template")
    return model, Pretrained(tokenizer=tok, chat_template=str(template) if template else None, source="gguf")


def _gguf_rope_scaling(path, named, tensors, head_dim: int, theta: float) -> Optional[dict]:
    """A GGUF file's RoPE scaling: rope_freqs.weight (what the engine and llama.cpp apply), from the scaling our
    files name in bllama.rope_scaling (`named`); divisors without that name (another converter's) cannot be trained
    on."""
    from ..model.config import checked_rope_scaling
    from ..model.transformer import rope_divisors

    if "rope_freqs.weight" not in tensors:
        if named is not None:
            raise ValueError(f"{path}: bllama.rope_scaling is set but the file has no rope_freqs.weight")
        return None
    if named is None:
        raise ValueError(f"{path}: rope_freqs.weight (per-frequency RoPE divisors) without bllama.rope_scaling: the "
                         "scaling they come from is not named, so this file cannot become a training start")
    try:
        scaling = checked_rope_scaling(json.loads(str(named)))
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: bllama.rope_scaling: {e}") from None
    want = rope_divisors(head_dim, theta, scaling).numpy()
    have = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float32).reshape(-1)
    if have.shape != want.shape or not np.allclose(have, want, rtol=1e-6):
        raise ValueError(f"{path}: rope_freqs.weight does not match bllama.rope_scaling {scaling}")
    return scaling


def load_pretrained(path: Union[str, os.PathLike], quantize: Optional[bool] = None, **overrides):
    """(bLlama, Pretrained) from a Hugging Face folder or a .gguf file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":  # a .ckpt, .safetensors or .bin: say what is taken instead of "magic invalid"
                raise ValueError(f"{path} is not a GGUF file: give a .gguf file or a Hugging Face folder (config.json "
                                 f"and *.safetensors); a bllama training checkpoint (.ckpt) continues with --resume")
        if quantize is False:
            raise ValueError("a GGUF file holds ternary weights: it loads as a b1.58 model (quantize=True)")
        return load_gguf(path, **overrides)
    return load_hf(path, quantize=quantize, **overrides)
