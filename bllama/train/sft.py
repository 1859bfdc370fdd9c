"""Chat SFT data (`bllama train chats.jsonl --sft --init-from ...`).

Every line is an OpenAI-style `{"messages": [{"role": ..., "content": ...}, ...]}`, content a string or a list of
text parts as `bllama serve` reads it. A conversation is rendered with the model's own chat template exactly as
Runtime.chat renders a prompt (bllama/tokenizers/chat.py, BOS only where the template writes it), one turn at a
time: the text up to each assistant turn (with the generation prompt) is context, the assistant's text and an EOS id
after it (unless the template wrote one) are trained on; every other label is -100, which the loss ignores. Each
conversation is one row, right-padded, so causal attention never reaches another conversation or the padding.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..serve.protocol import chat_messages
from ..tokenizers.chat import check_messages, encode_rendered  # the encoding Runtime.chat_prompt_ids uses
from ..tokenizers.text import read_text_file

IGNORE = -100


def _eos_ids(tok) -> List[int]:
    ids = list(getattr(tok, "eos_ids", None) or [])
    return ids or ([tok.eos_id] if tok.eos_id is not None else [])


def chat_tokens(messages: Sequence[dict], tok, template: str) -> Tuple[List[int], List[bool]]:
    """(ids, trained) of one conversation: trained[j] says whether ids[j] is an assistant token the model learns."""
    from ..tokenizers.chat import render_chat

    bos = tok.id_to_piece(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.id_to_piece(tok.eos_id) if tok.eos_id is not None else ""
    render = lambda msgs, gen: render_chat(template, msgs, gen, bos, eos)
    ids: List[int] = []
    trained: List[bool] = []
    done = ""  # text rendered so far
    eos_ids = _eos_ids(tok)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt = render(messages[:i], True)
        full = render(messages[:i + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render a conversation as a prefix of its continuation "
                             "(the text before an assistant turn changes when the turn is added); SFT needs one "
                             "that does")
        context = encode_rendered(tok, prompt[len(done):])
        reply = encode_rendered(tok, full[len(prompt):])
        if eos_ids and (not reply or reply[-1] not in eos_ids):
            reply.append(eos_ids[0])
        ids += context + reply
        trained += [False] * len(context) + [True] * len(reply)
        done = full
    if not any(trained):
        raise ValueError("the conversation has no assistant message to train on")
    return ids, trained


def read_conversations(paths: Sequence[str]) -> List[Tuple[str, list]]:
    """("file:line", messages) of every conversation; ValueError naming the line of one that is not a chat."""
    out = []
    for p in paths:
        # split at "\n" only: str.splitlines also cut at U+2028, U+0085, ... which json.dumps(ensure_ascii=False)
        # leaves raw inside strings, so a valid line failed as invalid JSON; a BOM is not part of line 1
        for n, line in enumerate(read_text_file(p).removeprefix("\ufeff").split("\n"), 1):
            if not line.strip():
                continue
            try:
                msgs = json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{p}:{n}: expected a JSON object with a 'messages' list ({e})") from e
            try:  # read as the server reads a chat request (text parts joined), so whatever it accepts trains
                out.append((f"{p}:{n}", check_messages(chat_messages(msgs))))
            except (TypeError, ValueError) as e:  # check_messages' TypeError is this line's bad type, not a bug
                raise ValueError(f"{p}:{n}: {e}") from None
    if not out:
        raise ValueError(f"no conversations in {list(paths)}")
    return out


class ChatSFTDataset(Dataset):
    """(x, y) rows of one conversation each, padded to the longest conversation (at most seq_len tokens + 1);
    y is x shifted by one with every non-assistant label set to -100. Longer conversations are refused."""

    def __init__(self, paths: Sequence[str], tokenizer, template: str, seq_len: int):
        if not template:
            raise ValueError("--sft needs a chat template: the checkpoint (--init-from) has none")
        self.rows = []
        for where, msgs in read_conversations(paths):
            try:
                ids, trained = chat_tokens(msgs, tokenizer, template)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if len(ids) - 1 > seq_len:  # cut, the model would learn replies that stop mid-sentence
                raise ValueError(f"{where}: the conversation has {len(ids)} tokens, more than seq_len {seq_len} + 1; "
                                 f"split it into shorter conversations or raise seq_len (--set seq_len=N)")
            self.rows.append((ids, trained))
        self.length = max(len(ids) for ids, _ in self.rows) - 1
        pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.pad = pad

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        ids, trained = self.rows[i]
        n = len(ids) - 1
        x = torch.full((self.length,), self.pad, dtype=torch.long)
        y = torch.full((self.length,), IGNORE, dtype=torch.long)
        x[:n] = torch.tensor(ids[:-1])
        y[:n] = torch.tensor([t if keep else IGNORE for t, keep in zip(ids[1:], trained[1:])])
        return x, y
