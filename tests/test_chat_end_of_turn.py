"""A SentencePiece model exported with a chat template stops at the template's end-of-turn marker (ChatML
`<|im_end|>`): as a token id where the vocabulary has the marker as one piece, else as a stop string."""
from __future__ import annotations

import pytest
import torch

from bllama.convert.gguf_export import end_of_turn_stops, export_gguf
from bllama.model.config import bLlamaConfig
from bllama.runtime import Runtime
from bllama.sampling import SamplingParams
from bllama.tokenizers.chat_templates import builtin_chat_templates, end_of_turn_marker, resolve_chat_template
from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
from bllama.train.module import bLlama

CHATML = resolve_chat_template("chatml")


def test_the_marker_is_what_the_template_writes_after_a_reply():
    assert end_of_turn_marker(CHATML) == "<|im_end|>"
    assert end_of_turn_marker(builtin_chat_templates()["llama3"]) == "<|eot_id|>"
    eos_after = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    assert end_of_turn_marker(eos_after, "<s>", "</s>") == "</s>"
    assert end_of_turn_marker("{% for m in messages %}{{ m['content'] }}{% endfor %}") is None


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, sp_corpus_text):
    """Two SentencePiece tokenizers: one with the ChatML markers as pieces, one without."""
    d = tmp_path_factory.mktemp("eot")
    corpus = d / "corpus.txt"
    corpus.write_text(sp_corpus_text[:100_000], encoding="utf-8")
    with_markers = train_sentencepiece([corpus], d / "marked", vocab_size=400,
                                       user_defined_symbols=["<|im_start|>", "<|im_end|>"])
    plain = train_sentencepiece([corpus], d / "plain", vocab_size=400)
    return SentencePieceTokenizer(with_markers), SentencePieceTokenizer(plain), d


def _export(tok, path):
    torch.manual_seed(0)
    cfg = bLlamaConfig.preset("tiny", vocab_size=tok.vocab_size, num_layers=1, ffn_size=256, seq_len=64)
    model = bLlama(cfg)
    model.quantize_weights_to_ternary(verbose=False)
    return export_gguf(model, tok, path, chat_template=CHATML)


def test_a_one_piece_marker_becomes_an_end_of_generation_id(tokenizers):
    marked, _, d = tokenizers
    im_end = marked.piece_to_id("<|im_end|>")
    assert end_of_turn_stops(marked, CHATML) == ([marked.eos_id, im_end], [])
    rt = Runtime.load(_export(marked, d / "marked.gguf"), threads=1)
    assert rt.eos_ids == [marked.eos_id, im_end]  # the engine stops at either
    assert not getattr(rt.tokenizer, "stop_strings", [])
    assert im_end in rt._engine_kwargs(SamplingParams(), stop_at_eos=True)["stop_ids"]  # what chat() hands the engine


def test_a_marker_in_several_pieces_becomes_a_stop_string(tokenizers):
    _, plain, d = tokenizers
    assert len(plain.encode_plain("<|im_end|>")) > 1
    assert end_of_turn_stops(plain, CHATML) == ([plain.eos_id], ["<|im_end|>"])
    rt = Runtime.load(_export(plain, d / "plain.gguf"), threads=1)
    assert rt.eos_ids == [plain.eos_id] and rt.tokenizer.stop_strings == ["<|im_end|>"]
    prompt = rt.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    reply = plain.encode_plain("Hello there.<|im_end|>\n<|im_start|>user\nmore")
    # generated text ends before the marker, in every text path (stream, text_of, the server's text streams)
    assert rt.text_of(prompt, reply).strip() == "Hello there."  # (the SentencePiece prefix space)
    stream = rt.text_stream(prompt)
    for t in reply:
        stream.push(t)
        if stream.stopped:
            break
    stream.flush()
    assert stream.stopped and stream.emitted.strip() == "Hello there."


def test_a_model_without_a_template_has_no_extra_stops(tokenizers):
    _, plain, d = tokenizers
    torch.manual_seed(0)
    cfg = bLlamaConfig.preset("tiny", vocab_size=plain.vocab_size, num_layers=1, ffn_size=256, seq_len=64)
    model = bLlama(cfg)
    model.quantize_weights_to_ternary(verbose=False)
    rt = Runtime.load(export_gguf(model, plain, d / "none.gguf"), threads=1)
    assert rt.eos_ids == [plain.eos_id] and not getattr(rt.tokenizer, "stop_strings", [])
    assert rt.text_of(rt.encode("a"), plain.encode_plain("x<|im_end|>y")).strip() == "x<|im_end|>y"
