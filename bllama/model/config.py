"""Model and training configuration.

`bLlamaConfig()` is the original bLLaMa's 1.7B model (vocab 32000, seq_len 1024, hidden 2048, 16 heads,
24 layers, FFN 8192). `bLlamaConfig.preset("tiny")` and friends give small models for tests and CPU demos.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Optional

ACTIVATIONS = ("silu", "relu2")
# Far past any model we know (LLaMA-3: vocab 128256, context 131072, hidden 16384, FFN 53248, 126 layers).
# The fields that shape a model's weights: a checkpoint it starts from (--init-from) decides them.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_heads", "num_layers", "bias", "qkv_bias", "num_kv_heads",
                "ffn_size", "activation", "tie_embeddings", "sub_norms", "attn_head_dim", "qk_norm")
SIZE_LIMITS = dict(vocab_size=1 << 22, seq_len=1 << 20, context_length=1 << 24, hidden_size=1 << 16, num_layers=1024, ffn_size=1 << 18,
                   attn_head_dim=1024)
SCHEDULES = ("cosine", "two_stage")


def _number(v, kind) -> bool:
    return isinstance(v, kind) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _typed(f: dataclasses.Field, value):
    """`value` as field `f`'s annotated type (int, float, bool, str, Optional of one, or a pair of numbers), or
    TypeError naming the field."""
    kind = f.type.replace("Optional[", "").rstrip("]")
    if value is None and f.type.startswith("Optional["):
        return None
    if kind == "int" and _number(value, numbers.Integral):
        return int(value)
    if kind == "float" and _number(value, numbers.Real):
        return float(value)
    if kind == "bool" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "dict" and isinstance(value, dict):
        return dict(value)
    if kind == "tuple":
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(_number(v, numbers.Real) for v in value):
            return tuple(float(v) for v in value)
        raise TypeError(f"config field {f.name} must be two numbers, got {value!r}")
    raise TypeError(f"config field {f.name} must be {'an' if kind == 'int' else 'a'} {kind}, got {value!r}")


LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def checked_rope_scaling(scaling: Optional[dict]) -> Optional[dict]:
    """The one RoPE scaling the models here compute (Llama-3.1's), in its canonical form, or ValueError."""
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise ValueError(f"rope_scaling: rope_type {kind!r} is not supported; only 'llama3' (Llama-3.1's) is")
    out = {"rope_type": "llama3"}
    for key in LLAMA3_ROPE_KEYS:
        v = scaling.get(key)
        if not _number(v, numbers.Real) or not 0 < v < 1e9:
            raise ValueError(f"rope_scaling: {key} must be a positive number, got {v!r}")
        out[key] = float(v) if key != "original_max_position_embeddings" else int(v)
    if not out["high_freq_factor"] > out["low_freq_factor"]:
        raise ValueError(f"rope_scaling: high_freq_factor ({out['high_freq_factor']}) must be above low_freq_factor "
                         f"({out['low_freq_factor']})")
    return out


@dataclass
class bLlamaConfig:
    # model (field names of the original bLLaMa)
    vocab_size: int = 32000
    seq_len: int = 1024
    hidden_size: int = 2048
    num_heads: int = 16
    num_layers: int = 24
    dropout: float = 0.0
    bias: bool = False  # every linear layer has a bias
    # model (what the b1.58 "subln" LLaMA needs on top)
    # Biases on q_proj / k_proj / v_proj only (Qwen2's attention; GGUF blk.N.attn_{q,k,v}.bias), added in float after
    # the ternary matmul and before RoPE. Implied by `bias`, which puts one on every linear.
    qkv_bias: bool = False
    num_kv_heads: Optional[int] = None  # None: same as num_heads (no grouped-query attention)
    ffn_size: int = 8192
    activation: str = "silu"  # "silu" or "relu2"
    # Per-head q/k/v width where it is not hidden_size / num_heads (Qwen3-0.6B: hidden 1024, 16 heads of 128): q_proj
    # is hidden -> num_heads * head_dim, o_proj back. None: hidden_size / num_heads. See `head_dim`.
    attn_head_dim: Optional[int] = None
    # Qwen3's QK-norm: an RMSNorm over each head's head_dim on q and k, after the projections and before RoPE.
    qk_norm: bool = False
    rope_theta: float = 10000.0
    # Llama-3.1's RoPE scaling (HF rope_parameters of rope_type "llama3": factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings): low frequencies are divided by up to `factor`. None: plain RoPE.
    rope_scaling: Optional[dict] = None
    rms_eps: float = 1e-5
    tie_embeddings: bool = True
    # RMSNorms before o_proj and down_proj (the b1.58 "subln" blocks). False: plain LLaMA blocks, as in models
    # converted from a full-precision LLaMA / HF1BitLLM checkpoints (GGUF bllama.sub_norms = false).
    sub_norms: bool = True
    quantize: bool = True  # False: plain full-precision nn.Linear (the baseline twin in benchmarks)
    # The context an exported file declares (GGUF context_length, HF max_position_embeddings) when it is longer than
    # seq_len: a model started from a checkpoint (--init-from) keeps the checkpoint's, whatever block length it is
    # fine-tuned on. None: seq_len. See `context`.
    context_length: Optional[int] = None
    # training
    batch_size: int = 8
    lr: float = 1.5e-3
    lr_stage2: Optional[float] = None  # two_stage schedule: peak of the second half (default lr * 2/3)
    min_lr_ratio: float = 0.1
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 375
    max_steps: int = 10000  # length of the schedule
    schedule: str = "cosine"  # "cosine" (warm-up + cosine) or "two_stage" (b1.58: LR drop + WD 0 at mid-run)
    grad_clip: float = 1.0
    # Recompute each transformer block's activations in the backward pass instead of keeping them
    # (torch.utils.checkpoint, non-reentrant): less memory for about one more forward pass of compute.
    activation_checkpointing: bool = False

    def __post_init__(self):
        self._check_types()
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.num_heads <= 0 or self.num_kv_heads <= 0:
            raise ValueError(f"num_heads and num_kv_heads must be positive, got {self.num_heads}, {self.num_kv_heads}")
        if self.attn_head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads} (set "
                             "attn_head_dim for heads of another width)")
        if self.attn_head_dim is not None and not 0 < self.attn_head_dim <= SIZE_LIMITS["attn_head_dim"]:
            raise ValueError(f"attn_head_dim must be in [1, {SIZE_LIMITS['attn_head_dim']}], got {self.attn_head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dimension {self.head_dim} must be even for RoPE")
        for name in ("vocab_size", "seq_len", "hidden_size", "num_layers", "ffn_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
            if getattr(self, name) > SIZE_LIMITS[name]:  # a typo, not a model: seq_len=10**8 filled 24 GiB for RoPE
                raise ValueError(f"{name} must be at most {SIZE_LIMITS[name]}, got {getattr(self, name)}")
        self.rope_scaling = checked_rope_scaling(self.rope_scaling)
        if self.context_length is not None and not 0 < self.context_length <= SIZE_LIMITS["context_length"]:
            raise ValueError(f"context_length must be in [1, {SIZE_LIMITS['context_length']}], got {self.context_length}")

    def _check_types(self) -> None:
        """Every field has its annotated type (--set lr=abc ended in a TypeError inside torch's optimizer); an int
        is taken where a float is expected, numpy scalars (a file's metadata) as Python ones."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _typed(f, getattr(self, f.name)))

    @classmethod
    def check_overrides(cls, overrides: dict) -> None:
        """ValueError naming the first unknown field or mistyped value of `overrides` (`bllama train --set`), before
        any work; the rules of the fields together are checked when the config is built."""
        cls._check_names(overrides)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, value in overrides.items():
            try:
                _typed(fields[name], value)
            except TypeError as e:
                raise ValueError(str(e)) from None

    @property
    def context(self) -> int:
        """The context length a model file of this model declares: seq_len, or context_length where longer."""
        return max(self.seq_len, self.context_length or 0)

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim if self.attn_head_dim is not None else self.hidden_size // self.num_heads

    @property
    def attn_dim(self) -> int:
        """The width of the attention heads together: q_proj's outputs, o_proj's inputs (hidden_size unless
        attn_head_dim says otherwise)."""
        return self.num_heads * self.head_dim

    @property
    def lr2(self) -> float:
        return self.lr_stage2 if self.lr_stage2 is not None else self.lr * 2 / 3

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def _check_names(cls, d: dict) -> None:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}; the fields are "
                             f"{[f.name for f in dataclasses.fields(cls)]}")

    @classmethod
    def from_dict(cls, d: dict) -> "bLlamaConfig":
        cls._check_names(d)
        return cls(**d)

    def replace(self, **overrides) -> "bLlamaConfig":
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> "bLlamaConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        cls._check_names(overrides)
        return cls(**{**PRESETS[name], **overrides})


# Input sizes (hidden_size, ffn_size) are multiples of 256 so every projection packs into GGUF TQ2_0 blocks.
PRESETS = {
    # ~5M parameters with a 2048-piece vocabulary: tests and CPU demos.
    "tiny": dict(vocab_size=2048, seq_len=256, hidden_size=256, num_heads=8, num_kv_heads=4, num_layers=6,
                 ffn_size=768, batch_size=16, lr=3e-3, warmup_steps=100, max_steps=2000),
    # ~30M parameters.
    "small": dict(vocab_size=8192, seq_len=512, hidden_size=512, num_heads=8, num_kv_heads=8, num_layers=8,
                  ffn_size=1536, batch_size=16, lr=2e-3, warmup_steps=200, max_steps=10000),
    # The original bLLaMa 1.7B (same as bLlamaConfig()).
    "1.7b": dict(),
    # Microsoft BitNet b1.58 2B4T shapes.
    "2b4t": dict(vocab_size=128256, seq_len=4096, hidden_size=2560, num_heads=20, num_kv_heads=5, num_layers=30,
                 ffn_size=6912, activation="relu2", rope_theta=500000.0, lr=1.2e-3, schedule="two_stage"),
}
