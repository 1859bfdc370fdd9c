"""Rebuilding a model file's tokenizer from its GGUF metadata (SentencePiece or byte-level BPE)."""
from __future__ import annotations


def tokenizer_from_gguf(engine):
    """tokenizer_of_gguf, with the file's chat template (tokenizer.chat_template) and the strings that end generation
    (bllama.stop_strings: a chat template's end-of-turn marker that is not one token) on it whatever its kind."""
    tok = tokenizer_of_gguf(engine)
    keys = set(engine.metadata_keys())
    if "tokenizer.chat_template" in keys:
        tok.chat_template = engine.metadata("tokenizer.chat_template")
    if "bllama.stop_strings" in keys:
        tok.stop_strings = [str(s) for s in engine.metadata("bllama.stop_strings")]
    return tok


def tokenizer_of_gguf(engine):
    """The tokenizer a model file carries, rebuilt from its metadata (read through the engine's metadata()):
    the exact SentencePiece or tokenizer.json bytes bllama embeds, else llama.cpp's tokenizer.ggml.* arrays."""
    from .sentencepiece import SentencePieceTokenizer

    keys = set(engine.metadata_keys())
    get = lambda k, d=None: engine.metadata(k) if k in keys else d
    add_bos = bool(get("tokenizer.ggml.add_bos_token", True))  # False: a SmolLM-style model never saw one
    # llama.cpp ends every tokenized text with EOS where this is true (its default is false)
    add_eos = bool(get("tokenizer.ggml.add_eos_token", False))
    if "bllama.tokenizer.hf_json" in keys:  # byte-level BPE (LLaMA-3 style tokenizer.json)
        from .bpe import BPETokenizer

        eos = get("bllama.eos_token_ids")
        eos = [int(i) for i in eos] if eos is not None else \
            ([int(get("tokenizer.ggml.eos_token_id"))] if "tokenizer.ggml.eos_token_id" in keys else [])
        return BPETokenizer(bytes(bytearray(engine.metadata("bllama.tokenizer.hf_json"))).decode("utf-8"),
                            bos_id=get("tokenizer.ggml.bos_token_id"), eos_ids=eos,
                            add_bos=add_bos, add_eos=add_eos,
                            chat_template=get("tokenizer.chat_template"))
    if "bllama.tokenizer.sp_model" in keys:
        tok = SentencePieceTokenizer.from_bytes(bytes(bytearray(engine.metadata("bllama.tokenizer.sp_model"))))
        tok.add_bos, tok.add_eos = add_bos, add_eos
        return tok
    if "tokenizer.ggml.tokens" not in keys:
        raise ValueError("the model file carries no tokenizer (no tokenizer.ggml.tokens)")
    model = engine.metadata("tokenizer.ggml.model") if "tokenizer.ggml.model" in keys else "llama"
    tokens = list(engine.metadata("tokenizer.ggml.tokens"))
    if model == "gpt2":  # byte-level BPE as llama.cpp / bitnet.cpp store it (e.g. the official BitNet 2B-4T file)
        from .bpe import LLAMA3_PRE, BPETokenizer, tokenizer_json_from_gguf

        if "tokenizer.ggml.merges" not in keys:
            raise ValueError("the model file's gpt2 tokenizer has no tokenizer.ggml.merges")
        pre = str(get("tokenizer.ggml.pre", "default"))
        text = tokenizer_json_from_gguf(tokens, list(engine.metadata("tokenizer.ggml.merges")),
                                        list(get("tokenizer.ggml.token_type", [1] * len(tokens))), pre)
        eos = [int(get(k)) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                     "tokenizer.ggml.eom_token_id") if k in keys]
        # Without tokenizer.ggml.add_bos_token, llama.cpp puts BOS first for the LLaMA-3 family of pre-tokenizers
        # only: a GPT-2 style vocabulary (whose model never saw one) gets none.
        return BPETokenizer(text, bos_id=get("tokenizer.ggml.bos_token_id"), eos_ids=list(dict.fromkeys(eos)),
                            add_bos=bool(get("tokenizer.ggml.add_bos_token", pre in LLAMA3_PRE)), add_eos=add_eos,
                            chat_template=get("tokenizer.chat_template"))
    if model != "llama":
        raise ValueError(f"unsupported tokenizer.ggml.model {model!r}: SentencePiece 'llama' and byte-level BPE "
                         "'gpt2' are supported")
    tok = SentencePieceTokenizer.from_vocab(
        tokens, list(get("tokenizer.ggml.scores", [0.0] * len(tokens))),
        list(get("tokenizer.ggml.token_type", [1] * len(tokens))),
        bos=get("tokenizer.ggml.bos_token_id", 1), eos=get("tokenizer.ggml.eos_token_id", 2),
        unk=get("tokenizer.ggml.unknown_token_id", 0),
        # llama.cpp's SentencePiece tokenizer puts a space before the text unless the file says not to (converters
        # write false for models trained without SentencePiece's dummy prefix): every id after it depends on it.
        add_dummy_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)))
    tok.add_bos, tok.add_eos = add_bos, add_eos
    return tok

