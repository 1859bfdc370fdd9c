"""The `bllama` command line, end to end: tokenizer -> train -> export -> generate / eval / bench."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bllama.cli import build_parser


def bllama(*args, timeout=600, stdout_only=False):
    r = subprocess.run([sys.executable, "-m", "bllama.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout if stdout_only else r.stdout + r.stderr


def test_every_option_has_help():
    parser = build_parser()
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.dest != "help" and action.__class__.__name__ != "_SubParsersAction":
                assert action.help, f"bllama {name} {action.option_strings or action.dest} has no help text"



def test_every_option_with_a_default_names_it():
    """`bllama train --help` said nothing of --out runs/bllama, --seed 42 or --train-split 0.9, nor generate's
    temperature: a user had to read cli.py. An option whose default is a value says it in its help (None: not given,
    and a flag that is off, need not)."""
    import argparse

    def options(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from options(sub, f"{name} {sub_name}".strip())
            elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                                                     argparse._StoreTrueAction)):
                yield name, action

    checked = 0
    for name, action in options(build_parser(), ""):
        if action.default is None or action.default == []:
            continue
        checked += 1
        assert "default" in action.help, f"bllama {name} {action.option_strings[0]}: the help does not name its " \
                                         f"default {action.default!r}: {action.help!r}"
    assert checked > 30  # the walk found the subcommands' options


@pytest.mark.parametrize("argv, message", [
    (["train", "d.txt", "--accumulate", "0"], "argument --accumulate: must be >= 1, got 0"),  # trained nothing, rc 0
    (["train", "d.txt", "--max-steps", "0"], "argument --max-steps: must be >= 1, got 0"),  # ran the preset's steps
    (["train", "d.txt", "--max-minutes", "nan"], "argument --max-minutes: must be a positive number, got nan"),
    (["train", "d.txt", "--num-workers", "-1"], "argument --num-workers: must be >= 0, got -1"),
    (["eval", "m.gguf", "--data", "t.txt", "--max-chars", "-5"], "argument --max-chars: must be >= 1, got -5"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),  # "no median for empty data"
    (["serve", "m.gguf", "--port", "70000"], "argument --port: must be in [0, 65535], got 70000"),  # a traceback
    (["generate", "m.gguf", "hi", "--threads", "abc"], "argument --threads: invalid integer value: 'abc'"),
    (["generate", "m.gguf", "hi", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be >= 0, got -1"),
    (["train", "d.txt", "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),  # after a tokenizer's training
    (["train", "d.txt", "--train-split", "0"], "argument --train-split: must be in (0, 1], got 0"),
    # these said "header_timeout_s must be > 0", "max_n must be > 0", "poll must be ..." (not the flag's name), the
    # poll only after the model had loaded
    (["serve", "m.gguf", "--header-timeout", "0"], "argument --header-timeout: must be a positive number of seconds"),
    (["serve", "m.gguf", "--keep-alive", "nan"], "argument --keep-alive: must be a positive number of seconds"),
    (["serve", "m.gguf", "--max-n", "0"], "argument --max-n: must be >= 1, got 0"),
    (["serve", "m.gguf", "--max-body-bytes", "-1"], "argument --max-body-bytes: must be >= 1, got -1"),
    (["serve", "m.gguf", "--poll", "61"], "argument --poll: must be in [0, 60] seconds, got 61"),
])
def test_numeric_options_out_of_range_are_usage_errors(argv, message, capsys):
    """Counts, sizes and ports are checked where they are parsed: exit status 2 and a message naming the flag,
    before any work (each of these once ran, silently did something else, or ended in a traceback)."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sp_corpus_text):
    d = tmp_path_factory.mktemp("cli")
    (d / "train.txt").write_text(sp_corpus_text[:120_000], encoding="utf-8")
    out = bllama("train", d / "train.txt", "--preset", "tiny", "--vocab-size", 400, "--max-steps", 6,
                 "--set", "num_layers=1", "--set", "seq_len=64", "--batch-size", 4, "--out", d / "run",
                 "--histogram-every", 3)
    assert "wrote" in out
    return d


def test_train_writes_checkpoint_tokenizer_config_and_histograms(run_dir):
    run = run_dir / "run"
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "tokenizer.model").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["num_layers"] == 1 and cfg["seq_len"] == 64 and cfg["vocab_size"] == 400
    pngs = list((run / "weights").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_export_generate_eval_bench(run_dir):
    gguf_path = run_dir / "m.gguf"
    out = bllama("export", run_dir / "run", "-o", gguf_path)
    assert gguf_path.exists() and str(gguf_path) in out
    out = bllama("generate", gguf_path, "The Python", "--max-new-tokens", 8)
    assert "tok/s" in out
    out = bllama("generate", gguf_path, "The Python", "--max-new-tokens", 8, stdout_only=True)
    assert out.strip() and out.endswith("\n")  # the continuation's line ends on stdout, as a checkpoint's does
    out = bllama("generate", run_dir / "run", "The Python", "--max-new-tokens", 8, stdout_only=True)
    assert out.strip() and not out.startswith("The Python")  # the continuation alone, as from the .gguf file
    out = bllama("eval", run_dir / "run", "--data", run_dir / "train.txt", "--max-chars", 3000, stdout_only=True)
    assert json.loads(out)["perplexity"] > 1  # stdout is the JSON alone (a report line came first)
    out = bllama("eval", gguf_path, "--data", run_dir / "train.txt", "--max-chars", 3000)
    metrics = json.loads(out[out.index("{"):])
    assert metrics["perplexity"] > 1 and metrics["bits_per_char"] > 0
    out = bllama("bench", "--preset", "tiny", "--threads", 1, 2, "--prompt-tokens", 16, "--gen-tokens", 8,
                 "--repeats", 1, "--json", run_dir / "bench.json")
    rows = json.loads((run_dir / "bench.json").read_text())["engine"]
    assert [r["threads"] for r in rows] == [1, 2] and all(r["decode_tok_s"] > 0 for r in rows)
    out = bllama("bench", gguf_path, "--threads", 2, "--prompt-tokens", 8, "--gen-tokens", 8, "--repeats", 1,
                 "--sequences", 3, "--json", run_dir / "bench3.json")
    r3 = json.loads((run_dir / "bench3.json").read_text())
    assert "3 sequences decoded together" in out and r3["sequences"] == 3 and r3["engine"][0]["sequences"] == 3
    assert r3["engine"][0]["decode_tok_s"] > 0


def test_export_with_a_chat_template(run_dir, tmp_path):
    """`bllama export --chat-template` writes a built-in (by name) or a file's template as tokenizer.chat_template,
    and refuses one that does not render, writing nothing (issue #19 item 2)."""
    from bllama.runtime import Runtime
    from bllama.tokenizers.chat_templates import builtin_chat_templates

    builtins = builtin_chat_templates()
    assert {"chatml", "llama3"} <= set(builtins)
    out = bllama("export", run_dir / "run", "-o", tmp_path / "chatml.gguf", "--chat-template", "ChatML")
    assert "chat template ChatML" in out
    rt = Runtime.load(tmp_path / "chatml.gguf", threads=1)
    assert rt._engine.metadata("tokenizer.chat_template") == builtins["chatml"]
    if getattr(rt.tokenizer, "chat_template", None):  # SentencePiece files honour it where from_gguf passes it on
        reply = rt.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4)
        assert isinstance(reply, str)
    own = tmp_path / "own.jinja"
    own.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ",
                   encoding="utf-8")
    bllama("export", run_dir / "run", "-o", tmp_path / "own.gguf", "--chat-template", own)
    rt = Runtime.load(tmp_path / "own.gguf", threads=1)
    assert rt._engine.metadata("tokenizer.chat_template") == own.read_text(encoding="utf-8")

    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] }}", encoding="utf-8")  # no endfor
    for template, message in ((broken, "does not render"), ("vicuna", "chatml, llama3")):
        r = subprocess.run([sys.executable, "-m", "bllama.cli", "export", str(run_dir / "run"), "-o",
                            str(tmp_path / "bad.gguf"), "--chat-template", str(template)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / "bad.gguf").exists()


def test_counts_versions_run_folders_and_scoring_stats(run_dir, tmp_path):
    """Issue #19 item 6: generate reports the tokens it generated (it said one fewer: the decode steps), eval takes a
    run folder as generate does, `bllama --version`, and rt.stats describes logits() / perplexity() calls too."""
    import re

    from bllama import __version__
    from bllama.runtime import Runtime

    assert bllama("--version").strip() == f"bllama {__version__}"
    gguf_path = tmp_path / "m.gguf"
    bllama("export", run_dir / "run", "-o", gguf_path)
    out = bllama("generate", gguf_path, "The Python", "--max-new-tokens", 12, "--threads", 1)
    rt = Runtime.load(gguf_path, threads=1)
    rt.generate("The Python", max_new_tokens=12)
    assert rt.stats["decode_tokens"] == rt.stats["generated_tokens"] - 1
    assert re.search(r"(\d+) new tokens", out).group(1) == str(rt.stats["generated_tokens"]), out

    out = bllama("eval", run_dir / "run", "--data", run_dir / "train.txt", "--max-chars", 3000)
    torch_metrics = json.loads(out[out.index("{"):])
    out = bllama("eval", gguf_path, "--data", run_dir / "train.txt", "--max-chars", 3000)
    engine_metrics = json.loads(out[out.index("{"):])
    assert torch_metrics["tokens"] == engine_metrics["tokens"]
    assert abs(torch_metrics["perplexity"] / engine_metrics["perplexity"] - 1) < 0.05  # f16 embedding, int8 head

    rt.logits([1, 5, 7])
    assert rt.stats["prompt_tokens"] == 3 and rt.stats["generated_tokens"] == 0 and rt.stats["prompt_seconds"] > 0
    r = rt.evaluate((run_dir / "train.txt").read_text(encoding="utf-8")[:3000])
    assert rt.stats["prompt_tokens"] == r["tokens"]  # each window feeds as many tokens as it scores


def test_builtin_chat_templates_render_every_role():
    from bllama.tokenizers.chat import render_chat
    from bllama.tokenizers.chat_templates import builtin_chat_templates, check_chat_template

    msgs = [{"role": "user", "content": "Hi"}]
    assert render_chat(builtin_chat_templates()["chatml"], msgs) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(builtin_chat_templates()["llama3"], msgs, bos_token="<s>") == (
        "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    for template in builtin_chat_templates().values():
        check_chat_template(template, "<s>", "</s>")
    with pytest.raises(ValueError, match="without its messages"):
        check_chat_template("{{ bos_token }}hello", "<s>", "</s>")


def test_tokenizer_and_data_prepare(tmp_path, sp_corpus_text):
    (tmp_path / "c.txt").write_text(sp_corpus_text[:60_000], encoding="utf-8")
    bllama("tokenizer", "train", tmp_path / "c.txt", "-o", tmp_path / "tok", "--vocab-size", 400)
    assert (tmp_path / "tok.model").exists()
    bllama("data", "prepare", tmp_path / "c.txt", "--tokenizer", tmp_path / "tok.model", "-o", tmp_path / "c.bin")
    assert (tmp_path / "c.bin").stat().st_size > 1000


def test_train_on_jsonl_and_parquet_trains_its_tokenizer_from_them(tmp_path, sp_corpus_text):
    """`bllama train data.jsonl` with no --tokenizer stopped with "no .txt file to train one from": the tokenizer is
    trained from the documents of the JSONL and parquet files now (their --text-field), and from a .txt beside them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer

    paras = [p for p in sp_corpus_text[:90_000].split("\n\n") if p.strip()]
    with open(tmp_path / "a.jsonl", "w", encoding="utf-8") as fh:
        for p in paras[: len(paras) // 2]:
            fh.write(json.dumps({"body": p}) + "\n")
    pq.write_table(pa.table({"body": paras[len(paras) // 2:]}), tmp_path / "b.parquet")
    out = bllama("train", tmp_path / "a.jsonl", tmp_path / "b.parquet", "--text-field", "body", "--preset", "tiny",
                 "--vocab-size", 400, "--max-steps", 1, "--set", "num_layers=1", "--set", "seq_len=64",
                 "--batch-size", 2, "--out", tmp_path / "run")
    assert "training a 400-piece SentencePiece BPE tokenizer on 2 file(s)" in out, out
    tok = SentencePieceTokenizer(tmp_path / "run" / "tokenizer.model")
    assert tok.vocab_size == 400 and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    # its pieces come from these documents: a frequent word of them is one piece or two
    word = max(set(sp_corpus_text[:90_000].split()), key=sp_corpus_text[:90_000].split().count)
    assert len(tok.encode(word, add_bos=False)) <= 2, word


def test_init_from_refuses_what_the_checkpoint_decides(tmp_path):
    """With --init-from the checkpoint gives the shape and the tokenizer: --tokenizer, --preset and --vocab-size were
    ignored without a word, and --set hidden_size=... failed after loading, blaming the checkpoint's tensors."""
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "train", str(tmp_path / "d.txt"), "--init-from",
                        str(tmp_path / "ckpt"), "--tokenizer", "t.model", "--preset", "small", "--set", "hidden_size=128",
                        "--set", "lr=1e-4", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("error: --preset, --tokenizer, --set hidden_size: --init-from takes the model's shape and tokenizer "
            "from the checkpoint") in r.stderr
    assert not (tmp_path / "run").exists()



@pytest.mark.parametrize("extra", [[], ["--tokenizer", "t.model"]])
def test_sft_without_init_from_says_what_it_needs(tmp_path, extra):
    """`bllama train chats.jsonl --sft` said "no --tokenizer given and no .txt file to train one from"; with a
    --tokenizer it built the model, then said the checkpoint (--init-from) had no chat template. Both now say at once
    that --sft needs --init-from, and write nothing."""
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "train", str(tmp_path / "chats.jsonl"), "--sft", *extra,
                        "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: --sft needs --init-from" in r.stderr and not (tmp_path / "run").exists()


def test_bad_paths_fail_with_a_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "generate", str(tmp_path / "nope.gguf"), "hi"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error: model file not found" in r.stderr and "Traceback" not in r.stderr


def test_train_token_file_with_scale_options_and_resume(run_dir):
    """The options of a long run on a prepared token file: random block sampling, gradient accumulation, activation
    checkpointing, periodic checkpoints, then --resume to extend the run."""
    tok = run_dir / "run" / "tokenizer.model"
    bllama("data", "prepare", run_dir / "train.txt", "--tokenizer", tok, "-o", run_dir / "t.bin")
    common = ["--tokenizer", tok, "--preset", "tiny", "--set", "num_layers=1", "--set", "seq_len=64",
              "--batch-size", 2, "--accumulate", 2, "--activation-checkpointing", "--sampling", "random",
              "--checkpoint-every", 2, "--val-every", 2, "--val-batches", 1, "--out", run_dir / "scale",
              "--set", "max_steps=6"]
    bllama("train", run_dir / "t.bin", *common, "--max-steps", 3)  # stops between periodic checkpoints
    cfg = json.loads((run_dir / "scale" / "config.json").read_text())
    assert cfg["activation_checkpointing"] is True and cfg["max_steps"] == 6
    import torch

    ckpt = run_dir / "scale" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3  # saved where it stopped
    bllama("train", run_dir / "t.bin", *common, "--max-steps", 6, "--resume", "last")  # what a job chain passes
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 6


def bllama_fails(*args):
    """Runs bllama expecting a usage error; returns its stderr."""
    r = subprocess.run([sys.executable, "-m", "bllama.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return r.stderr


@pytest.fixture(scope="module")
def other_tokenizer(run_dir):
    """A tokenizer of the run's vocabulary size but other pieces (trained on other text)."""
    from bllama.tokenizers.sentencepiece import train_sentencepiece

    text = run_dir / "train.txt"
    (run_dir / "other.txt").write_text(text.read_text(encoding="utf-8")[60_000:][::-1], encoding="utf-8")
    return train_sentencepiece([str(run_dir / "other.txt")], str(run_dir / "other"), vocab_size=400)


def test_train_refuses_a_token_file_of_another_tokenizer(run_dir, other_tokenizer):
    """The .bin's sidecar names its tokenizer: ids of another one trained on noise without a word (same vocabulary
    size) or failed mid-run (a larger one)."""
    bllama("data", "prepare", run_dir / "train.txt", "--tokenizer", other_tokenizer, "-o", run_dir / "other.bin")
    err = bllama_fails("train", run_dir / "other.bin", "--tokenizer", run_dir / "run" / "tokenizer.model",
                       "--max-steps", 1, "--out", run_dir / "other_run")
    assert "other.bin was made by `bllama data prepare` with another tokenizer" in err


def test_resume_refuses_another_shape_or_tokenizer_and_keeps_the_run(run_dir, other_tokenizer, tmp_path):
    """--resume of a checkpoint with another shape ended in a size-mismatch traceback after config.json and
    tokenizer.model had been overwritten; another tokenizer of the same size resumed silently."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir / "run", run)
    before = {f: (run / f).read_bytes() for f in ("config.json", "tokenizer.model")}
    common = ["--set", "seq_len=64", "--batch-size", 4, "--max-steps", 8, "--resume", "last", "--out", run]
    err = bllama_fails("train", run_dir / "train.txt", "--set", "num_layers=2", *common)
    assert "holds a model with num_layers=1 (this run: 2)" in err
    err = bllama_fails("train", run_dir / "train.txt", "--set", "num_layers=1", "--tokenizer", other_tokenizer, *common)
    assert "was trained with another tokenizer" in err
    assert {f: (run / f).read_bytes() for f in before} == before
    err = bllama_fails("train", run_dir / "train.txt", "--out", run / "config.json")
    assert "--out " + str(run / "config.json") + " is a file" in err


def test_train_fsdp_on_cpu_fails_with_a_message(run_dir):
    r = subprocess.run([sys.executable, "-m", "bllama.cli", "train", str(run_dir / "train.txt"), "--tokenizer",
                        str(run_dir / "run" / "tokenizer.model"), "--strategy", "fsdp", "--accelerator", "cpu",
                        "--max-steps", "1", "--out", str(run_dir / "fsdp")], capture_output=True, text=True)
    assert r.returncode == 2 and "needs GPUs" in r.stderr and "Traceback" not in r.stderr
