"""Chat prompts from a model file's own template (GGUF `tokenizer.chat_template`, a Jinja2 template as Hugging Face
tokenizers store it). Rendered the way transformers' `apply_chat_template` renders it: a sandboxed environment,
`trim_blocks` and `lstrip_blocks`, `raise_exception` for the template's own checks, and `bos_token` / `eos_token`
as strings, so a template that writes the BOS token itself gets it once.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Sequence

from .text import check_text

__all__ = ["render_chat", "encode_chat", "check_messages"]


class ChatTemplateError(ValueError):
    """The template could not be rendered for these messages (its own raise_exception, a syntax or sandbox error)."""


def check_messages(messages) -> list:
    """Copies of the messages, or TypeError/ValueError before a template sees a role or content that is not text."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError("messages is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"message {i} must be a dict with string 'role' and 'content', got {m!r}")
        for field in ("role", "content"):
            check_text(m[field], f"message {i}'s {field}")
        out.append(dict(m))
    return out


def render_chat(template: str, messages, add_generation_prompt: bool = True, bos_token: str = "",
                eos_token: str = "") -> str:
    """The prompt text for `messages` (a list of {"role", "content"} dicts) under `template`."""
    return _render(template, check_messages(messages), add_generation_prompt, bos_token, eos_token)


# Message contents are rendered with every control token's spelling (and the mark itself) replaced by the mark and
# one private-use character naming it, so that after rendering the only spellings left are the template's own
# markup. Filters such as trim or upper leave the private-use pair as it is.
_MARK = "\U0010FFFD"
_CODE0 = 0xF0000


def encode_chat(tokenizer, template: str, messages, add_generation_prompt: bool = True) -> List[int]:
    """The token ids of `messages` under `template`, control tokens only where the template's markup writes them:
    a message whose content spells <|eot_id|> or </s> gets those characters as text, not the control token, so
    users cannot close their turn and forge another. The tokenizer needs special_pieces() ({spelling: id} of its
    control tokens) and encode_plain(text) (text with no control tokens and no BOS)."""
    msgs = check_messages(messages)
    specials: Dict[str, int] = {p: i for p, i in tokenizer.special_pieces().items() if p}
    # Markers the template writes that are not control tokens (added tokens not marked special, SentencePiece's
    # user-defined pieces) are found in plain text too: a message spelling one would forge a turn.
    matched = getattr(tokenizer, "matched_pieces", dict)()
    markers = {p: i for p, i in matched.items() if p and p in template and p not in specials}
    bos = tokenizer.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.id_to_piece(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    table = [_MARK] + sorted({**specials, **markers}, key=len, reverse=True)
    if len(table) > 0xFFFD - (_CODE0 & 0xFFFF):
        raise ValueError(f"the tokenizer has {len(table)} control tokens, too many to escape")
    escape = re.compile("|".join(re.escape(t) for t in table))
    codes = {t: _MARK + chr(_CODE0 + k) for k, t in enumerate(table)}
    for m in msgs:
        m["content"] = escape.sub(lambda hit: codes[hit.group(0)], m["content"])
    text = _render(template, msgs, add_generation_prompt, bos, eos)
    unescape = re.compile(re.escape(_MARK) + "([\U000F0000-\U000FFFFD])")

    def plain(t: str) -> List[int]:
        """A piece of rendered text as plain text, escaped spellings restored; a marker's spelling is encoded as
        its first character and the rest apart, since whole it would be found as the marker."""
        ids: List[int] = []
        pos, pending = 0, ""
        for hit in unescape.finditer(t):
            spelling = table[ord(hit.group(1)) - _CODE0]
            pending += t[pos:hit.start()]
            pos = hit.end()
            if spelling in markers:
                ids += tokenizer.encode_plain(pending + spelling[0])  # markers are never empty (`if p` above)
                pending = spelling[1:]
            else:
                pending += spelling
        pending += t[pos:]
        return ids + (tokenizer.encode_plain(pending) if pending else [])

    # the template's own markers stay in the text, found by the tokenizer as always (and as encode_rendered does)
    return _encode_split(tokenizer, text, specials, plain)


def _encode_split(tokenizer, text: str, specials: Dict[str, int], plain) -> List[int]:
    """`text` cut at every control-token spelling in `specials` (longest first): those become their ids, the
    pieces between go through plain()."""
    ids: List[int] = []
    pos = 0
    if specials:
        for hit in re.finditer("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)), text):
            if hit.start() > pos:
                ids += plain(text[pos:hit.start()])
            ids.append(specials[hit.group(0)])
            pos = hit.end()
    if pos < len(text):
        ids += plain(text[pos:])
    return ids


def _render(template: str, msgs: list, add_generation_prompt: bool, bos_token: str, eos_token: str) -> str:
    from jinja2 import TemplateError

    from .chat_sandbox import BoundedSandbox, TemplateLimitError

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused these messages: {message}")

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.render_bounded(template, messages=msgs, add_generation_prompt=add_generation_prompt,
                                  bos_token=bos_token, eos_token=eos_token)
    except ChatTemplateError:
        raise
    except TemplateLimitError as e:
        raise ChatTemplateError(str(e)) from None
    except TemplateError as e:  # syntax errors, undefined names, sandbox violations
        raise ChatTemplateError(f"the chat template failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - anything else a model file's template raises (range(10**9): Overflow)
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None


def encode_rendered(tokenizer, text: str) -> list:
    """Token ids of text a template rendered, with control tokens wherever their spelling appears (markup and BOS
    included) and everything else as plain text: the split encode_chat makes, without its escaping of message
    contents. SFT encodes its training conversations so, so they tokenize as Runtime.chat's prompts do."""
    specials = {p: i for p, i in tokenizer.special_pieces().items() if p}
    return _encode_split(tokenizer, text, specials, tokenizer.encode_plain)
