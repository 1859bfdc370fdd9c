"""Chat prompts from a model file's own template (GGUF `tokenizer.chat_template`, a Jinja2 template as Hugging Face
tokenizers store it). Rendered the way transformers' `apply_chat_template` renders it: a sandboxed environment,
`trim_blocks` and `lstrip_blocks`, `raise_exception` for the template's own checks, and `bos_token` / `eos_token`
as strings, so a template that writes the BOS token itself gets it once.
"""
from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["render_chat"]


class ChatTemplateError(ValueError):
    """The template could not be rendered for these messages (its own raise_exception, a syntax or sandbox error)."""


def _check_messages(messages) -> list:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError("messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"message {i} must be a dict with string 'role' and 'content', got {m!r}")
        out.append(dict(m))
    return out


def render_chat(template: str, messages, add_generation_prompt: bool = True, bos_token: str = "",
                eos_token: str = "") -> str:
    """The prompt text for `messages` (a list of {"role", "content"} dicts) under `template`."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    msgs = _check_messages(messages)

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused these messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)
    except TemplateError as e:  # syntax errors, undefined names, sandbox violations
        raise ChatTemplateError(f"the chat template failed: {e}") from e


def encode_rendered(tokenizer, text: str) -> list:
    """Token ids of text render_chat wrote: the template writes BOS itself where the model wants one, so a leading
    BOS string becomes the id (never tokenized as text, never added twice). Runtime.chat and SFT both encode so."""
    bos = tokenizer.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    if bos and text.startswith(bos):
        return [tokenizer.bos_id] + tokenizer.encode(text[len(bos):], add_bos=False)
    return tokenizer.encode(text, add_bos=False)
