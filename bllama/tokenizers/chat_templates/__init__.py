"""Chat templates that ship with bllama, for `bllama export --chat-template NAME`: Jinja text in the Hugging Face
convention (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`), one NAME.jinja file each. The format is
the public convention of each family; the files are ours."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from ..chat import render_chat

_HERE = Path(__file__).resolve().parent

# What a template must render before it is written into a model file: every role a chat client sends.
_PROBE = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello?"},
          {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Name a colour."}]


def builtin_chat_templates() -> Dict[str, str]:
    """{name: template text} of the templates in this folder."""
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(_HERE.glob("*.jinja"))}


def resolve_chat_template(name_or_file: str) -> str:
    """The template text of a built-in NAME or of a file; ValueError naming the built-ins when it is neither."""
    builtins = builtin_chat_templates()
    key = name_or_file.lower().replace("-", "").replace("_", "")  # LLaMA-3, llama_3 and llama3 are one name
    if key in builtins:
        return builtins[key]
    path = Path(name_or_file)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(f"--chat-template {name_or_file!r} is neither a built-in template "
                     f"({', '.join(builtins)}) nor a file")


def check_chat_template(template: str, bos_token: str = "", eos_token: str = "",
                        source: Optional[str] = None) -> str:
    """Renders `template` on a system / user / assistant / user conversation as the runtime will; returns the prompt
    text, or raises ValueError saying why the template is unusable (so no model file is written with it)."""
    what = source or "the chat template"
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{what} is empty")
    try:
        text = render_chat(template, _PROBE, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
    except (TypeError, ValueError) as e:  # ChatTemplateError is a ValueError
        raise ValueError(f"{what} does not render a conversation: {e}") from None
    missing = [m["content"] for m in _PROBE if m["content"] not in text]
    if missing:
        raise ValueError(f"{what} renders a conversation without its messages (missing {missing[0]!r})")
    return text


def check_template_for(tokenizer, template: str) -> str:
    """check_chat_template with `tokenizer`'s BOS and EOS pieces as the template's bos_token / eos_token."""
    bos, eos = (tokenizer.id_to_piece(i) if i is not None else "" for i in (tokenizer.bos_id, tokenizer.eos_id))
    return check_chat_template(template, bos, eos)


_REPLY = "\ue000reply\ue001"  # a reply no template touches, so what the template writes after it is its own markup


def end_of_turn_marker(template: str, bos_token: str = "", eos_token: str = "") -> Optional[str]:
    """What `template` writes right after an assistant's reply (ChatML `<|im_end|>`, LLaMA-3 `<|eot_id|>`, often the
    EOS token): the text a model trained on the template emits when its turn is over, so generation must stop there.
    None when the template writes nothing after a reply."""
    text = render_chat(template, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY}],
                       add_generation_prompt=False, bos_token=bos_token, eos_token=eos_token)
    if _REPLY not in text:
        return None
    after = text.split(_REPLY, 1)[1].strip()
    return after.split()[0] if after else None
