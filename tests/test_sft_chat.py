"""Chat SFT end to end: `bllama train --sft` teaches a tiny model a chat task that `Runtime.chat` then answers from the
exported GGUF, on prompts it never saw in training."""
from __future__ import annotations

import json
import random

import pytest
import torch

# A template with a generation prompt; the SFT renderer and Runtime.chat both render it (bllama/tokenizers/chat.py).
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def repeat_task(n_held_out: int = 50):
    """("Repeat: 4 0 7 1" -> "4 0 7 1") prompts: the training conversations and held-out digit strings. Every digit
    is seen at every place in training; the held-out strings as a whole never are, so only a model that learned to
    copy (not one that memorized the answers) gets them right."""
    rng = random.Random(0)
    seqs = list(dict.fromkeys(" ".join(rng.choice("0123456789") for _ in range(4)) for _ in range(2000)))
    return seqs[:-n_held_out], seqs[-n_held_out:]


def conversation(digits: str) -> dict:
    return {"messages": [{"role": "user", "content": "Repeat: " + digits},
                         {"role": "assistant", "content": digits}]}


@pytest.mark.slow
def test_sft_model_answers_held_out_chat_prompts_through_the_engine(tmp_path):
    """A random ~1M-parameter b1.58 model (GGUF with the template, so `--init-from` takes its weights, tokenizer and
    template as it would a public model's) fine-tuned for 300 steps (~20 s on 2 idle cores) copies >= 90% of
    held-out digit strings through Runtime.chat on the exported GGUF (greedy)."""
    from bllama.cli import main
    from bllama.convert.gguf_export import export_gguf
    from bllama.model.config import bLlamaConfig
    from bllama.runtime import Runtime
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from bllama.train.module import bLlama

    train, held_out = repeat_task()
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(conversation(s)) + "\n" for s in train), encoding="utf-8")
    text = "".join(f"user: Repeat: {s}\nassistant: {s}\n" for s in train[:300])
    tok = SentencePieceTokenizer(train_sentencepiece(None, tmp_path / "tok", vocab_size=300, texts=[text]))
    torch.manual_seed(0)
    config = bLlamaConfig(vocab_size=tok.vocab_size, seq_len=64, hidden_size=256, num_heads=4, num_layers=2,
                          ffn_size=256)
    init = export_gguf(bLlama(config), tok, tmp_path / "init.gguf", chat_template=TEMPLATE)

    steps = "300"
    main(["train", str(chats), "--sft", "--init-from", str(init), "--out", str(tmp_path / "run"),
          "--batch-size", "32", "--max-steps", steps, "--set", f"max_steps={steps}", "--set", "lr=3e-3",
          "--set", "warmup_steps=20", "--set", "weight_decay=0.0", "--train-split", "1.0", "--seed", "0",
          "--accelerator", "cpu", "--precision", "32-true", "--num-workers", "0", "--no-compile"])
    main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "sft.gguf")])

    rt = Runtime.load(tmp_path / "sft.gguf", threads=2)
    assert rt.tokenizer.chat_template == TEMPLATE
    answers = {s: rt.chat([{"role": "user", "content": "Repeat: " + s}], max_new_tokens=16).strip()
               for s in held_out}
    wrong = {s: a for s, a in answers.items() if a != s}
    assert len(wrong) <= 0.1 * len(held_out), wrong


GOOD = conversation("1 2 3 4")
USER, ASSISTANT = GOOD["messages"]
BAD_LINES = [  # each once ended in a TypeError or AttributeError traceback, or in a message naming no line
    ({"messages": [{"role": "user", "content": 5}, ASSISTANT]}, "message 0 must be a dict with string 'role'"),
    ({"messages": [USER, {"role": "assistant", "content": None}]}, "message 1 must be a dict with string 'role'"),
    ({"messages": [{"content": "hi"}, ASSISTANT]}, "message 0 must be a dict with string 'role'"),
    ({"messages": ["hello", ASSISTANT]}, "message 0 must be an object with 'role' and 'content'"),
    ({"messages": "hello"}, "'messages' must be a non-empty list"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, ASSISTANT]},
     "message 0: only text content parts are supported"),
    ({"messages": [USER]}, "the conversation has no assistant message to train on"),
    ({"messages": [{"role": "user", "content": "9 " * 200}, ASSISTANT]},
     "more than seq_len 64 + 1; split it into shorter conversations or raise seq_len (--set seq_len=N)"),
]


def chats_file(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("row, message", BAD_LINES)
def test_a_bad_conversation_is_refused_naming_its_file_and_line(tmp_path, sp_tokenizer, row, message):
    from bllama.train.sft import ChatSFTDataset

    path = chats_file(tmp_path / "chats.jsonl", GOOD, row)
    with pytest.raises(ValueError) as e:
        ChatSFTDataset([str(path)], sp_tokenizer, TEMPLATE, 64)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_chats_written_by_other_tools_are_read_line_by_line(tmp_path, sp_tokenizer):
    """json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 raw inside strings; str.splitlines cut the line there
    ("invalid JSON"). A BOM failed line 1; a Latin-1 byte raised the codec's error naming no file."""
    from bllama.train.sft import ChatSFTDataset

    odd = {"messages": [{"role": "user", "content": "Repeat: 1\u2028 2\x85 3\r"}, ASSISTANT]}
    path = tmp_path / "chats.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\r\n"
                                             for r in (GOOD, odd)).encode("utf-8"))
    ds = ChatSFTDataset([str(path)], sp_tokenizer, TEMPLATE, 64)
    assert len(ds.rows) == 2 and ds.rows[0] != ds.rows[1]
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + json.dumps(GOOD).encode().replace(b"Repeat", b"R\xe9p"))
    with pytest.raises(ValueError, match=r"chats.jsonl is not UTF-8 text"):
        ChatSFTDataset([str(path)], sp_tokenizer, TEMPLATE, 64)


def test_text_parts_content_trains_as_its_joined_text(tmp_path, sp_tokenizer):
    """The list of text parts OpenAI clients send (and `bllama serve` accepts) is the string of its parts."""
    from bllama.train.sft import ChatSFTDataset

    parts = {"role": "user", "content": [{"type": "text", "text": "Repeat: "}, {"type": "text", "text": "1 2 3 4"}]}
    path = chats_file(tmp_path / "chats.jsonl", GOOD, {"messages": [parts, ASSISTANT]})
    ds = ChatSFTDataset([str(path)], sp_tokenizer, TEMPLATE, 64)
    assert ds.rows[0] == ds.rows[1]



@pytest.mark.parametrize("row, message", [BAD_LINES[0], BAD_LINES[3]])
def test_cli_prints_a_bad_conversation_as_one_error_line(tmp_path, sp_tokenizer, capsys, row, message):
    from bllama.cli import main
    from bllama.convert.gguf_export import export_gguf
    from bllama.model.config import bLlamaConfig
    from bllama.train.module import bLlama

    config = bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=64, hidden_size=256, num_heads=4,
                          num_layers=1, ffn_size=256)
    init = export_gguf(bLlama(config), sp_tokenizer, tmp_path / "init.gguf", chat_template=TEMPLATE)
    path = chats_file(tmp_path / "chats.jsonl", GOOD, row)
    with pytest.raises(SystemExit) as e:
        main(["train", str(path), "--sft", "--init-from", str(init), "--out", str(tmp_path / "run"),
              "--max-steps", "1", "--accelerator", "cpu", "--num-workers", "0", "--no-compile"])
    assert e.value.code == 2
    assert f"bllama train: error: {path}:2: {message}" in capsys.readouterr().err
