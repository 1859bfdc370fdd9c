"""Time to first token of a growing conversation through Runtime.chat, with and without the kept KV cache.

    python bench/chat_turns.py                                 # random "small"-shaped model, 2048-piece vocabulary
    python bench/chat_turns.py MODEL.gguf --turns 10 --reply-tokens 32 --user-words 40 --repeats 3 --threads 1

Two Runtimes of the same file hold the same conversation: "reuse" keeps its KV cache between turns (the default:
each turn runs only the tokens after the prefix it shares with the previous sequence), "cold" forgets it before
every turn (Runtime.reset_cache). Replies are greedy, so both conversations are the same (checked); each turn appends
the reply and a new user message of --user-words words of Tiny Shakespeare. Time to first token is the engine's
prompt_seconds (the prompt forward plus choosing the first token). Per turn the two runtimes alternate which goes
first; --repeats runs the whole conversation again and the medians are reported. The target (issue 15): with reuse,
turn 10's time to first token within 1.5x of turn 1's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bllama import bLlamaConfig  # noqa: E402
from bllama.runtime import Runtime  # noqa: E402

# A plain chat layout for a model file without a template of its own.
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def random_model(preset: str, vocab: int, context: int, folder: Path) -> Path:
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from bllama.tools.bench import write_random_gguf
    from bllama.train.corpus import default_corpus_text

    text = folder / "corpus.txt"
    text.write_text(default_corpus_text(max_chars=400_000), encoding="utf-8")
    tok = SentencePieceTokenizer(train_sentencepiece([str(text)], folder / "tok", vocab_size=vocab))
    cfg = bLlamaConfig.preset(preset, vocab_size=tok.vocab_size, seq_len=context)
    return write_random_gguf(cfg, folder / f"random-{preset}.gguf", tokenizer=tok)


def load(path: Path, threads: int) -> Runtime:
    rt = Runtime.load(path, threads=threads)
    if not getattr(rt.tokenizer, "chat_template", None):
        rt.tokenizer.chat_template = TEMPLATE
    return rt


def conversation(reuse: Runtime, cold: Runtime, turns: int, reply_tokens: int, user_words: int, first: int) -> list:
    words = (ROOT / "bench" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8").split()
    msgs, rows = [], []
    reuse.reset_cache()  # a repeat starts as the first run did, not from the previous run's conversation
    for turn in range(turns):
        msgs.append({"role": "user", "content": " ".join(words[turn * user_words:(turn + 1) * user_words])})
        row = {"turn": turn + 1, "prompt_tokens": len(reuse.chat_prompt_ids(msgs))}
        replies = {}
        order = ["reuse", "cold"] if (turn + first) % 2 == 0 else ["cold", "reuse"]
        for name in order:
            rt = reuse if name == "reuse" else cold
            if name == "cold":
                rt.reset_cache()
            replies[name] = rt.chat(msgs, max_new_tokens=reply_tokens)
            row[f"{name}_ttft_s"] = rt.stats["prompt_seconds"]
            row[f"{name}_cached_tokens"] = rt.stats["cached_tokens"]
        if replies["reuse"] != replies["cold"]:
            raise AssertionError(f"turn {turn + 1}: the kept cache changed the reply")
        msgs.append({"role": "assistant", "content": replies["reuse"]})
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a .gguf file (default: a random model of --preset's shapes)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--user-words", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the per-turn medians and every run here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else random_model(args.preset, args.vocab, args.context, Path(tmp))
        reuse, cold = load(path, args.threads), load(path, args.threads)
        runs = [conversation(reuse, cold, args.turns, args.reply_tokens, args.user_words, first=r)
                for r in range(args.repeats)]
        for rt in (reuse, cold):
            rt.reset_cache()
    med = []
    print(f"model: {args.model or 'random ' + args.preset}, threads {args.threads}, {args.repeats} repeats (medians)")
    print("turn  prompt_tokens  cached  ttft_reuse_ms  ttft_cold_ms  cold/reuse")
    for t in range(args.turns):
        rows = [run[t] for run in runs]
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        med.append(m)
        print(f"{t + 1:4d}  {m['prompt_tokens']:13.0f}  {m['reuse_cached_tokens']:6.0f}"
              f"  {1e3 * m['reuse_ttft_s']:13.1f}  {1e3 * m['cold_ttft_s']:12.1f}"
              f"  {m['cold_ttft_s'] / m['reuse_ttft_s']:10.2f}")
    ratio_reuse = med[-1]["reuse_ttft_s"] / med[0]["reuse_ttft_s"]
    ratio_cold = med[-1]["cold_ttft_s"] / med[0]["cold_ttft_s"]
    print(f"turn {args.turns} / turn 1 time to first token: reuse {ratio_reuse:.2f}x, cold {ratio_cold:.2f}x "
          f"(target: reuse <= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "medians": med, "runs": runs,
                                               "turn_last_over_first": {"reuse": ratio_reuse, "cold": ratio_cold}},
                                              indent=1))


if __name__ == "__main__":
    main()
