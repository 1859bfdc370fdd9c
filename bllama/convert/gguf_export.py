"""Write a bLLaMa model as a GGUF file (llama.cpp arch `bitnet`) that our engine and llama.cpp both run.

Ternary projections are TQ2_0 (or TQ1_0) with every block's `d` equal to the tensor scale (or bitnet.cpp's I2_S, one
fp32 scale per tensor: those files run in bitnet.cpp and in our engine, not in upstream llama.cpp), norms f32, the
embedding (and an untied head) f16, and the SentencePiece tokenizer embedded twice: as the standard
`tokenizer.ggml.*` arrays and as the original model bytes (`bllama.tokenizer.sp_model`) so tokenization
round-trips exactly. Written to a temporary file in the target folder, then renamed into place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..atomic import atomic_path
from ..model.config import bLlamaConfig
from ..model.transformer import rope_divisors
from .gguf_schema import (BIASED, FILE_TYPE_I2_S, NORMS, PROJECTIONS, QK, QK_NORMS, TERNARY_TYPES, add_bitnet_metadata,
                          add_ternary_tensor, add_tokenizer, gguf_arch)


def add_model_tensors(writer, net, weight_type: str, progress: bool = False) -> None:
    """Add a Transformer's tensors under their GGUF names: f16 embedding (and untied head), f32 norms, and every
    projection packed as `weight_type` from its ternary codes and scale."""
    from tqdm import tqdm

    f32 = lambda t: t.detach().float().cpu().numpy()
    with torch.no_grad():
        writer.add_tensor("token_embd.weight", f32(net.embed_tokens.weight).astype(np.float16))
        writer.add_tensor("output_norm.weight", f32(net.norm.weight))
        cfg = net.config
        if cfg.rope_scaling is not None:  # llama.cpp's form of Llama-3.1's scaling: a divisor per RoPE frequency
            writer.add_tensor("rope_freqs.weight", f32(rope_divisors(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)))
        if not net.config.tie_embeddings:
            writer.add_tensor("output.weight", f32(net.lm_head.weight).astype(np.float16))
        for i, block in enumerate(tqdm(net.layers, desc="packing ternary layers", unit="layer",
                                       disable=not progress, leave=False)):
            for attr, gname in NORMS.items():
                if "sub_norm" in gname and not net.config.sub_norms:
                    continue
                writer.add_tensor(f"blk.{i}.{gname}.weight", f32(block.get_submodule(attr).weight))
            for attr, gname in QK_NORMS.items() if cfg.qk_norm else ():
                writer.add_tensor(f"blk.{i}.{gname}.weight", f32(block.get_submodule(attr).weight))
            for attr, gname in PROJECTIONS.items():
                layer = block.get_submodule(attr)
                add_ternary_tensor(writer, f"blk.{i}.{gname}.weight", layer.ternary_codes().cpu().numpy(),
                                   float(layer.ternary_scale()), weight_type)
                if gname in BIASED and layer.bias is not None:
                    writer.add_tensor(f"blk.{i}.{gname}.bias", f32(layer.bias))


def end_of_turn_stops(tokenizer, template: str) -> tuple:
    """(ids, strings) that end generation for a SentencePiece model under chat `template`: the template's end-of-turn
    marker (`<|im_end|>` in ChatML) as a token id where the vocabulary has it as one piece, else as a stop string
    (a model fine-tuned on the template writes it in several pieces). The EOS id is always one of the ids."""
    from ..tokenizers.chat_templates import end_of_turn_marker

    bos, eos = (tokenizer.id_to_piece(i) if i is not None else "" for i in (tokenizer.bos_id, tokenizer.eos_id))
    ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    marker = end_of_turn_marker(template, bos, eos)
    if not marker:
        return ids, []
    i = tokenizer.piece_to_id(marker)
    if tokenizer.id_to_piece(i) == marker and i != tokenizer.unk_id:
        return list(dict.fromkeys(ids + [i])), []
    return ids, [marker]


def add_end_of_turn(writer, tokenizer, template: str) -> None:
    """The stops of end_of_turn_stops as GGUF metadata: the end-of-turn id as llama.cpp's eot_token_id and in
    bllama.eos_token_ids (every id Runtime stops at), or the marker in bllama.stop_strings (which the runtime's
    text streams stop at)."""
    ids, strings = end_of_turn_stops(tokenizer, template)
    if len(ids) > 1:
        writer.add_eot_token_id(ids[-1])
        writer.add_array("bllama.eos_token_ids", [int(i) for i in ids])
    if strings:
        writer.add_array("bllama.stop_strings", strings)


def export_gguf(model, tokenizer, path: Union[str, os.PathLike], weight_type: str = "tq2_0",
                name: str = "bllama", progress: bool = False, force_arch: Optional[str] = None,
                chat_template: Optional[str] = None) -> Path:
    """Write `model` (a bLlama or Transformer) and its tokenizer (SentencePiece, or a byte-level BPE one from a
    Hugging Face checkpoint) to `path`; returns the path. The architecture name is gguf_arch's choice (it refuses
    a model that no name describes unless `force_arch` names one). chat_template (else the tokenizer's own, if it
    has one) is stored as `tokenizer.chat_template` (what Runtime.chat and `bllama serve` render); a template
    given here must render a conversation first (bllama/tokenizers/chat_templates), so no file carries a broken one."""
    import gguf

    from ..model.transformer import Transformer

    net = model.model if hasattr(model, "model") and isinstance(model.model, Transformer) else model
    cfg: bLlamaConfig = net.config
    if weight_type not in TERNARY_TYPES:
        raise ValueError(f"weight_type must be one of {TERNARY_TYPES}, got {weight_type!r}")
    if not cfg.quantize:
        raise ValueError("this model has full-precision linear layers (quantize=False); only b1.58 models export")
    if cfg.bias:
        raise ValueError("the GGUF `bitnet` architecture has no projection biases; export a model with bias=False")
    from ..tokenizers.bpe import BPETokenizer

    # A Hugging Face model's embedding may have more rows than its tokenizer.json has tokens (padded for speed);
    # the BPE writer pads the token list. A SentencePiece tokenizer must match the model exactly.
    padded_ok = isinstance(tokenizer, BPETokenizer) and tokenizer.vocab_size < cfg.vocab_size
    if tokenizer.vocab_size != cfg.vocab_size and not padded_ok:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}")

    gguf_arch(cfg, weight_type, force_arch)  # refuses before anything is written
    if chat_template is not None:
        from ..tokenizers.chat_templates import check_template_for

        check_template_for(tokenizer, chat_template)

    path = Path(path)
    w = None  # the size a full disk reports: the tensors' bytes, known once they are added
    with atomic_path(path, size_hint=lambda: sum(t.nbytes for shard in w.tensors for t in shard.values())) as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf_arch(cfg, weight_type, force_arch))
        try:
            w.add_name(name)
            add_bitnet_metadata(w, cfg)
            w.add_file_type({"tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0, "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0,
                             "i2_s": FILE_TYPE_I2_S}[weight_type])
            add_tokenizer(w, tokenizer, cfg.vocab_size)
            template = chat_template or getattr(tokenizer, "chat_template", None)
            if template:
                w.add_chat_template(template)
                if not isinstance(tokenizer, BPETokenizer):  # a BPE tokenizer writes its own eos_token_ids
                    add_end_of_turn(w, tokenizer, template)

            add_model_tensors(w, net, weight_type, progress)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file(progress=progress)
        finally:
            w.close()
    return path
