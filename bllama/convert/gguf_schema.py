"""The GGUF schema bllama reads and writes, importable without torch: tensor names (ours -> GGUF), the
metadata keys of the `bitnet` arch plus bllama.*, and the ternary packers (TQ2_0, TQ1_0, bitnet.cpp's I2_S).
The engine (csrc/) reads the same names."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..model.config import bLlamaConfig

TERNARY_TYPES = ("tq2_0", "tq1_0", "i2_s")
I2_S = 36  # bitnet.cpp's ggml type id for I2_S (gguf-py has no name for it; upstream ggml left 36 unassigned)
FILE_TYPE_I2_S = 40  # bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S
PROJECTIONS = {"attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v",
               "attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
# The projections that may carry a bias (bLlamaConfig.qkv_bias), written as llama.cpp's qwen2 writes them:
# blk.N.<name>.bias, f32 [out features].
BIASED = ("attn_q", "attn_k", "attn_v")
NORMS = {"input_layernorm": "attn_norm", "attn.sub_norm": "attn_sub_norm",
         "post_attention_layernorm": "ffn_norm", "mlp.sub_norm": "ffn_sub_norm"}
QK_NORMS = {"attn.q_norm": "attn_q_norm", "attn.k_norm": "attn_k_norm"}  # llama.cpp's qwen3 names; qk_norm only
QK = 256


def pack_tq2_0(codes: np.ndarray, scale: float) -> np.ndarray:
    """Codes {-1,0,1} [rows, cols] -> TQ2_0 bytes [rows, cols/256*66] with d = scale in every block.

    Within each 128-value half of a block, byte m holds elements m, m+32, m+64, m+96 at shifts 0, 2, 4, 6.
    """
    rows, cols = codes.shape
    if cols % QK:
        raise ValueError(f"TQ2_0 needs rows whose length is a multiple of {QK}, got {cols}")
    q = (codes.astype(np.int8) + 1).astype(np.uint8).reshape(rows, cols // QK, 2, 4, 32)
    qs = q[:, :, :, 0] | (q[:, :, :, 1] << 2) | (q[:, :, :, 2] << 4) | (q[:, :, :, 3] << 6)
    d = np.full((rows, cols // QK, 1), np.float16(scale)).view(np.uint8)  # the 2 bytes of one fp16 per block
    return np.concatenate([qs.reshape(rows, cols // QK, 64), d], axis=-1).reshape(rows, -1)


def pack_i2_s(codes: np.ndarray, scale: float) -> np.ndarray:
    """Codes {-1,0,1} [rows, cols] -> bitnet.cpp's I2_S bytes (what its quantize_i2_s writes on x86): the values in
    row-major order in blocks of 128, value j of a block in byte j % 32 at shift 6 - 2 (j // 32), as q + 1; then
    the tensor's fp32 scale in a 32-byte tail."""
    rows, cols = codes.shape
    if cols % QK:
        raise ValueError(f"I2_S rows must have a length that is a multiple of {QK} here, got {cols}")
    q = (codes.astype(np.int8) + 1).astype(np.uint8).reshape(-1, 4, 32)
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([packed.reshape(-1), tail])


def add_packed_tensor(writer, name: str, data: np.ndarray, qtype, shape: tuple) -> None:
    """Adds pack_ternary's (data, qtype) for a [rows, cols] matrix to a gguf.GGUFWriter."""
    if qtype == I2_S:
        # gguf-py cannot name type 36: add the bytes as a 1-D int8 tensor, then give its info the real dims
        # ({cols, rows}, as bitnet.cpp writes them) and type; its byte count and data stay as they are.
        writer.add_tensor(name, data.view(np.int8))
        info = writer.tensors[-1][name]
        info.shape, info.dtype = tuple(shape), I2_S
    else:
        writer.add_tensor(name, data, raw_dtype=qtype)


def pad_cols(codes: np.ndarray) -> np.ndarray:
    """Codes [rows, cols] with zero columns appended up to the next multiple of QK: a ternary tensor's stored input
    length (docs/architecture.md). The engine feeds zero activations to the padding, so it never contributes."""
    cols = -(-codes.shape[1] // QK) * QK
    if codes.shape[1] == cols:
        return codes
    out = np.zeros((codes.shape[0], cols), np.int8)
    out[:, :codes.shape[1]] = codes
    return out


def add_ternary_tensor(writer, name: str, codes: np.ndarray, scale: float, weight_type: str) -> None:
    """Adds the ternary matrix `codes` * `scale` to a gguf.GGUFWriter in `weight_type` (TERNARY_TYPES), its rows
    zero-padded to whole blocks (pad_cols)."""
    codes = pad_cols(codes)
    add_packed_tensor(writer, name, *pack_ternary(codes, scale, weight_type), codes.shape)


ARCHES = ("bitnet", "bitnet-b1.58", "bitnet-25")  # what the engine (csrc/engine/config.cpp) reads


class ArchitectureError(ValueError):
    """No GGUF architecture name describes the model's graph; the message names the flag that forces one."""


def gguf_arch(cfg: bLlamaConfig, weight_type: str, force_arch: Optional[str] = None, command: str = "export") -> str:
    """The general.architecture a model is written under, chosen so that no reader runs a different graph:

    * SiLU with sub-norms: llama.cpp's `bitnet` (its graph exactly).
    * ReLU^2 with sub-norms: bitnet.cpp's `bitnet-b1.58` (the 2B-4T graph). llama.cpp's `bitnet` graph is SiLU, so
      a ReLU^2 file under `bitnet` would run there with the wrong activation and no error; upstream llama.cpp
      does not know `bitnet-b1.58` and refuses the file instead.
    * q/k/v biases (qkv_bias, from a Qwen2): refused the same way; no ternary graph of llama.cpp has them.
    * No sub-norms (LLaMA blocks, e.g. converted from a full-precision LLaMA): refused. llama.cpp's `bitnet`
      graph has sub-norms and its `llama` graph rotates other dimension pairs; no name describes the model.
      `force_arch="bitnet"` (`bllama <command> --force-arch bitnet`, command being the CLI command the refusal
      should point at) writes it anyway with bllama.sub_norms = false, which our engine honours and other readers
      reject or misread.
    """
    if force_arch is not None:
        if force_arch not in ARCHES:
            raise ValueError(f"force_arch must be one of {ARCHES}, got {force_arch!r}")
        return force_arch
    if not cfg.sub_norms:
        raise ArchitectureError(
            "this model has no sub-norms (bLlamaConfig.sub_norms = false, LLaMA blocks): no GGUF architecture "
            "describes it (llama.cpp's `bitnet` graph applies sub-norms, its `llama` graph another RoPE layout), "
            "so llama.cpp would refuse or misread the file. Our engine runs it with bllama.sub_norms = false: "
            f"pass force_arch='bitnet' (bllama {command} --force-arch bitnet) to write it anyway")
    if cfg.qk_norm:
        raise ArchitectureError(
            "this model has QK-norm (bLlamaConfig.qk_norm, Qwen3's q_norm / k_norm): llama.cpp's `bitnet` graphs do "
            "not apply it, so llama.cpp would refuse or misread the file. Our engine runs it: pass "
            f"force_arch='bitnet' (bllama {command} --force-arch bitnet) to write it anyway")
    if cfg.qkv_bias:
        raise ArchitectureError(
            "this model has q/k/v biases (bLlamaConfig.qkv_bias, Qwen2's attention): llama.cpp's `bitnet` graph has "
            "none, so llama.cpp and bitnet.cpp would refuse the file. Our engine adds them (blk.N.attn_q.bias, as "
            f"llama.cpp's qwen2 names them): pass force_arch='bitnet' (bllama {command} --force-arch bitnet) to write "
            "it anyway")
    if cfg.activation == "relu2":
        return "bitnet-b1.58"
    return "bitnet"


def pack_ternary(codes: np.ndarray, scale: float, weight_type: str) -> tuple:
    """(bytes, ggml type) of codes * scale in weight_type; add_packed_tensor writes them."""
    import gguf

    if weight_type == "tq2_0":
        return pack_tq2_0(codes, scale), gguf.GGMLQuantizationType.TQ2_0
    if weight_type == "tq1_0":
        # gguf's TQ1_0 quantizer uses the block absmax as d, which is `scale` in every block with a nonzero.
        values = codes.astype(np.float32) * np.float32(np.float16(scale))
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType.TQ1_0), gguf.GGMLQuantizationType.TQ1_0
    if weight_type == "i2_s":
        return pack_i2_s(codes, scale), I2_S
    raise ValueError(f"weight_type must be one of {TERNARY_TYPES}, got {weight_type!r}")


def add_bitnet_metadata(writer, cfg: bLlamaConfig) -> None:
    """The llama.cpp `bitnet` hyperparameters plus the bllama.* keys that arch lacks."""
    writer.add_context_length(cfg.context)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.ffn_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.attn_head_dim is not None:  # llama.cpp's per-head q/k and v widths (else embedding_length / head_count)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_string("bllama.activation", cfg.activation)
    writer.add_bool("bllama.tie_embeddings", cfg.tie_embeddings)
    writer.add_bool("bllama.sub_norms", cfg.sub_norms)
    if cfg.rope_scaling is not None:  # the engine reads rope_freqs.weight; our loaders the scaling it comes from
        import json

        writer.add_string("bllama.rope_scaling", json.dumps(cfg.rope_scaling))


def add_tokenizer(writer, tokenizer, vocab_size: Optional[int] = None) -> None:
    from ..tokenizers.bpe import BPETokenizer
    from ..tokenizers.sentencepiece import SentencePieceTokenizer

    if isinstance(tokenizer, BPETokenizer):  # a Hugging Face tokenizer.json, written as the importer writes it
        add_bpe_tokenizer(writer, tokenizer, vocab_size or tokenizer.vocab_size)
        return
    if not isinstance(tokenizer, SentencePieceTokenizer):
        raise ValueError("export needs a SentencePiece tokenizer (bllama.tokenizers.sentencepiece.SentencePieceTokenizer) to "
                         f"embed in the GGUF file; got {type(tokenizer).__name__}")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokenizer.pieces())
    writer.add_token_scores(tokenizer.scores())
    writer.add_token_types(tokenizer.token_types())
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_space_prefix(tokenizer.add_dummy_prefix)  # llama.cpp's default is true
    writer.add_add_eos_token(tokenizer.add_eos)
    writer.add_array("bllama.tokenizer.sp_model", tokenizer.serialized())  # bytes -> a uint8 array


def add_bpe_vocab(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer (tokenizer.json) as llama.cpp's `gpt2` arrays plus the exact JSON bytes; the
    BOS/EOS ids are the caller's (the importer takes them from the checkpoint's config)."""
    import json
    import warnings

    from ..tokenizers.bpe import llama_cpp_pre

    v = tokenizer.gguf_vocab(vocab_size)
    writer.add_tokenizer_model("gpt2")
    tok_json = json.loads(tokenizer.json_text)
    pre = llama_cpp_pre(tok_json)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    else:
        # No name makes llama.cpp split text as this tokenizer does. Left out, llama.cpp falls back to its own
        # "default" split and says that generation quality will be degraded; our engine reads the exact
        # tokenizer.json (bllama.tokenizer.hf_json) and is not affected.
        warnings.warn(
            f"this tokenizer's pre-tokenizer ({json.dumps(tok_json.get('pre_tokenizer'))[:200]}, normalizer "
            f"{(tok_json.get('normalizer') or {}).get('type')}, model {(tok_json.get('model') or {}).get('type')}) "
            "is not one llama.cpp knows by name (GPT-2's, LLaMA-3's, Qwen2's and SmolLM's byte-level BPE are): the "
            "file leaves tokenizer.ggml.pre out. Our engine tokenizes it exactly; llama.cpp would split text its "
            "default way and give other token ids", stacklevel=2)
    writer.add_token_list(v["tokens"])
    writer.add_token_types(v["token_type"])
    writer.add_token_merges(v["merges"])
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_array("bllama.tokenizer.hf_json", tokenizer.json_text.encode("utf-8"))  # bytes -> a uint8 array


def add_bpe_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """add_bpe_vocab with the tokenizer's own BOS and EOS ids."""
    add_bpe_vocab(writer, tokenizer, vocab_size)
    writer.add_add_eos_token(tokenizer.add_eos)
    if tokenizer.bos_id is not None:
        writer.add_bos_token_id(tokenizer.bos_id)
    if tokenizer.eos_ids:
        writer.add_eos_token_id(tokenizer.eos_ids[0])
        writer.add_array("bllama.eos_token_ids", [int(i) for i in tokenizer.eos_ids])
