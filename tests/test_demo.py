"""`bllama demo` and the model it starts with (bllama/assets): the shipped model is small, carries its chat template
and speaks better than a freshly trained one; the demo keeps prompt and continuation apart, trains by steps, says
how far it got and leaves one checkpoint."""
from __future__ import annotations

import re

import pytest

from bllama.assets import SHAKESPEARE_MODEL, shakespeare_model
from bllama.runtime import Runtime
from bllama.tools import demo


def held_out_text() -> str:
    text, what = demo.demo_corpus()
    assert "Shakespeare" in what  # the tests run from a clone: bench/data is there
    return demo.split_lines(text)[1]


def test_the_split_is_the_model_cards():
    """The demo scores on the text the shipped model never trained on: the lines after the last line break
    before 90% of the characters (bllama/assets/MODEL_CARD.md: `head -n 35525` / `tail -n +35526`)."""
    text, _ = demo.demo_corpus()
    train, held_out = demo.split_lines(text)
    assert train + held_out == text and train.endswith("\n")
    assert train.count("\n") == 35525 and len(train) <= 0.9 * len(text) < len(train) + 200


def test_the_demo_quotes_the_cards_training_length():
    """What the demo says of the shipped model's training is the recipe in its card (they must change together)."""
    from pathlib import Path

    card = (Path(demo.__file__).parents[1] / "assets" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert re.findall(r"--max-steps (\d+)", card) == [str(demo.SHIPPED_STEPS)]


def test_the_shipped_model_is_small_chats_and_writes_shakespeare():
    path = shakespeare_model()
    assert path == SHAKESPEARE_MODEL and path.stat().st_size < 4 * 2**20
    rt = Runtime.load(path, threads=1)
    assert rt.tokenizer.chat_template and "<|im_start|>" in rt.tokenizer.chat_template
    reply = rt.chat([{"role": "user", "content": "Good morrow"}], max_new_tokens=16, do_sample=True, seed=0)
    assert reply.strip()
    bpc = rt.evaluate(held_out_text()[:demo.HELD_OUT_CHARS])["bits_per_char"]
    assert bpc < 2.8, f"the shipped model scores {bpc:.2f} bits/char on held-out text"  # MODEL_CARD.md has the value
    text = rt.generate("ROMEO:", max_new_tokens=60, do_sample=True, temperature=0.8, top_k=40, seed=0)
    words = re.findall(r"[A-Za-z']+", text)
    common = {"the", "and", "i", "to", "of", "a", "my", "you", "that", "in", "is", "not", "with", "me", "it", "be",
              "your", "his", "for", "this", "thou", "have", "thy", "he", "so", "but", "will", "what", "her", "as"}
    assert len(words) >= 10 and sum(w.lower() in common for w in words) >= 3, text


def test_quality_bands_cover_every_score():
    assert demo.quality_of(9.0).startswith("letters")
    assert demo.quality_of(1.0).startswith("Shakespeare")
    floors = [f for f, _ in demo.QUALITY_BANDS]
    assert floors == sorted(floors, reverse=True) and floors[-1] == 0.0


@pytest.mark.slow
def test_demo_trains_by_steps_and_leaves_one_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "HELD_OUT_CHARS", 2000)
    demo.run_demo(tmp_path, steps=2, max_new_tokens=8)
    out = capsys.readouterr().out
    for i in range(1, 6):
        assert f"[{i}/5]" in out
    assert "trained 2 of 2 steps" in out and "expect" in out
    # prompt and continuation apart, for both models
    assert out.count("prompt:       'ROMEO:'") == 2 and out.count("continuation:") == 2
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == ["last.ckpt"]
    assert (tmp_path / "model.gguf").is_file()
    assert "<|im_start|>" in Runtime.load(tmp_path / "model.gguf", threads=1).tokenizer.chat_template
    with pytest.raises(ValueError, match="steps"):
        demo.run_demo(tmp_path, steps=0)
