"""Convert a local Hugging Face BitNet b1.58 checkpoint folder into our GGUF (`bllama import HF_DIR -o m.gguf`).

Supported (everything else raises `HFImportError`, a ValueError naming what is unsupported):

* `BitNetForCausalLM` (model_type `bitnet`, e.g. microsoft/bitnet-b1.58-2B-4T): packed uint8 weights
  [out/4, in] + `weight_scale`, `quantization_config.linear_class` "autobitlinear" (output multiplied by
  weight_scale) or "bitlinear" (output divided by it); `quantization_mode: online` (latent weights) is
  ternarized here exactly as transformers' WeightQuant does. Sub-norms `attn_sub_norm` / `ffn_sub_norm`.
* `LlamaForCausalLM` with `quantization_config.quant_method: bitnet` (HF1BitLLM, Falcon3-1.58bit): packed
  weights, no sub-norms -> written with `bllama.sub_norms = false` (the engine then skips them; an RMSNorm
  of ones would still normalize, so it is not an equivalent). No GGUF architecture describes that graph, so
  `bllama import` refuses it unless `--force-arch bitnet` is given (gguf_schema.gguf_arch, the rule export uses;
  ReLU^2 models go under `bitnet-b1.58`); Runtime.load of such a folder forces it, the file being its own.
* `Qwen2ForCausalLM` (model_type `qwen2`) with `quant_method: bitnet`: the same, plus its q_proj / k_proj / v_proj
  biases as `blk.N.attn_{q,k,v}.bias` F32 (llama.cpp's qwen2 names; hf_bias says how AutoBitLinear scales them).
  Sliding-window attention and biases on any other projection are refused.
* 1bitLLM (`bitnet_b1_58-large` / `-3B`): full-precision latent weights, sub-norms `inner_attn_ln` /
  `ffn_layernorm`, no quantization_config: ternarized per tensor (absmean, s = mean|W|) at import.

The projection codes go to TQ2_0 with every block's d = 1 and the exact fp32 output scale in the
`blk.N.<proj>.scale` {1} tensor (llama.cpp's bitnet graph multiplies by it too), so no precision is lost to
an fp16 d. Inputs whose length is not a multiple of 256 (1bitLLM 3B: 3200 / 8640) are stored zero-padded to
the next multiple of 256 (docs/architecture.md); the engine feeds zeros to the padding. llama.cpp cannot load
such padded files (its shapes must equal the model's); files of 256-multiple shapes stay llama.cpp-readable.

Tensors are streamed: safetensors is memory-mapped, one tensor (the embedding in row chunks) is converted at
a time and written straight to the file, so peak memory is about the largest projection, not the model.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..atomic import atomic_path
from ..model.config import bLlamaConfig
from .gguf_schema import QK, ArchitectureError, add_bpe_vocab, gguf_arch, pack_tq2_0, pad_cols

PROJ = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down"}
SUB_NORMS = {"bitnet": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
             "1bitllm": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")}
EMBED_CHUNK_ROWS = 8192


class HFImportError(ValueError):
    """The folder is not a checkpoint this importer supports; the message says what is unsupported."""


def checked_activation(cfg: dict) -> str:
    """The checkpoint's activation, after refusing what no bLLaMa model computes (another head than a language
    model's, another activation; checked_biases refuses biases); import and from_pretrained share these refusals."""
    archs = cfg.get("architectures") or []
    other = [a for a in (archs if isinstance(archs, list) else [archs]) if not str(a).endswith("ForCausalLM")]
    if other:  # LlamaForSequenceClassification: a score head (and no lm_head) would have become a tied LM head
        raise HFImportError(f"config.json: architectures {archs} is not a causal language model (*ForCausalLM); "
                            "only language-model checkpoints can be loaded")
    act = cfg.get("hidden_act", "silu")
    act = "silu" if act == "swish" else act  # transformers' ACT2FN maps "swish" to nn.SiLU
    if act not in ("silu", "relu2"):
        raise HFImportError(f"unsupported hidden_act {act!r}: the engine implements 'silu' and 'relu2'")
    return act


QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def checked_biases(cfg: dict, names, layers: int) -> bool:
    """Whether the checkpoint's q_proj / k_proj / v_proj have biases (Qwen2's attention: all three in every layer),
    after refusing every other bias and what a Qwen2 block does not compute (sliding-window attention; sub-norms,
    which transformers' Qwen2 drops and our 1bitLLM / BitNet styles would apply), naming the field or tensor. Import
    and from_pretrained share these refusals."""
    qwen2 = cfg.get("model_type") == "qwen2"
    if not qwen2:  # LLaMA's attention_bias puts one on o_proj too; Qwen2's classes do not read these keys
        for k in ("attention_bias", "mlp_bias"):
            if cfg.get(k):
                raise HFImportError(f"config {k} = true: projection biases are not supported (only Qwen2's q_proj / "
                                    "k_proj / v_proj ones)")
    allowed = {f"model.layers.{i}.{m}.bias" for i in range(layers) for m in QKV} if qwen2 else set()
    biases = {n for n in names if n.endswith(".bias")}
    other = sorted(biases - allowed)
    if other:
        raise HFImportError(f"bias tensor '{other[0]}' ({len(other)} such) is not supported: only Qwen2's q_proj / "
                            "k_proj / v_proj biases are")
    if not qwen2:
        return False
    missing = sorted(allowed - biases)
    if missing:  # transformers would start it from its init: not the checkpoint's function
        raise HFImportError(f"missing tensor '{missing[0]}' ({len(missing)} such): Qwen2's q_proj / k_proj / v_proj "
                            "have biases")
    subs = [n for n in (*SUB_NORMS["bitnet"], *SUB_NORMS["1bitllm"]) if f"model.layers.0.{n}.weight" in names]
    if subs:
        raise HFImportError(f"model_type 'qwen2' with sub-norm '{subs[0]}': Qwen2 blocks have no sub-norms")
    return True  # sliding windows: checked_attention


def hf_bias(tensors, prefix: str, out: int, linear_class: str):
    """The fp32 bias [out] added after the ternary matmul of projection `prefix`, as transformers computes it: its
    AutoBitLinear multiplies the output, bias included, by an offline (packed) weight's weight_scale; BitLinear and
    online quantization add the bias as stored."""
    import torch

    name = prefix + ".bias"
    b = tensors.get(name)
    if not b.is_floating_point():
        raise HFImportError(f"tensor '{name}' has dtype {str(b.dtype).replace('torch.', '')}; float expected")
    if tuple(b.shape) != (out,):
        raise HFImportError(f"tensor '{name}' has shape {list(b.shape)}, expected [{out}]")
    b = b.float()
    if linear_class == "autobitlinear" and tensors.dtype(prefix + ".weight") == "U8":
        if prefix + ".weight_scale" not in tensors:
            raise HFImportError(f"packed tensor '{prefix}.weight' has no '{prefix}.weight_scale'")
        b = b * tensors.get(prefix + ".weight_scale").float().reshape(-1)[0]
    if not torch.isfinite(b).all():
        raise HFImportError(f"tensor '{name}' holds a non-finite value (NaN or Inf)")
    return b


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise HFImportError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):  # every file read here is a JSON object; a list would fail later as .get
        raise HFImportError(f"{path}: expected a JSON object {{...}}, got a {type(data).__name__}")
    return data


# What transformers' config class assumes for a field config.json leaves out (a hand-written or trimmed config): a
# BitNet folder without hidden_act is ReLU^2 with theta 500000 there, not this reader's LLaMA-like fallbacks, and a
# Mistral folder without sliding_window has a 4096-token window.
CLASS_DEFAULTS = {
    "bitnet": {"hidden_act": "relu2", "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048},
    "llama": {"hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
                "sliding_window": 4096},
    # Qwen3Config: heads of 128 whatever hidden_size / num_attention_heads is, an untied head
    "qwen3": {"hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
              "head_dim": 128, "tie_word_embeddings": False, "use_sliding_window": False},
    "qwen2": {"hidden_act": "silu", "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
              "tie_word_embeddings": False, "use_sliding_window": False},
}


def read_config_json(hf_dir: Path) -> dict:
    """config.json with the fields it leaves out filled in as its model_type's transformers class fills them."""
    cfg = _read_json(hf_dir / "config.json")
    defaults = dict(CLASS_DEFAULTS.get(cfg.get("model_type"), {}))
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        defaults.pop("rope_theta", None)  # given there (transformers 5's form); unknown model types have no defaults
    return {**defaults, **cfg}


def _safe_open(path: Path):
    """safe_open, with a message saying what the file is when it is not a complete safetensors file."""
    from safetensors import SafetensorError, safe_open

    with open(path, "rb"):  # safetensors reports a file it may not read as "No such file or directory"
        pass
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as e:
        with open(path, "rb") as fh:
            lfs = fh.read(40).startswith(b"version https://git-lfs")
        if lfs:
            raise HFImportError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in the "
                                "checkpoint's repository (or download the file itself)") from e
        raise HFImportError(f"{path} is not a complete safetensors file (truncated or damaged download?): {e}") from e


# ---- safetensors, memory-mapped ------------------------------------------------------------------------------
class _Tensors:
    """Name -> tensor over one or several (sharded) safetensors files; nothing is read until asked for."""

    def __init__(self, hf_dir: Path):
        try:
            import safetensors  # noqa: F401
        except ImportError as e:  # pragma: no cover
            raise ImportError("importing Hugging Face checkpoints needs `safetensors` (pip install safetensors)") from e
        index = hf_dir / "model.safetensors.index.json"
        indexed = index.exists()
        if indexed:
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise HFImportError(f"{index}: 'weight_map' must be a non-empty object of tensor name -> file name, "
                                    f"got {type(weight_map).__name__}")
            for f in weight_map.values():  # names inside the folder only: an index must not make us open /etc/...
                parts = Path(f).parts if isinstance(f, str) else ()
                if not parts or Path(f).is_absolute() or ".." in parts or "\\" in f or ":" in f:
                    raise HFImportError(f"{index}: weight_map names {f!r}, which is not a file name inside {hf_dir}")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (hf_dir / f).exists()]
            if missing:  # an interrupted download; "No such file" alone did not say the index expects it
                raise HFImportError(f"{index} names {len(missing)} shard(s) that are not in {hf_dir}: "
                                    f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (incomplete "
                                    "download? fetch the missing files)")
        else:
            files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
            if not files:
                found = sorted(p.name for p in hf_dir.iterdir())
                hint = " (PyTorch .bin checkpoints are not supported; re-save with safetensors)" \
                    if any(f.endswith(".bin") for f in found) else ""
                raise HFImportError(f"{hf_dir}: no *.safetensors weights found{hint}")
        self._handles = {}
        self.where: Dict[str, str] = {}
        for f in files:
            h = _safe_open(hf_dir / f)
            self._handles[f] = h
            for k in h.keys():
                if indexed:
                    if weight_map.get(k, f) != f:  # the index names the shard that holds it
                        continue
                elif k in self.where:  # nothing says which copy is meant: the last in sort order is a guess
                    raise HFImportError(f"{hf_dir}: tensor '{k}' is in both {self.where[k]} and {f}, and there is no "
                                        "model.safetensors.index.json saying which to use; remove the stale file")
                self.where[k] = f
        lost = [k for k in weight_map if k not in self.where] if indexed else []
        if lost:  # reported later as a bare "missing tensor", or not at all where nothing reads it
            raise HFImportError(f"{index} puts tensor '{lost[0]}' ({len(lost)} such) in {weight_map[lost[0]]}, which "
                                "does not hold it: a stale index or a shard from another download")

    def names(self):
        return self.where.keys()

    def __contains__(self, name):
        return name in self.where

    def _h(self, name):
        if name not in self.where:
            raise HFImportError(f"missing tensor '{name}' in the checkpoint")
        return self._handles[self.where[name]]

    def get(self, name):
        return self._h(name).get_tensor(name)

    def shape(self, name) -> Tuple[int, ...]:
        return tuple(self._h(name).get_slice(name).get_shape())

    def dtype(self, name) -> str:
        """The safetensors dtype name (F32, BF16, U8, I8, ...), without reading the data."""
        return self._h(name).get_slice(name).get_dtype()

    def rows(self, name, a, b):
        return self._h(name).get_slice(name)[a:b]


# ---- what the checkpoint is ------------------------------------------------------------------------------------
@dataclass
class Plan:
    style: str                     # "bitnet" | "llama-bitnet" | "qwen2-bitnet" | "1bitllm"
    linear_class: str              # "autobitlinear" (multiply by weight_scale) | "bitlinear" (divide)
    sub_norms: Optional[Tuple[str, str]]
    activation: str
    vocab: int
    dim: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    rms_eps: float
    rope_theta: float
    tied: bool
    rope_scaling: Optional[dict] = None
    qkv_bias: bool = False         # q_proj / k_proj / v_proj biases (Qwen2)
    bos_id: Optional[int] = None
    eos_ids: List[int] = field(default_factory=list)
    attn_head_dim: Optional[int] = None  # config.json head_dim where it is not dim / heads
    qk_norm: bool = False                # Qwen3's q_norm / k_norm

    @property
    def head_dim(self):
        return self.attn_head_dim if self.attn_head_dim is not None else self.dim // self.heads

    @property
    def attn_dim(self):
        return self.heads * self.head_dim

    @property
    def dim_in(self):
        return -(-self.dim // QK) * QK

    @property
    def ffn_in(self):
        return -(-self.ffn // QK) * QK


_REQUIRED = object()


def number(cfg: dict, key: str, kind=int, default=_REQUIRED, *, nullable=False, src="config.json"):
    """cfg[key] as a positive int / finite float; missing (or null where `nullable`) gives `default`. A wrong JSON
    type is refused here, naming the field, instead of failing later as a bare TypeError or ZeroDivisionError."""
    v = cfg.get(key)
    if v is None and default is not _REQUIRED and (key not in cfg or nullable):
        return default
    if v is None:
        raise HFImportError(f"{src} has no '{key}'" if key not in cfg else f"{src}: '{key}' is null")
    ok = isinstance(v, int) if kind is int else isinstance(v, (int, float)) and np.isfinite(v)
    if isinstance(v, bool) or not ok or v <= 0:
        raise HFImportError(f"{src}: '{key}' = {v!r} is not a positive {'integer' if kind is int else 'number'}")
    return kind(v)


def _ids(v, what: str) -> List[int]:
    """Token ids of a field that holds one id or a list of them (eos_token_id)."""
    ids = [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise HFImportError(f"{what} = {v!r}: token ids must be integers (not token strings)")
    return ids


def special_ids(hf_dir: Path, cfg: dict) -> Tuple[Optional[int], List[int]]:
    """(bos id, eos ids) from config.json and generation_config.json."""
    gen_path = hf_dir / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.exists() else {}
    eos = list(dict.fromkeys(_ids(cfg.get("eos_token_id"), "config.json eos_token_id") +
                             _ids(gen.get("eos_token_id"), "generation_config.json eos_token_id")))
    bos = _ids(cfg.get("bos_token_id"), "config.json bos_token_id") or \
        _ids(gen.get("bos_token_id"), "generation_config.json bos_token_id")
    if len(bos) > 1:
        raise HFImportError(f"bos_token_id = {bos}: one id expected")
    return (bos[0] if bos else None), eos


def _rope_theta(cfg: dict) -> float:
    theta = number(cfg, "rope_theta", float, 10000.0, nullable=True)
    for key in ("rope_parameters", "rope_scaling"):
        rp = cfg.get(key)
        if not rp:
            continue
        if not isinstance(rp, dict):
            raise HFImportError(f"config '{key}' = {rp!r} is not a dict")
        kind = rp.get("rope_type", rp.get("type", "default"))
        if kind not in ("default", None, "llama3"):
            raise HFImportError(f"RoPE type {kind!r} ({key}) is not supported; the default (unscaled) RoPE and "
                                "Llama-3.1's 'llama3' scaling are")
        if rp.get("partial_rotary_factor", 1.0) != 1.0:
            raise HFImportError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
        theta = number(rp, "rope_theta", float, theta, nullable=True, src=f"config.json {key}")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFImportError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
    return theta


def rope_scaling_of(cfg: dict) -> Optional[dict]:
    """Llama-3.1's RoPE scaling (rope_parameters in transformers 5, rope_scaling before), checked, or None."""
    from ..model.config import checked_rope_scaling

    _rope_theta(cfg)  # refuses every other kind
    for key in ("rope_parameters", "rope_scaling"):
        rp = cfg.get(key)
        if isinstance(rp, dict) and rp.get("rope_type", rp.get("type")) == "llama3":
            try:
                return checked_rope_scaling(rp)
            except ValueError as e:
                raise HFImportError(f"config.json {key}: {e}") from None
    return None


def quant_config(cfg: dict) -> dict:
    qc = cfg.get("quantization_config") or {}
    if not isinstance(qc, dict):
        raise HFImportError(f"config.json: 'quantization_config' = {qc!r} is not an object")
    return qc


def check_all_converted(qc: dict, layers: int) -> None:
    """Refuses a quantization_config whose modules_to_not_convert keeps a projection in full precision: transformers
    runs those as plain nn.Linear layers, while this reader would ternarize them (another model). A name matches as
    transformers matches it: from the start up to a module boundary or as a regular expression, or as a suffix."""
    import re

    keep = qc.get("modules_to_not_convert") or []
    if isinstance(keep, str):
        keep = [keep]
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise HFImportError(f"config.json: quantization_config.modules_to_not_convert = {keep!r} is not a list of names")
    for i in range(layers):
        for proj in PROJ:
            name = f"model.layers.{i}.{proj}"
            for k in keep:
                try:
                    hit = re.match(rf"(?:{k})(?:(?<=\.)|(?=\.|$))", name) is not None
                except re.error:
                    hit = False
                if hit or name.endswith(k):
                    raise HFImportError(f"quantization_config.modules_to_not_convert {k!r} keeps '{name}' in full "
                                        "precision: mixed full-precision / ternary projections are not supported")


def _same_rows(tensors: _Tensors, a: str, b: str) -> bool:
    import torch

    n = tensors.shape(a)[0]
    chunks = [(i, min(n, i + EMBED_CHUNK_ROWS)) for i in range(0, n, EMBED_CHUNK_ROWS)]
    return tensors.shape(a) == tensors.shape(b) and all(
        torch.equal(tensors.rows(a, i, j), tensors.rows(b, i, j)) for i, j in chunks)


def checked_heads(cfg: dict) -> Tuple[int, int, int]:
    """(hidden_size, heads, kv heads), refusing a shape the model cannot have; an explicit head_dim is
    checked_attention's."""
    dim, heads = number(cfg, "hidden_size"), number(cfg, "num_attention_heads")
    kv = number(cfg, "num_key_value_heads", int, heads, nullable=True)
    if heads % kv:
        raise HFImportError(f"config.json: num_attention_heads {heads} is not divisible by num_key_value_heads {kv}")
    if dim % heads and cfg.get("head_dim") is None:
        raise HFImportError(f"config.json: hidden_size {dim} is not divisible by num_attention_heads {heads} and "
                            "there is no head_dim")
    return dim, heads, kv


def checked_attention(cfg: dict, tensors: "_Tensors", dim: int, heads: int, kv: int) -> Tuple[Optional[int], bool]:
    """(head dim where config.json's head_dim is not hidden_size / heads, else None; QK-norm), refusing the attention
    variants the model does not compute: sliding windows (Qwen3's use_sliding_window, any layer_types entry but
    full_attention), a head_dim the projections contradict, QK-norm weights missing or of another shape."""
    from ..model.config import SIZE_LIMITS

    mt = cfg.get("model_type")
    if cfg.get("use_sliding_window"):
        raise HFImportError("config use_sliding_window = true: sliding-window attention is not implemented")
    # Mistral reads sliding_window alone (Qwen's only with use_sliding_window); a window past the context is none
    context = number(cfg, "max_position_embeddings", int, 2048, nullable=True)
    if mt == "mistral" and cfg.get("sliding_window") not in (None, 0) and number(cfg, "sliding_window") < context:
        raise HFImportError(f"config sliding_window = {cfg['sliding_window']}: sliding-window attention is not "
                            "implemented (set it to null only if the model never sees longer contexts)")
    layer_types = cfg.get("layer_types") or []
    other = sorted({str(t) for t in layer_types if t != "full_attention"}) if isinstance(layer_types, list) else \
        [repr(layer_types)]
    if other:
        raise HFImportError(f"config layer_types has {other[0]!r} layers: only full_attention is implemented")
    hd = number(cfg, "head_dim", int, None, nullable=True)
    if hd is not None and (hd % 2 or hd > SIZE_LIMITS["attn_head_dim"]):
        raise HFImportError(f"config.json: head_dim {hd} must be even (RoPE) and at most "
                            f"{SIZE_LIMITS['attn_head_dim']}")
    head_dim = hd if hd is not None else dim // heads
    names = set(tensors.names())
    for proj, want, ax in (("q_proj", heads * head_dim, 0), ("k_proj", kv * head_dim, 0),
                           ("o_proj", heads * head_dim, 1)):
        name = f"model.layers.0.self_attn.{proj}.weight"
        if name not in names:
            continue
        shape = tensors.shape(name)
        have = shape[ax] * (4 if ax == 0 and tensors.dtype(name) == "U8" else 1)  # packed: 4 rows a byte
        if len(shape) != 2 or have != want:
            raise HFImportError(f"tensor '{name}' has shape {list(shape)}, but config.json's {heads} heads "
                                f"(num_key_value_heads {kv}) of head_dim {head_dim} need {want} "
                                f"{'outputs' if ax == 0 else 'inputs'}")
    qk_norm = mt == "qwen3"
    if qk_norm:
        for i in range(number(cfg, "num_hidden_layers")):
            for n in ("q_norm", "k_norm"):
                name = f"model.layers.{i}.self_attn.{n}.weight"
                if name not in names:
                    raise HFImportError(f"missing tensor '{name}' (Qwen3's QK-norm)")
                if tensors.shape(name) != (head_dim,):
                    raise HFImportError(f"tensor '{name}' has shape {list(tensors.shape(name))}, expected "
                                        f"[{head_dim}] (head_dim)")
    return (hd if hd is not None and (dim % heads or hd != dim // heads) else None), qk_norm


def checked_tensors(cfg: dict, tensors: _Tensors, dim: int, layers: int, qk_norm: bool = False) -> Tuple[int, bool]:
    """(vocab, tied): the embedding, head and layer tensors, refused where they contradict config.json (transformers
    errors on some of these, guesses on others; a checkpoint that disagrees with its config is suspect)."""
    names = set(tensors.names())
    emb = "model.embed_tokens.weight"
    if emb not in names:
        raise HFImportError(f"missing tensor '{emb}'")
    vocab, edim = tensors.shape(emb)
    if edim != dim:
        raise HFImportError(f"{emb} has {edim} columns, hidden_size is {dim}")
    if number(cfg, "vocab_size", int, vocab, nullable=True) != vocab:
        raise HFImportError(f"config.json: vocab_size {cfg['vocab_size']} but {emb} has {vocab} rows")
    tie = cfg.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise HFImportError(f"config.json: 'tie_word_embeddings' = {tie!r} is not true or false")
    if tie is False and "lm_head.weight" not in names:
        raise HFImportError("config.json: tie_word_embeddings is false but there is no 'lm_head.weight'")
    # transformers versions differ on which of two differing matrices a tied model uses; an equal copy is harmless
    if tie and "lm_head.weight" in names and not _same_rows(tensors, emb, "lm_head.weight"):
        raise HFImportError(f"config.json: tie_word_embeddings is true but 'lm_head.weight' differs from '{emb}'; "
                            "set it to false to use the separate head, or remove lm_head.weight to tie")
    present = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.") and n.split(".")[2].isdigit()}
    if present and max(present) >= layers:
        raise HFImportError(f"config.json: num_hidden_layers is {layers} but the tensors have layers up to "
                            f"model.layers.{max(present)}")
    # A layer tensor nothing reads is part of another block (QK-norm, a gate): skipping it was another model.
    # rotary_emb.inv_freq is a buffer older transformers saved; the config's rope_theta gives the same values.
    known = {f"{m}.{kind}" for m in PROJ for kind in ("weight", "weight_scale")} | \
        {f"{m}.weight" for m in ("input_layernorm", "post_attention_layernorm", *SUB_NORMS["bitnet"],
                                 *SUB_NORMS["1bitllm"])} | {"self_attn.rotary_emb.inv_freq"} | \
        ({"self_attn.q_norm.weight", "self_attn.k_norm.weight"} if qk_norm else set())
    unknown = sorted(n for n in names if n.startswith("model.layers.") and n.split(".", 3)[3:] and
                     n.split(".", 3)[3] not in known and not n.endswith(".bias"))
    if unknown:
        raise HFImportError(f"tensor '{unknown[0]}' ({len(unknown)} such) is not part of a LLaMA / BitNet block: "
                            "this architecture is not supported")
    return int(vocab), bool(tie) or "lm_head.weight" not in names


def plan_checkpoint(hf_dir: Path, cfg: dict, tensors: _Tensors) -> Plan:
    mt = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    qc = quant_config(cfg)
    what = f"model_type {mt!r} (architectures {archs})"
    if qc and qc.get("quant_method") != "bitnet":
        raise HFImportError(f"unsupported quantization_config.quant_method {qc.get('quant_method')!r}: "
                            "only 'bitnet' (ternary b1.58) checkpoints can be imported")
    if qc.get("use_rms_norm"):
        raise HFImportError("quantization_config.use_rms_norm (an RMSNorm inside every BitLinear) is not supported")
    names = set(tensors.names())
    has = lambda suffix: f"model.layers.0.{suffix}.weight" in names
    if mt == "bitnet":
        if not qc:
            raise HFImportError(f"{what} without a bitnet quantization_config runs full-precision linears; "
                                "not a b1.58 checkpoint")
        style, sub = "bitnet", SUB_NORMS["bitnet"]
    elif mt == "qwen2":  # LLaMA blocks with q/k/v biases; transformers' Qwen2 has no sub-norms
        if not qc:
            raise HFImportError(f"{what} has no bitnet quantization_config: a full-precision Qwen2 is not a b1.58 "
                                f"model; convert it first: bllama train TEXT --init-from {hf_dir} --quant-warmup-steps "
                                "N --out RUN, then bllama export RUN --force-arch bitnet")
        style, sub = "qwen2-bitnet", None  # checked_biases refuses sub-norms
    elif mt in ("llama", "mistral", "qwen3"):
        if has(SUB_NORMS["1bitllm"][0]):
            style, sub = "1bitllm", SUB_NORMS["1bitllm"]
        elif has(SUB_NORMS["bitnet"][0]):
            style, sub = "bitnet", SUB_NORMS["bitnet"]
        elif qc:
            style, sub = "llama-bitnet", None
        else:
            raise HFImportError(f"{what} has no bitnet quantization_config and no 1bitLLM sub-norms "
                                "(inner_attn_ln / ffn_layernorm): a full-precision LLaMA is not a b1.58 model; "
                                f"convert it first: bllama train TEXT --init-from {hf_dir} --quant-warmup-steps N "
                                "--out RUN, then bllama export RUN --force-arch bitnet")
    else:
        raise HFImportError(f"unsupported {what}: supported are BitNetForCausalLM (model_type 'bitnet'), "
                            "LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM with "
                            "quant_method 'bitnet', and 1bitLLM-style LLaMA checkpoints")
    if sub and not has(sub[1]):
        raise HFImportError(f"checkpoint has '{sub[0]}' but no '{sub[1]}' sub-norm in layer 0")
    linear_class = qc.get("linear_class", "bitlinear")
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise HFImportError(f"unsupported quantization_config.linear_class {linear_class!r}")
    act = checked_activation(cfg)

    dim, heads, kv = checked_heads(cfg)
    attn_head_dim, qk_norm = checked_attention(cfg, tensors, dim, heads, kv)
    layers = number(cfg, "num_hidden_layers")
    check_all_converted(qc, layers)
    qkv_bias = checked_biases(cfg, names, layers)
    vocab, tied = checked_tensors(cfg, tensors, dim, layers, qk_norm)
    bos, eos = special_ids(hf_dir, cfg)
    return Plan(style=style, linear_class=linear_class, sub_norms=sub, activation=act, vocab=vocab, dim=dim,
                ffn=number(cfg, "intermediate_size"), layers=layers, heads=heads, kv_heads=kv,
                context=number(cfg, "max_position_embeddings", int, 2048, nullable=True),
                rms_eps=number(cfg, "rms_norm_eps", float, 1e-6), rope_theta=_rope_theta(cfg), tied=tied,
                rope_scaling=rope_scaling_of(cfg), qkv_bias=qkv_bias, bos_id=bos, eos_ids=eos,
                attn_head_dim=attn_head_dim, qk_norm=qk_norm)


# ---- ternary weights ---------------------------------------------------------------------------------------------
def unpack_hf(packed: np.ndarray) -> np.ndarray:
    """HF packed uint8 [R, in] -> codes int8 [4R, in]: bits 2i..2i+1 of P[r, c] hold W[i*R + r, c] + 1."""
    p = np.asarray(packed, dtype=np.uint8)
    codes = np.concatenate([(p >> (2 * i)) & 3 for i in range(4)], axis=0).astype(np.int8) - 1
    if (codes > 1).any():
        raise HFImportError("packed weights contain the code 3, which is not ternary")
    return codes


def ternary_from_hf(tensors: _Tensors, prefix: str, out: int, inp: int, linear_class: str) -> Tuple[np.ndarray, float]:
    """(codes int8 [out, inp], fp32 output scale) of one projection, packed or latent."""
    import torch

    name = prefix + ".weight"
    shape = tensors.shape(name)
    w = tensors.get(name)
    if w.dtype == torch.uint8:
        if shape != (out // 4, inp) or out % 4:
            raise HFImportError(f"packed tensor '{name}' has shape {list(shape)}, expected [{out // 4}, {inp}] "
                                f"(4 ternary rows per byte, out features {out})")
        codes = unpack_hf(w.numpy())
        if prefix + ".weight_scale" not in tensors:
            raise HFImportError(f"packed tensor '{name}' has no '{prefix}.weight_scale'")
        ws = tensors.get(prefix + ".weight_scale").float().reshape(-1)
        if ws.numel() != 1:
            raise HFImportError(f"'{prefix}.weight_scale' has {ws.numel()} values; only one scale per tensor "
                                "is supported")
        ws = np.float32(ws.item())
        if not np.isfinite(ws) or ws == 0:
            raise HFImportError(f"'{prefix}.weight_scale' = {ws} is not a usable scale")
        scale = ws if linear_class == "autobitlinear" else np.float32(1.0) / ws
        return codes, float(scale)
    if not w.is_floating_point():
        raise HFImportError(f"tensor '{name}' has dtype {w.dtype}; expected packed uint8 or a float latent weight")
    if shape != (out, inp):
        raise HFImportError(f"tensor '{name}' has shape {list(shape)}, expected [{out}, {inp}]")
    # transformers' WeightQuant / 1bitLLM weight_quant: scale = 1 / mean|W|; codes = clamp(round(W * scale))
    w = w.float()
    inv = 1.0 / w.abs().mean().clamp_(min=1e-5)
    codes = (w * inv).round().clamp_(-1, 1).to(torch.int8).numpy()
    return codes, float(np.float32(1.0) / np.float32(inv.item()))


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def _token_name(v) -> Optional[str]:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _chat_template(hf_dir: Path, tc: dict) -> Optional[str]:
    if (hf_dir / "chat_template.jinja").exists():
        return (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    template = tc.get("chat_template")
    if isinstance(template, list):  # named templates: keep the default one
        if not all(isinstance(t, dict) for t in template):
            raise HFImportError(f"{hf_dir / 'tokenizer_config.json'}: 'chat_template' is a list, but not of "
                                "{\"name\": ..., \"template\": ...} objects")
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise HFImportError(f"{hf_dir / 'tokenizer_config.json'}: 'chat_template' = {template!r:.80} is not a string")
    return template


def _post_processor_ends(hf_dir: Path, tokenizer_json: dict) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """(id of the special token the tokenizer.json post-processor puts before a single text, id of the one it puts
    after it), each None where it puts none; None when it has no template (no post-processor, or ByteLevel only).
    TemplateProcessing names its tokens by spelling, with their ids in special_tokens; Roberta/Bert processors
    carry [spelling, id] pairs."""
    pp = tokenizer_json.get("post_processor") or {}
    ends = None
    for p in pp.get("processors", [pp]) if isinstance(pp, dict) else ():
        if not isinstance(p, dict):
            continue
        if p.get("type") in ("RobertaProcessing", "BertProcessing"):
            cls, sep = p.get("cls") or [None, None], p.get("sep") or [None, None]
            ends = (cls[1], sep[1])
        elif p.get("type") == "TemplateProcessing" and p.get("single"):
            table = p.get("special_tokens") or {}

            def special_id(item):
                name = item.get("SpecialToken", {}).get("id") if isinstance(item, dict) else None
                if name is None:
                    return None
                ids = (table.get(name) or {}).get("ids") or []
                if len(ids) != 1 or isinstance(ids[0], bool) or not isinstance(ids[0], int):
                    raise HFImportError(f"{hf_dir / 'tokenizer.json'}: the post-processor's special token {name!r} "
                                        f"has ids {ids!r}; one integer id expected")
                return ids[0]
            ends = (special_id(p["single"][0]), special_id(p["single"][-1]))
    return ends


def _adds_bos(hf_dir: Path, tc: dict, tokenizer_json: Optional[dict]) -> bool:
    """Whether transformers' tokenizer for this folder puts BOS first: tokenizer_config.json's add_bos_token,
    else a tokenizer.json post-processor that starts with a special token (LLaMA-3's TemplateProcessing), else
    the class's default (only the LLaMA / SentencePiece classes add it; GPT-2 style ones such as SmolLM's don't)."""
    if "add_bos_token" in tc:
        if not isinstance(tc["add_bos_token"], bool):
            raise HFImportError(f"{hf_dir / 'tokenizer_config.json'}: 'add_bos_token' = {tc['add_bos_token']!r} is "
                                "not true or false")
        return tc["add_bos_token"]
    if tokenizer_json is None:  # SentencePiece
        return True
    ends = _post_processor_ends(hf_dir, tokenizer_json)
    if ends is not None:
        return ends[0] is not None
    return tc.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                         "CodeLlamaTokenizerFast")


def _adds_eos(hf_dir: Path, tc: dict, tokenizer_json: Optional[dict], eos_named: Optional[int]) -> Optional[int]:
    """The id transformers' tokenizer for this folder puts after every text, or None: tokenizer_config.json's
    add_eos_token (its eos_token), else a tokenizer.json post-processor that ends with a special token."""
    if "add_eos_token" in tc:
        if not isinstance(tc["add_eos_token"], bool):
            raise HFImportError(f"{hf_dir / 'tokenizer_config.json'}: 'add_eos_token' = {tc['add_eos_token']!r} is "
                                "not true or false")
        if tc["add_eos_token"] and eos_named is None:
            raise HFImportError(f"{hf_dir / 'tokenizer_config.json'}: 'add_eos_token' is true but no eos_token is "
                                "named (tokenizer_config.json eos_token, or config.json eos_token_id)")
        return eos_named if tc["add_eos_token"] else None
    ends = _post_processor_ends(hf_dir, tokenizer_json) if tokenizer_json is not None else None
    return ends[1] if ends is not None else None


def _sp_lacks_added_tokens(hf_dir: Path, sp) -> bool:
    """Whether the folder's tokenizer.json adds tokens its tokenizer.model does not have (ChatML's <|im_start|> added
    to a LLaMA-2 vocabulary): transformers then uses the tokenizer.json, and so must we. Such tokens listed only in
    added_tokens.json (a folder without tokenizer.json) cannot be rebuilt here: refused, naming them."""
    if (hf_dir / "tokenizer.json").exists():
        added = [(t.get("content"), t.get("id")) for t in
                 _read_json(hf_dir / "tokenizer.json").get("added_tokens") or [] if isinstance(t, dict)]
        return any(i != sp.piece_to_id(c) or i >= sp.vocab_size for c, i in added if isinstance(c, str))
    if (hf_dir / "added_tokens.json").exists():
        extra = {c: i for c, i in _read_json(hf_dir / "added_tokens.json").items()
                 if not isinstance(i, int) or i >= sp.vocab_size or sp.piece_to_id(c) != i}
        if extra:
            raise HFImportError(f"{hf_dir / 'added_tokens.json'} adds tokens that tokenizer.model does not have "
                                f"({', '.join(f'{c!r} = {i}' for c, i in list(extra.items())[:5])}): give the folder "
                                "a tokenizer.json with them (transformers' save_pretrained writes one)")
    return False


def load_hf_tokenizer(hf_dir: Path, plan: Plan):
    """SentencePiece (tokenizer.model) or BPE (tokenizer.json, also where it adds tokens to a tokenizer.model beside
    it); fills plan.bos_id / eos_ids."""
    tc = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").exists() else {}
    template = _chat_template(hf_dir, tc)
    sp = None
    if (hf_dir / "tokenizer.model").exists():
        from ..tokenizers.sentencepiece import SentencePieceTokenizer

        sp = SentencePieceTokenizer.from_file(hf_dir / "tokenizer.model")
        if _sp_lacks_added_tokens(hf_dir, sp):
            sp = None
    if sp is not None:
        tok = sp
        tok.add_bos = _adds_bos(hf_dir, tc, None)
        if plan.bos_id is None:
            plan.bos_id = tok.bos_id
        if not plan.eos_ids and tok.eos_id is not None:
            plan.eos_ids = [tok.eos_id]
        appended = _adds_eos(hf_dir, tc, None, tok.eos_id)
        tok.add_eos = appended is not None
        if appended is not None:  # SentencePiece appends its own </s>: the file's eos_token_id must be that one
            plan.eos_ids = [appended] + [i for i in plan.eos_ids if i != appended]
        kind = "sentencepiece"
    elif (hf_dir / "tokenizer.json").exists():
        from ..tokenizers.bpe import BPETokenizer

        text = (hf_dir / "tokenizer.json").read_text(encoding="utf-8")
        try:
            probe = BPETokenizer(text)
        except ValueError as e:
            raise HFImportError(f"{hf_dir / 'tokenizer.json'}: {e}") from e
        for key in ("bos_token", "eos_token"):
            tid = probe.piece_to_id(_token_name(tc.get(key))) if _token_name(tc.get(key)) else None
            if tid is not None and key == "bos_token" and plan.bos_id is None:
                plan.bos_id = tid
            if tid is not None and key == "eos_token" and tid not in plan.eos_ids:
                plan.eos_ids.append(tid)
        tok_json = json.loads(text)
        first = (_post_processor_ends(hf_dir, tok_json) or (None, None))[0]
        if plan.bos_id is None and first is not None:
            # A LLaMA-3 style folder may name its BOS only in the post-processor's template: without this id the
            # BOS the model always saw first was silently left out.
            plan.bos_id = first
        named = _token_name(tc.get("eos_token"))
        appended = _adds_eos(hf_dir, tc, tok_json, (probe.piece_to_id(named) if named else None) or
                             (plan.eos_ids[0] if plan.eos_ids else None))
        if appended is not None:
            # every text ends with it (add_eos_token, or a template "... $A </s>"): first, so that it is what encode
            # appends and what the file's tokenizer.ggml.eos_token_id (what llama.cpp appends) says
            plan.eos_ids[:] = [appended] + [i for i in plan.eos_ids if i != appended]
        tok = BPETokenizer(text, bos_id=plan.bos_id, eos_ids=plan.eos_ids,
                           add_bos=_adds_bos(hf_dir, tc, tok_json), add_eos=appended is not None,
                           chat_template=template)
        kind = "bpe"
    else:
        raise HFImportError(f"{hf_dir}: no tokenizer.model (SentencePiece) or tokenizer.json (BPE) found")
    if tok.vocab_size > plan.vocab:
        raise HFImportError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {plan.vocab}")
    for i in plan.eos_ids + ([plan.bos_id] if plan.bos_id is not None else []):
        if not 0 <= i < plan.vocab:
            raise HFImportError(f"special token id {i} is outside the vocabulary [0, {plan.vocab})")
    return tok, kind, template


def _add_tokenizer(w, tok, kind: str, plan: Plan, template: Optional[str]) -> None:
    from ..tokenizers.sentencepiece import TOKEN_TYPE_UNUSED

    if kind == "sentencepiece":
        pieces, scores, types = tok.pieces(), tok.scores(), tok.token_types()
        for i in range(len(pieces), plan.vocab):  # model rows the tokenizer never produces
            pieces.append(f"[PAD{i}]")
            scores.append(0.0)
            types.append(TOKEN_TYPE_UNUSED)
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores(scores)
        w.add_token_types(types)
        if tok.unk_id is not None:
            w.add_unk_token_id(tok.unk_id)
        w.add_add_bos_token(tok.add_bos)
        w.add_add_space_prefix(tok.add_dummy_prefix)  # llama.cpp's default is true
        w.add_array("bllama.tokenizer.sp_model", tok.serialized())
    else:
        add_bpe_vocab(w, tok, plan.vocab)
    w.add_add_eos_token(tok.add_eos)
    if plan.bos_id is not None:
        w.add_bos_token_id(plan.bos_id)
    if plan.eos_ids:
        w.add_eos_token_id(plan.eos_ids[0])
        w.add_array("bllama.eos_token_ids", [int(i) for i in plan.eos_ids])
    if template:
        w.add_chat_template(template)


# ---- the conversion ----------------------------------------------------------------------------------------------
def _progress(total: int, enabled: bool, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - install_requires has it
        class tqdm:  # noqa: N801 - minimal stand-in
            def __init__(self, *a, **k): pass
            def update(self, n=1): pass
            def close(self): pass
    return tqdm(total=total, disable=not enabled, desc=desc, unit="tensor", file=sys.stderr)


def import_hf(hf_dir: Union[str, os.PathLike], output: Union[str, os.PathLike], progress: bool = True,
              name: Optional[str] = None, force_arch: Optional[str] = None) -> Path:
    """Convert the checkpoint folder `hf_dir` into the GGUF file `output` (written atomically); returns it.
    The architecture name is gguf_arch's choice, as for `bllama export`: a checkpoint without sub-norms (the
    LLaMA-bitnet style) is refused unless `force_arch` names one (ArchitectureError, before anything is written)."""
    import gguf

    hf_dir = Path(hf_dir)
    if not hf_dir.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {hf_dir}")
    if not hf_dir.is_dir():
        raise HFImportError(f"{hf_dir} is not a folder; give a Hugging Face checkpoint folder")
    if not (hf_dir / "config.json").exists():
        raise HFImportError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint folder)")
    cfg = read_config_json(hf_dir)
    tensors = _Tensors(hf_dir)
    plan = plan_checkpoint(hf_dir, cfg, tensors)
    tok, tok_kind, template = load_hf_tokenizer(hf_dir, plan)
    P = plan
    arch = gguf_arch(bLlamaConfig(activation=P.activation, sub_norms=P.sub_norms is not None, qkv_bias=P.qkv_bias,
                                  qk_norm=P.qk_norm), "tq2_0", force_arch, command="import")
    kvd = P.kv_heads * P.head_dim
    shapes = {"attn_q": (P.attn_dim, P.dim), "attn_k": (kvd, P.dim), "attn_v": (kvd, P.dim),
              "attn_output": (P.dim, P.attn_dim),
              "ffn_gate": (P.ffn, P.dim), "ffn_up": (P.ffn, P.dim), "ffn_down": (P.dim, P.ffn)}

    # Every tensor's name, numpy shape, dtype, ggml type and a function producing its bytes (in order).
    jobs: List[tuple] = []
    emb = "model.embed_tokens.weight"
    jobs.append(("token_embd.weight", (P.vocab, P.dim), np.float16, None, ("embed", emb)))
    jobs.append(("output_norm.weight", (P.dim,), np.float32, None, ("f32", "model.norm.weight", (P.dim,))))
    if P.rope_scaling is not None:  # llama.cpp's form of Llama-3.1's scaling: a divisor per RoPE frequency
        from ..model.transformer import rope_divisors

        div = rope_divisors(P.head_dim, P.rope_theta, P.rope_scaling).numpy().astype(np.float32)
        jobs.append(("rope_freqs.weight", (P.head_dim // 2,), np.float32, None, ("const", div)))
    if not P.tied:
        jobs.append(("output.weight", (P.vocab, P.dim), np.float16, None, ("embed", "lm_head.weight")))
    for i in range(P.layers):
        hp, bp = f"model.layers.{i}.", f"blk.{i}."
        norms = [("input_layernorm", "attn_norm", P.dim), ("post_attention_layernorm", "ffn_norm", P.dim)]
        if P.sub_norms:
            norms += [(P.sub_norms[0], "attn_sub_norm", P.attn_dim), (P.sub_norms[1], "ffn_sub_norm", P.ffn)]
        if P.qk_norm:  # llama.cpp's qwen3 names
            norms += [("self_attn.q_norm", "attn_q_norm", P.head_dim), ("self_attn.k_norm", "attn_k_norm", P.head_dim)]
        for hn, gn, n in norms:
            jobs.append((bp + gn + ".weight", (n,), np.float32, None, ("f32", hp + hn + ".weight", (n,))))
        for hn, gn in PROJ.items():
            out, inp = shapes[gn]
            inp_pad = -(-inp // QK) * QK
            jobs.append((bp + gn + ".weight", (out, inp_pad // QK * 66), np.uint8, gguf.GGMLQuantizationType.TQ2_0,
                         ("ternary", hp + hn, out, inp, inp_pad)))
            jobs.append((bp + gn + ".scale", (1,), np.float32, None, ("scale", hp + hn)))
            if P.qkv_bias and hn in QKV:  # llama.cpp's qwen2 names: blk.N.attn_q.bias, f32 [out]
                jobs.append((bp + gn + ".bias", (out,), np.float32, None, ("bias", hp + hn, out)))
    # Check the source shapes of norms / head up front so a bad checkpoint fails before writing anything.
    for _, _, _, _, src in jobs:
        if src[0] == "bias":  # dtype, shape, finite: small enough to read twice
            hf_bias(tensors, src[1], src[2], P.linear_class)
        if src[0] in ("f32", "embed") and tensors.dtype(src[1]) not in ("F32", "F16", "BF16", "F64"):
            raise HFImportError(f"tensor '{src[1]}' has dtype {tensors.dtype(src[1])}; float32 / bfloat16 / float16 "
                                "expected (integers would be taken as the weights' values)")
        if src[0] == "f32" and tensors.shape(src[1]) != src[2]:
            raise HFImportError(f"tensor '{src[1]}' has shape {list(tensors.shape(src[1]))}, expected {list(src[2])}")
        if src[0] == "embed" and tensors.shape(src[1]) != (P.vocab, P.dim):
            raise HFImportError(f"tensor '{src[1]}' has shape {list(tensors.shape(src[1]))}, "
                                f"expected [{P.vocab}, {P.dim}]")

    output = Path(output)
    bar = None
    with atomic_path(output) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        try:
            w.add_name(name or cfg.get("_name_or_path") or hf_dir.name)
            w.add_context_length(P.context)
            w.add_embedding_length(P.dim)
            w.add_block_count(P.layers)
            w.add_feed_forward_length(P.ffn)
            w.add_head_count(P.heads)
            w.add_head_count_kv(P.kv_heads)
            w.add_layer_norm_rms_eps(P.rms_eps)
            w.add_rope_freq_base(P.rope_theta)
            w.add_rope_dimension_count(P.head_dim)
            if P.attn_head_dim is not None:  # llama.cpp's per-head q/k and v widths
                w.add_key_length(P.head_dim)
                w.add_value_length(P.head_dim)
            w.add_vocab_size(P.vocab)
            w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ2_0)
            w.add_string("bllama.activation", P.activation)
            w.add_bool("bllama.tie_embeddings", P.tied)
            w.add_bool("bllama.sub_norms", P.sub_norms is not None)
            w.add_string("bllama.source", f"hf:{P.style}:{P.linear_class}")
            if P.rope_scaling is not None:
                w.add_string("bllama.rope_scaling", json.dumps(P.rope_scaling))
            _add_tokenizer(w, tok, tok_kind, P, template)
            for gname, shape, dtype, raw, _ in jobs:
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                w.add_tensor_info(gname, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            fout = w.fout[0]
            bar = _progress(len(jobs), progress, f"import {hf_dir.name}")
            for gname, shape, dtype, raw, src in jobs:
                for chunk_i, data in enumerate(_produce(tensors, P, src)):
                    if chunk_i == 0:
                        w.write_padding(fout, fout.tell())
                    fout.write(np.ascontiguousarray(data).tobytes())
                w.write_padding(fout, fout.tell())
                bar.update(1)
            w.tensors[0].clear()
        finally:
            w.close()
            if bar is not None:
                bar.close()
    return output


def _produce(tensors: _Tensors, P: Plan, src) -> Iterator[np.ndarray]:
    """The bytes of one output tensor, in one or more chunks."""
    kind = src[0]
    if kind == "const":
        yield src[1]
    elif kind == "embed":
        n = tensors.shape(src[1])[0]
        for a in range(0, n, EMBED_CHUNK_ROWS):
            yield tensors.rows(src[1], a, min(n, a + EMBED_CHUNK_ROWS)).float().numpy().astype(np.float16)
    elif kind == "f32":
        yield tensors.get(src[1]).float().numpy().astype(np.float32)
    elif kind == "ternary":
        _, prefix, out, inp, inp_pad = src
        codes, scale = ternary_from_hf(tensors, prefix, out, inp, P.linear_class)
        P._scales = getattr(P, "_scales", {})
        P._scales[prefix] = scale
        yield pack_tq2_0(pad_cols(codes), 1.0)
    elif kind == "bias":
        yield hf_bias(tensors, src[1], src[2], P.linear_class).numpy().astype(np.float32)
    elif kind == "scale":
        yield np.asarray([P._scales.pop(src[1])], dtype=np.float32)
    else:  # pragma: no cover
        raise AssertionError(kind)


def load_hf_dir_engine(hf_dir: Union[str, os.PathLike], make_engine):
    """Import `hf_dir` into a temporary GGUF, open it with make_engine(path), then delete the file (the engine
    keeps its mapping, so the data stays readable until the engine is gone)."""
    tmpdir = tempfile.mkdtemp(prefix="bllama-hf-")
    path = Path(tmpdir) / "model.gguf"
    try:
        try:
            import_hf(hf_dir, path, progress=False)
        except ArchitectureError:  # no sub-norms: the file is read by our engine only, which honours the flag
            import_hf(hf_dir, path, progress=False, force_arch="bitnet")
        return make_engine(str(path))
    finally:
        if path.exists():
            path.unlink()
        os.rmdir(tmpdir)
