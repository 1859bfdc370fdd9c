"""The tokenizer and chat template of a training run folder, whatever the tokenizer is.

`bllama train` writes a SentencePiece tokenizer as tokenizer.model; a run started from a Hugging Face checkpoint
with a tokenizer.json writes that JSON plus tokenizer_specials.json (bos / eos ids, add_bos), and any chat template
as chat_template.jinja, so `bllama export` carries them into the model file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_tokenizer_files(out_dir: Path, tokenizer, chat_template: Optional[str] = None) -> None:
    from ..tokenizers.bpe import BPETokenizer

    out_dir = Path(out_dir)
    if isinstance(tokenizer, BPETokenizer):
        atomic_write_text(out_dir / "tokenizer.json", tokenizer.json_text)
        atomic_write_text(out_dir / "tokenizer_specials.json", json.dumps(
            {"bos_id": tokenizer.bos_id, "eos_ids": tokenizer.eos_ids, "add_bos": tokenizer.add_bos,
             "add_eos": tokenizer.add_eos}))
    elif hasattr(tokenizer, "save"):
        tokenizer.save(out_dir / "tokenizer.model")
        # tokenizer.model cannot say these (a HF folder's add_bos_token / add_eos_token)
        if not getattr(tokenizer, "add_bos", True) or getattr(tokenizer, "add_eos", False):
            atomic_write_text(out_dir / "tokenizer_specials.json", json.dumps(
                {"add_bos": getattr(tokenizer, "add_bos", True), "add_eos": getattr(tokenizer, "add_eos", False)}))
    if chat_template:
        atomic_write_text(out_dir / "chat_template.jinja", chat_template)


def load_run_tokenizer(checkpoint_path):
    """(tokenizer, chat template or None) found beside a checkpoint: in its folder or up to three above."""
    from ..tokenizers.bpe import BPETokenizer
    from ..tokenizers.sentencepiece import SentencePieceTokenizer

    p = Path(checkpoint_path)
    for d in [p] + list(p.parents)[:3]:
        template = (d / "chat_template.jinja").read_text(encoding="utf-8") if (d / "chat_template.jinja").exists() \
            else None
        sp = json.loads((d / "tokenizer_specials.json").read_text()) if (d / "tokenizer_specials.json").exists() \
            else {}
        if (d / "tokenizer.model").exists():
            tok = SentencePieceTokenizer(d / "tokenizer.model")
            tok.add_bos, tok.add_eos = sp.get("add_bos", True), sp.get("add_eos", False)
            return tok, template
        if (d / "tokenizer.json").exists():
            tok = BPETokenizer.from_file(d / "tokenizer.json", bos_id=sp.get("bos_id"), eos_ids=sp.get("eos_ids", ()),
                                         add_bos=sp.get("add_bos", True), add_eos=sp.get("add_eos", False),
                                         chat_template=template)
            return tok, template
    raise FileNotFoundError(f"no tokenizer.model or tokenizer.json next to {checkpoint_path}; pass --tokenizer")
