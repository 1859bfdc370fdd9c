"""Chat prompts from a model file's template (bllama/tokenizers/chat.py, Runtime.chat, `bllama generate --chat`)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bllama.tokenizers.chat import ChatTemplateError, render_chat
from bllama.runtime import Runtime

from test_i2s import _weights, llama3_style_tokenizer, write_file

# LLaMA-3's layout (BOS written by the template, a header per turn, <|eot_id|> after each), spelled out here.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hello there \n"}]


def test_render_like_transformers():
    text = render_chat(TEMPLATE, MESSAGES, bos_token="<|begin_of_text|>")
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert not render_chat(TEMPLATE, MESSAGES, add_generation_prompt=False).endswith("\n\n")
    # trim_blocks + lstrip_blocks, as transformers renders: block tags leave no newline or indentation behind.
    assert render_chat("{% for m in messages %}\n  {% if true %}\n{{ m['content'] }}\n  {% endif %}\n{% endfor %}",
                       [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\nb\n"


def test_bad_templates_and_messages_say_why():
    with pytest.raises(ChatTemplateError, match="refused these messages: only user turns"):
        render_chat("{{ raise_exception('only user turns') }}", MESSAGES)
    with pytest.raises(ChatTemplateError, match="failed"):  # the sandbox: no attribute walks to Python internals
        render_chat("{{ ''.__class__.__mro__ }}", MESSAGES)
    with pytest.raises(ChatTemplateError, match="failed"):
        render_chat("{% for m in messages %}", MESSAGES)
    with pytest.raises(TypeError, match="list of"):
        render_chat(TEMPLATE, "hello")
    with pytest.raises(ValueError, match="empty"):
        render_chat(TEMPLATE, [])
    with pytest.raises(TypeError, match="message 1"):
        render_chat(TEMPLATE, [{"role": "user", "content": "x"}, {"role": "user"}])
    with pytest.raises(ValueError, match="message 0's content holds a lone UTF-16 surrogate at index 1"):
        render_chat(TEMPLATE, [{"role": "user", "content": "x\udc00"}])  # no tokenizer can encode it


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    tok = llama3_style_tokenizer()
    return write_file(d / "chat.gguf", _weights(), "i2_s", "bitnet-b1.58", tok, bllama_keys=False,
                      chat_template=TEMPLATE), write_file(d / "plain.gguf", _weights(), "tq2_0", "bitnet", tok, True)


def test_runtime_chat_renders_encodes_and_generates(chat_file):
    path, plain = chat_file
    rt = Runtime.load(path, threads=2)
    msgs = [{"role": "user", "content": "Hi"}]  # the test vocabulary spells the headers out: keep within 128 tokens
    ids = rt.chat_prompt_ids(msgs)
    body = render_chat(TEMPLATE, msgs)  # without BOS: the template's BOS becomes the id, once
    assert ids[0] == rt.tokenizer.bos_id and ids.count(rt.tokenizer.bos_id) == 1
    assert ids[1:] == rt.tokenizer.encode(body, add_bos=False)
    assert ids.count(2) == 1  # <|eot_id|> is its special token, not its spelling
    # The reply is what the same prompt gives as plain text (the tokenizer adds the BOS there).
    reply = rt.chat(msgs, max_new_tokens=8)
    assert reply == rt.generate(body, max_new_tokens=8)
    assert "".join(rt.chat(msgs, max_new_tokens=8, stream=True)) == reply
    with pytest.raises(ValueError, match="no chat template"):
        Runtime.load(plain, threads=1).chat(msgs)


def test_default_lengths_fit_the_context(chat_file):
    """max_new_tokens left out asks for up to 256 (chat) or 128 (generate) new tokens, as many as the context still
    holds: the shipped model's context is 256 tokens, and its chat failed on the default 256 with any prompt."""
    path, _ = chat_file
    msgs = [{"role": "user", "content": "Hi"}]
    n = len(Runtime.load(path, threads=1).chat_prompt_ids(msgs))
    rt = Runtime.load(path, threads=1, context_length=n + 3)
    rt.chat(msgs)
    assert 1 <= rt.stats["decode_tokens"] <= 3
    rt.generate("Hi", do_sample=True, seed=1)
    assert rt.stats["prompt_tokens"] + rt.stats["decode_tokens"] <= rt.context_length
    with pytest.raises(IndexError, match="leaves no room for new tokens in the context length"):
        rt.generate("Hi " * rt.context_length)
    with pytest.raises(IndexError, match=r"max_new_tokens \(256\) exceeds the context"):
        rt.chat(msgs, max_new_tokens=256)  # an explicit length is never cut


def test_cli_generate_chat(chat_file):
    path, plain = chat_file
    run = lambda *a: subprocess.run([sys.executable, "-m", "bllama.cli", "generate", *map(str, a)],
                                    capture_output=True, text=True, timeout=300)
    r = run(path, "Hi", "--chat", "--max-new-tokens", 4, "--threads", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "new tokens" in r.stderr
    r = run(plain, "Hello", "--chat", "--max-new-tokens", 2)
    assert r.returncode != 0 and "no chat template" in r.stderr
