"""The `bllama` command line: train, generate, export, eval, bench, demo, tokenizer and data tools."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .atomic import check_writable
from .model.config import PRESETS, SHAPE_FIELDS


def _int_from(lo: int, hi: int = None):
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound); argparse names the flag in the error."""
    def parse(text: str) -> int:
        v = int(text)  # argparse turns a ValueError into "invalid <name> value"
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {'>= %d' % lo if hi is None else 'in [%d, %d]' % (lo, hi)}, "
                                             f"got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _number_where(ok, what: str):
    """An argparse type: a float for which ok(value) holds, else an error saying it must be `what`."""
    def parse(text: str) -> float:
        v = float(text)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v

    parse.__name__ = "number"  # argparse's "invalid number value: 'abc'"
    return parse


POSITIVE, NON_NEGATIVE = _int_from(1), _int_from(0)
POSITIVE_NUMBER = _number_where(lambda v: 0 < v < float("inf"), "a positive number")  # a duration (--max-minutes)
FRACTION = _number_where(lambda v: 0 < v <= 1, "in (0, 1]")  # --train-split (the error named train_test_split)
SECONDS = _number_where(lambda v: v > 0, "a positive number of seconds")  # serve's timeouts; inf: none


def _parse_overrides(items):
    """--set key=value pairs -> dict with JSON-ish values (numbers, true/false, lists)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _add_engine_options(p):
    """How the engine holds the model: the LM head format and the device."""
    p.add_argument("--head", default="q4", choices=["f16", "q8", "q4"],
                   help="LM head format: q4 (default: 4-bit, an f16 scale per 32 columns, 0.28x the f16 head's bytes; "
                        "the shipped model's held-out perplexity -0.02%% vs f16), q8 (int8 per-row scales) or f16 "
                        "(the file's, exact)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="run on the CPU (default) or the GPU")


def _add_sampling(p):
    p.add_argument("--max-new-tokens", type=NON_NEGATIVE, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (with --do-sample; default 1.0)")
    p.add_argument("--top-k", type=NON_NEGATIVE, default=0, help="keep the k most likely tokens (default 0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide positive / multiply negative logits of seen tokens by this (default 1.0: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: a fresh one each run)")


def _sampling_of(args):
    """The SamplingParams of _add_sampling's flags."""
    from .sampling import SamplingParams

    return SamplingParams(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


# SentencePiece samples at most 2M lines anyway: documents past this many characters would only cost memory
TOKENIZER_RECORD_CHARS = 128 << 20


def _first_chars(docs, limit: int) -> list:
    """Documents in order until `limit` characters are taken (the last one cut)."""
    out, left = [], limit
    for d in docs:
        if left <= 0:
            break
        out.append(d[:left])
        left -= len(out[-1])
    return out


def cmd_train(args):
    import torch

    from .model.config import bLlamaConfig
    from .data import TextDataModule
    from .train.module import bLlama
    from .tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece
    from .train.run_tokenizer import load_run_tokenizer, save_tokenizer_files
    from .signals import Interrupted
    from .train.trainer import check_resume, dataset_from_paths, resolve_compile, resume_checkpoint, run

    overrides = _parse_overrides(args.set)
    preset = args.preset or "tiny"  # None: not given (refused with --init-from)
    bLlamaConfig.check_overrides(overrides)  # a typo in --set ends here, not after the tokenizer is trained
    if args.init_from:  # these were ignored without a word, or failed later blaming the checkpoint's tensors
        given = [f for f, v in (("--preset", args.preset), ("--tokenizer", args.tokenizer),
                                ("--vocab-size", args.vocab_size)) if v is not None]
        given += [f"--set {k}" for k in overrides if k in SHAPE_FIELDS]
        if given:
            raise ValueError(f"{', '.join(given)}: --init-from takes the model's shape and tokenizer from the checkpoint")
    if args.sft and not args.init_from:  # it stopped after the tokenizer and model, or blamed the missing tokenizer
        raise ValueError("--sft needs --init-from: the conversations are rendered with the checkpoint's chat "
                         "template, and a model trained from scratch has none")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the checkpoints, tokenizer and logs")
    resume_from = resume_checkpoint(out, args.resume)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out / "config.json")  # a read-only --out fails now, not after the tokenizer and the data
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.max_steps:
        overrides.setdefault("max_steps", args.max_steps)
    fsdp = args.strategy == "fsdp"
    # FSDP checkpoints activations with Lightning's per-block wrapper (make_trainer), everything else in the model
    recompute = bool(args.activation_checkpointing or overrides.get("activation_checkpointing"))
    overrides["activation_checkpointing"] = recompute and not fsdp
    torch.manual_seed(args.seed)
    template = None
    if args.init_from:  # the checkpoint's architecture, weights, tokenizer and chat template
        from .convert.hf_load import load_pretrained

        print(f"loading {args.init_from}", flush=True)
        model, info = load_pretrained(args.init_from, **overrides)
        config, tok, template = model.config, info.tokenizer, info.chat_template
        print(f"initialized from {args.init_from} ({info.source})")
    else:
        if args.tokenizer:
            tok = SentencePieceTokenizer(args.tokenizer)
        elif resume_from:  # the run's own; training a new one would overwrite it (and differ if the data changed)
            tok = load_run_tokenizer(resume_from)[0]
        else:
            from .data.sources import file_kind, record_documents

            text_files = [p for p in args.data if p.endswith(".txt")]
            record_files = [p for p in args.data if not p.endswith((".bin", ".bin.json")) and file_kind(p) != "text"]
            if not text_files and not record_files:
                raise SystemExit("no --tokenizer given and no .txt, JSONL or parquet file to train one from")
            vocab = args.vocab_size or 2048  # None: not given (refused with --init-from)
            print(f"training a {vocab}-piece SentencePiece BPE tokenizer on {len(text_files) + len(record_files)} "
                  f"file(s)" + (f" (their first {TOKENIZER_RECORD_CHARS >> 20} Mi characters of JSONL / parquet "
                                "documents)" if record_files else ""))
            texts = _first_chars((d for f in record_files for d in record_documents(f, args.text_field)),
                                 TOKENIZER_RECORD_CHARS) if record_files else None
            tok = SentencePieceTokenizer(train_sentencepiece(text_files or None, out / "tokenizer", vocab_size=vocab,
                                                             texts=texts))
        overrides["vocab_size"] = tok.vocab_size
        config = bLlamaConfig.preset(preset, **overrides)
        model = bLlama(config)
    if resume_from:  # before the run folder's files are rewritten
        check_resume(resume_from, config, tok)
    if args.init_from:
        save_tokenizer_files(out, tok, template)
    if args.sft:
        from .train.sft import ChatSFTDataset

        dataset = ChatSFTDataset(args.data, tok, template or getattr(tok, "chat_template", None), config.seq_len)
    else:
        dataset = dataset_from_paths(args.data, tok, config.seq_len, sampling=args.sampling, text_field=args.text_field)
    dm = TextDataModule(dataset, batch_size=config.batch_size, train_test_split=args.train_split, seed=args.seed,
                        num_workers=args.num_workers, resumable=True, pin_memory=torch.cuda.is_available())
    if resolve_compile(args.compile, args.accelerator):
        model.compile_blocks()
    print(f"model: {'from ' + args.init_from if args.init_from else 'preset ' + preset}, "
          f"{model.num_parameters() / 1e6:.2f}M parameters; "
          f"data: {len(dataset)} blocks of {config.seq_len} tokens")
    callbacks = []
    if args.quant_warmup_steps:
        from .train.quant_warmup import QuantWarmup

        callbacks.append(QuantWarmup(args.quant_warmup_steps))
    if args.histogram_every:
        from .train.callbacks import WeightDistributionCallback

        callbacks.append(WeightDistributionCallback(every_n_steps=args.histogram_every, out_dir=out / "weights"))
    try:
        run(out, model, tok, dm, resume=args.resume, max_steps=args.max_steps, max_minutes=args.max_minutes,
            precision=args.precision, accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
            val_every=args.val_every, limit_val_batches=args.val_batches, callbacks=callbacks,
            accumulate=args.accumulate, activation_checkpointing=recompute and fsdp,
            sharding_strategy=args.sharding_strategy, state_dict_type=args.state_dict_type,
            checkpoint_every=args.checkpoint_every)
    except Interrupted as e:
        if (out / "checkpoints" / "last.ckpt").exists():
            e.detail += "; continue with the same command and --resume last"
        raise
    print(f"wrote {out / 'checkpoints' / 'last.ckpt'}, the tokenizer and {out / 'config.json'}")


def _is_checkpoint(model: str) -> bool:
    """A training run (folder with checkpoints/, a .ckpt, a sharded checkpoint) rather than what Runtime.load opens
    (a .gguf file or a Hugging Face folder): generate and eval run it in PyTorch."""
    return not (model.endswith(".gguf") or Path(model).is_dir() and not (Path(model) / "checkpoints").exists())


def cmd_generate(args):
    if not _is_checkpoint(args.model):
        from .runtime import Runtime

        rt = Runtime.load(args.model, threads=args.threads, head=args.head, device=args.device)
        sampling = _sampling_of(args)
        pieces = (rt.chat([{"role": "user", "content": args.prompt}], args.max_new_tokens, sampling, stream=True)
                  if args.chat else rt.stream(args.prompt, args.max_new_tokens, sampling))
        for piece in pieces:
            print(piece, end="", flush=True)
        print()  # stdout ends its line, as from a checkpoint (the report line went to stderr with it)
        s = rt.stats
        print(f"[{s['prompt_tokens']} prompt tokens at {s['prompt_tokens_per_second']:.1f} tok/s, "
              f"{s['generated_tokens']} new tokens, decoding at {s['decode_tokens_per_second']:.1f} tok/s]",
              file=sys.stderr)  # the first new token comes from the prompt's forward: decode steps are one fewer
        return
    from .tokenizers.sentencepiece import load_tokenizer
    from .train.trainer import load_checkpoint, tokenizer_beside

    if args.chat:
        raise SystemExit("bllama generate: --chat needs a .gguf model (its chat template)")
    model = load_checkpoint(args.model)
    tok = load_tokenizer(args.tokenizer or tokenizer_beside(args.model))
    model.quantize_weights_to_ternary(verbose=False)  # stdout is the continuation alone
    text = model.generate(args.prompt, tok, max_len=args.max_new_tokens, **_sampling_of(args).as_dict())
    prompt = tok.decode(tok.encode(args.prompt))
    print(text[len(prompt):] if text.startswith(prompt) else text)  # the continuation, as from a .gguf file


def cmd_export(args):
    from .convert.gguf_export import export_gguf
    from .tokenizers.sentencepiece import SentencePieceTokenizer
    from .train.run_tokenizer import load_run_tokenizer
    from .train.trainer import load_checkpoint

    if args.format == "gguf" and Path(args.output).is_dir():  # before loading and quantizing, not after
        raise ValueError(f"-o {args.output} is a folder: give the .gguf file's path (or --format hf for a folder)")
    check_writable(args.output)
    model = load_checkpoint(args.checkpoint)
    template = None
    if args.tokenizer:
        tok = SentencePieceTokenizer(args.tokenizer)
    else:
        tok, template = load_run_tokenizer(args.checkpoint)
    if args.chat_template:
        from .tokenizers.chat_templates import resolve_chat_template

        template = resolve_chat_template(args.chat_template)
    t0 = time.perf_counter()
    if args.format == "hf":
        from .convert.hf_export import export_hf

        path = export_hf(model, tok, args.output, chat_template=template)
        size = sum(p.stat().st_size for p in path.iterdir())
        kind = json.loads((path / "config.json").read_text())["architectures"][0]  # what was written, not a guess
        chat = ", chat template in tokenizer_config.json" \
            if "chat_template" in json.loads((path / "tokenizer_config.json").read_text()) else ""
        print(f"wrote {path}/ ({size / 2**20:.1f} MiB, Hugging Face {kind}{chat}) in {time.perf_counter() - t0:.1f} s")
        return
    path = export_gguf(model, tok, args.output, weight_type=args.type, progress=True, force_arch=args.force_arch,
                       chat_template=template)
    # a fine-tuned run's own template goes in too: say so, or a user cannot tell that --chat will work
    chat = f", chat template {args.chat_template}" if args.chat_template else ", the run's chat template" \
        if template else ", no chat template"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type}{chat}) "
          f"in {time.perf_counter() - t0:.1f} s")


def cmd_import(args):
    from .convert.hf_import import import_hf

    check_writable(args.output)
    t0 = time.perf_counter()
    path = import_hf(args.hf_dir, args.output, progress=not args.quiet, force_arch=args.force_arch)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")


def cmd_eval(args):
    from .tokenizers.text import read_text_file

    text = read_text_file(args.data)
    if args.max_chars:
        text = text[:args.max_chars]
    if _is_checkpoint(args.model):  # as generate does: the ternary model in PyTorch, the same windows as the engine
        from .tokenizers.sentencepiece import load_tokenizer
        from .tools.evaluate import text_metrics, torch_logits_fn
        from .train.trainer import load_checkpoint, tokenizer_beside

        model = load_checkpoint(args.model)
        tok = load_tokenizer(args.tokenizer or tokenizer_beside(args.model))
        model.quantize_weights_to_ternary(verbose=False)  # stdout is the JSON alone
        print(json.dumps(text_metrics(text, tok, model.config.seq_len, torch_logits_fn(model), progress=True),
                         indent=2))
        return
    from .runtime import Runtime

    rt = Runtime.load(args.model, threads=args.threads, head=args.head, device=args.device)
    print(json.dumps(rt.evaluate(text, progress=True), indent=2))


def cmd_bench(args):
    from .tools.bench import run_bench

    run_bench(model=args.model, preset=args.preset, threads=args.threads, prompt_tokens=args.prompt_tokens,
              gen_tokens=args.gen_tokens, repeats=args.repeats, torch_compare=args.torch, json_out=args.json,
              head=args.head, device=args.device, sequences=args.sequences)


class MissingExtraError(ImportError):
    """A subcommand needs packages of an optional extra (setup.py's extras_require) that are not installed."""


def _serve_function():
    """bllama.serve.server.serve; without the serve extra (Starlette, uvicorn) a MissingExtraError that says how to
    install it instead of an import traceback."""
    try:
        from .serve.server import serve
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing not in ("starlette", "uvicorn"):
            raise
        # Not `pip install bllama[serve]`: that would ask the package index for a project of that name.
        raise MissingExtraError(f"{missing} is not installed: the server needs the serve extra, `pip install -e "
                                "'.[serve]'` in the repository (or `pip install starlette uvicorn`)") from e
    return serve


def cmd_serve(args):
    from .runtime import Runtime
    from .serve.limits import ServeLimits

    serve = _serve_function()

    limits = ServeLimits(**{name: getattr(args, name) for name in ServeLimits.__dataclass_fields__})
    rt = Runtime.load(args.model, threads=args.threads, head=args.head, device=args.device,
                      max_sequences=args.max_sequences)
    serve(rt, host=args.host, port=args.port, model_id=args.name, default_max_tokens=args.max_tokens,
          api_key=args.api_key, limits=limits, allowed_hosts=args.allow_host, cors_origins=args.cors_origin,
          scheduler=args.scheduler, step_tokens=args.step_tokens, poll_s=args.poll, quiet=args.quiet)


def cmd_demo(args):
    from .tools.demo import run_demo

    run_demo(out_dir=Path(args.out), steps=args.steps, prompt=args.prompt, max_new_tokens=args.max_new_tokens)


def cmd_tokenizer_train(args):
    from .tokenizers.sentencepiece import train_sentencepiece

    size = sum(Path(f).stat().st_size for f in args.files if Path(f).is_file())
    print(f"training a {args.vocab_size}-piece SentencePiece BPE tokenizer on {len(args.files)} file(s) "
          f"({size / 2**20:.1f} MiB)", flush=True)  # SentencePiece says nothing until it is done
    train_sentencepiece(args.files, args.output, vocab_size=args.vocab_size)  # says what it wrote


def cmd_data_prepare(args):
    from .data import prepare_tokens
    from .tokenizers.sentencepiece import load_tokenizer

    check_writable(args.output)
    prepare_tokens(args.files, load_tokenizer(args.tokenizer), args.output, text_field=args.text_field)


def _add_serve_limits(sv) -> None:
    """One flag per field of ServeLimits (docs/security.md lists them with the reason for each)."""
    from .serve.limits import ServeLimits

    helps = {"max_body_bytes": "largest request body", "max_prompt_chars": "longest prompt in characters "
             "(default 32 x the context length)", "max_stop": "stop strings per request", "max_stop_chars":
             "characters per stop string", "max_n": "choices (n) per request", "max_queue": "sequences waiting for "
             "a slot before 429s", "max_tokenizing": "prompts over 1 KiB tokenized at once", "max_connections": "open "
             "connections before 503s", "header_timeout_s": "seconds to send a request's headers", "body_timeout_s":
             "seconds to send a request's body", "client_timeout_s": "seconds a client may stop reading a reply",
             "keep_alive_s": "seconds an idle connection stays open"}
    for name, f in ServeLimits.__dataclass_fields__.items():
        seconds = name.endswith("_s")
        flag = "--" + (name[:-2] if seconds else name).replace("_", "-")
        # checked here, so the error names the flag (ServeLimits said "header_timeout_s must be > 0")
        sv.add_argument(flag, dest=name, type=SECONDS if seconds else POSITIVE, default=f.default,
                        help=helps[name] + (f" (default {f.default})" if f.default is not None else ""))


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(prog="bllama", description="Train, export and run BitNet b1.58 LLaMA models.")
    p.add_argument("--version", action="version", version=f"bllama {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model with Lightning", description="Train a bLLaMa model.")
    t.add_argument("data", nargs="+", help="training data: .txt files, .parquet (text column), .jsonl (text "
                                           "field) or .bin token files from `bllama data prepare`")
    t.add_argument("--preset", default=None, choices=sorted(PRESETS), help="model preset (default tiny)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set num_layers=4 --set activation=relu2 (repeatable)")
    t.add_argument("--tokenizer", help="an existing SentencePiece tokenizer.model (default: train one)")
    t.add_argument("--vocab-size", type=POSITIVE, default=None,
                   help="pieces of the tokenizer trained when none given (default 2048)")
    t.add_argument("--out", default="runs/bllama",
                   help="output folder (checkpoints, tokenizer, logs; default runs/bllama)")
    t.add_argument("--max-steps", type=POSITIVE, default=None,
                   help="stop after this many optimizer steps (default: one pass over the data, or --max-minutes)")
    t.add_argument("--max-minutes", type=POSITIVE_NUMBER, default=None,
                   help="stop after this many minutes of wall time (default: no limit)")
    t.add_argument("--batch-size", type=POSITIVE, default=None, help="sequences per batch (default: the preset's)")
    t.add_argument("--precision", default="auto",
                   help="Lightning precision: auto (the default: bf16-mixed on a GPU with bf16 and on a CPU with bf16 dot "
                        "products: fp32 master weights and optimizer state, bf16 matmuls; 32-true otherwise), 32-true, "
                        "bf16-mixed, ...")
    t.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    t.add_argument("--devices", default="auto",
                   help="number of devices, or auto (default: every GPU, or one CPU process)")
    t.add_argument("--strategy", default="auto",
                   help="auto (default), ddp (small models, also on CPUs), fsdp (GPUs: one FSDP unit per transformer "
                        "block)")
    t.add_argument("--sharding-strategy", default="FULL_SHARD", choices=["FULL_SHARD", "SHARD_GRAD_OP",
                                                                         "HYBRID_SHARD", "NO_SHARD"],
                   help="with --strategy fsdp: what is sharded (default FULL_SHARD: weights, gradients, optimizer)")
    t.add_argument("--state-dict-type", default="sharded", choices=["sharded", "full"],
                   help="with --strategy fsdp: checkpoints as a directory of per-rank shards (default) or one file")
    t.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass (less memory, ~1/3 more compute)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each transformer block (default: on a GPU yes, on a CPU no)")
    t.add_argument("--accumulate", type=POSITIVE, default=1,
                   help="micro-batches per optimizer step (default 1; global batch = batch size x accumulate x "
                        "devices)")
    t.add_argument("--checkpoint-every", type=POSITIVE, default=None,
                   help="also write checkpoints/last.ckpt every N optimizer steps")
    t.add_argument("--val-every", type=POSITIVE, default=None,
                   help="validate every N training steps (default: after each pass over the data)")
    t.add_argument("--val-batches", type=POSITIVE, default=None, help="validate on at most N batches (default: all)")
    t.add_argument("--train-split", type=FRACTION, default=0.9,
                   help="fraction of blocks for training, the rest for validation (default 0.9)")
    t.add_argument("--num-workers", type=NON_NEGATIVE, default=0,
                   help="DataLoader worker processes (default 0: load in the training process)")
    t.add_argument("--sampling", default="sequential", choices=["sequential", "random"],
                   help=".bin token files: consecutive blocks, shuffled (sequential, the default) or blocks at random "
                        "offsets")
    t.add_argument("--text-field", default="text", metavar="NAME",
                   help="the JSONL field / parquet column holding each document (default text)")
    t.add_argument("--histogram-every", type=NON_NEGATIVE, default=0,
                   help="write a ternary weight histogram PNG every N steps (default 0: never)")
    t.add_argument("--resume", default=None,
                   help="a checkpoint to resume from: a .ckpt file, a sharded FSDP checkpoint directory, or 'last'")
    t.add_argument("--init-from", default=None, metavar="PATH",
                   help="start from real weights: a Hugging Face LLaMA / BitNet folder or a .gguf file (its "
                        "architecture, tokenizer and chat template; --preset and --tokenizer are not used)")
    t.add_argument("--quant-warmup-steps", type=NON_NEGATIVE, default=0, metavar="N",
                   help="blend ternary weights and int8 activations in over N steps (converting a full-precision "
                        "model to b1.58; default 0: quantized from the first step)")
    t.add_argument("--sft", action="store_true",
                   help="chat SFT: the data are JSONL lines of {\"messages\": [...]}, rendered with the model's chat "
                        "template; only assistant tokens are trained on")
    t.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate text from a .gguf model (C++ engine) or a checkpoint (PyTorch)")
    # "~/models/x" quoted reaches us unexpanded: Runtime.load expands it, the folder / checkpoint test must too
    g.add_argument("model", type=os.path.expanduser, help="model.gguf, or a training output folder / .ckpt")
    g.add_argument("prompt", help="the prompt text")
    g.add_argument("--threads", type=POSITIVE, default=None, help="engine threads (default: all cores)")
    _add_engine_options(g)
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer.model for a checkpoint (default: the run's own, beside it)")
    g.add_argument("--chat", action="store_true",
                   help="(.gguf) send the prompt as one user message through the file's chat template")
    _add_sampling(g)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("export", help="quantize a checkpoint and write a GGUF file")
    e.add_argument("checkpoint", help="a .ckpt file or a training output folder")
    e.add_argument("-o", "--output", required=True, help="the .gguf file (or, with --format hf, the folder) to write")
    e.add_argument("--format", default="gguf", choices=["gguf", "hf"],
                   help="gguf (the default: our engine, llama.cpp) or hf (a transformers folder: BitNetForCausalLM, or "
                        "LlamaForCausalLM / Qwen2ForCausalLM for a model without sub-norms)")
    e.add_argument("--type", default="tq2_0", choices=["tq2_0", "tq1_0", "i2_s"],
                   help="ternary weight type (default tq2_0; tq1_0: 1.6 bits; i2_s: bitnet.cpp's type, which upstream "
                        "llama.cpp cannot read)")
    e.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the one beside the checkpoint)")
    e.add_argument("--force-arch", default=None, choices=["bitnet", "bitnet-b1.58"],
                   help="write this general.architecture even where it does not describe the model (a model without "
                        "sub-norms, or with q/k/v biases: only our engine runs such a file correctly)")
    e.add_argument("--chat-template", default=None, metavar="NAME|FILE",
                   help="store a chat template so chat and `bllama serve` chat work: a built-in name (chatml, "
                        "llama3) or a Jinja file in the Hugging Face convention; it must render before it is written")
    e.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="convert a local Hugging Face BitNet b1.58 checkpoint folder into a GGUF file")
    im.add_argument("hf_dir", help="folder with config.json, *.safetensors and tokenizer.model or tokenizer.json")
    im.add_argument("-o", "--output", required=True, help="the .gguf file to write")
    im.add_argument("--quiet", action="store_true", help="no progress bar")
    im.add_argument("--force-arch", default=None, choices=["bitnet", "bitnet-b1.58"],
                    help="write this general.architecture even where it does not describe the model (see export)")
    im.set_defaults(func=cmd_import)

    v = sub.add_parser("eval", help="perplexity and bits per character of a model on a text file")
    v.add_argument("model", type=os.path.expanduser,
                   help="model.gguf (C++ engine), or a training output folder / .ckpt (PyTorch)")
    v.add_argument("--tokenizer", default=None,
                   help="tokenizer.model for a checkpoint (default: the run's own, beside it)")
    v.add_argument("--data", required=True, help="a UTF-8 text file")
    v.add_argument("--max-chars", type=POSITIVE, default=None,
                   help="evaluate only the first N characters (default: the whole file)")
    v.add_argument("--threads", type=POSITIVE, default=None, help="engine threads (default: all cores)")
    _add_engine_options(v)
    v.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="prompt and decode speed of the engine")
    b.add_argument("model", nargs="?", default=None, help="model.gguf (default: a random model of --preset)")
    b.add_argument("--preset", default="1.7b", choices=sorted(PRESETS),
                   help="shapes of the random model when no file is given (default 1.7b)")
    b.add_argument("--threads", type=POSITIVE, nargs="+", default=None, help="thread counts to measure (default 1 and all)")
    b.add_argument("--prompt-tokens", type=POSITIVE, default=128, help="prompt length (default 128)")
    b.add_argument("--gen-tokens", type=NON_NEGATIVE, default=64, help="decoded tokens (default 64)")
    b.add_argument("--repeats", type=POSITIVE, default=3,
                   help="runs per measurement; the median is reported (default 3)")
    b.add_argument("--torch", action="store_true", help="also time the PyTorch quantized model on the same shapes")
    b.add_argument("--json", default=None, help="also write the results to this JSON file")
    _add_engine_options(b)
    b.add_argument("--sequences", type=POSITIVE, default=1,
                   help="decode this many random prompts together (default 1; batched decoding: tok/s counts all of "
                        "them)")
    b.set_defaults(func=cmd_bench)

    sv = sub.add_parser("serve", help="serve a .gguf model over HTTP (OpenAI-compatible completions and chat)")
    sv.add_argument("model", help="model.gguf (or a Hugging Face checkpoint folder)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_int_from(0, 65535), default=8080, help="port (default 8080; 0 picks a free one)")
    sv.add_argument("--name", default=None, help="model id in replies and /v1/models (default: the file's stem)")
    sv.add_argument("--max-tokens", type=POSITIVE, default=256,
                    help="new tokens when a request names no max_tokens (default 256, or what the context holds)")
    sv.add_argument("--threads", type=POSITIVE, default=None, help="engine threads (default: all cores)")
    _add_engine_options(sv)
    sv.add_argument("--max-sequences", type=POSITIVE, default=1,
                    help="slots: decode up to this many requests together (one KV cache each; default 1)")
    sv.add_argument("--scheduler", choices=["auto", "continuous", "static"], default="auto",
                    help="continuous: requests join the running batch at the next token (default where the engine "
                         "has slots); static: a batch runs to its end before the next starts")
    sv.add_argument("--step-tokens", type=POSITIVE, default=None, metavar="N",
                    help="continuous: token rows per engine step, decoding requests first, the rest for joining "
                         "prompts (default 64); smaller: steadier inter-token latency, larger: sooner first tokens")
    sv.add_argument("--poll", type=_number_where(lambda v: 0 <= v <= 60, "in [0, 60] seconds"), default=1.0,
                    metavar="SECONDS",
                    help="after each request the engine thread spins up to this long waiting for the next one "
                         "instead of sleeping at once (a VM's sleeping core runs the next prompt up to 2x slower), "
                         "and sleeps sooner when other threads need its core (default 1; 0: off; max 60)")
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on all but /health "
                                                    "(default: $BLLAMA_API_KEY; none: no key)")
    sv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="a Host name to accept besides the bound address and localhost (repeatable)")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="let web pages of this origin call the API, e.g. http://localhost:3000 (repeatable)")
    sv.add_argument("--quiet", action="store_true", help="no access log")
    _add_serve_limits(sv)
    sv.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="generate with the shipped model, then train, export and run a tiny model")
    d.add_argument("--steps", type=POSITIVE, default=300, help="training steps of the demo's own model (default 300)")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--prompt", default="ROMEO:", help="prompt for both models (default 'ROMEO:')")
    d.add_argument("--max-new-tokens", type=NON_NEGATIVE, default=80, help="tokens to generate (default 80)")
    d.set_defaults(func=cmd_demo)

    tk = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    tt = tk.add_parser("train", help="train a SentencePiece BPE tokenizer (byte fallback) on text files")
    tt.add_argument("files", nargs="+", help="text files")
    tt.add_argument("-o", "--output", required=True, help="model prefix: writes PREFIX.model")
    tt.add_argument("--vocab-size", type=POSITIVE, default=32000, help="number of pieces (default 32000)")
    tt.set_defaults(func=cmd_tokenizer_train)

    da = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    dp = da.add_parser("prepare", help="tokenize a corpus once into a memory-mapped token file")
    dp.add_argument("files", nargs="+", help="text, parquet or JSONL files")
    dp.add_argument("--tokenizer", required=True, help="tokenizer.model")
    dp.add_argument("-o", "--output", required=True, help="the token file to write (.bin)")
    dp.add_argument("--text-field", default="text", metavar="NAME",
                    help="the JSONL field / parquet column holding each document (default text)")
    dp.set_defaults(func=cmd_data_prepare)
    return p


def _out_of_memory(e: BaseException) -> bool:
    """MemoryError, or torch's allocator failing (a RuntimeError, CUDA's OutOfMemoryError among them)."""
    return isinstance(e, MemoryError) or isinstance(e, RuntimeError) and (
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower())


def _memory_message(command: str, e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines if "allocate" in line), lines[0] if lines else "")
    detail = detail.split("DefaultCPUAllocator: ")[-1]  # "[enforce fail at alloc_cpu.cpp:127] err == 0. ..."
    hint = {"train": "; use a smaller --batch-size (with --accumulate to keep the global batch), a shorter "
                     "--set seq_len=N or --activation-checkpointing"}.get(command, "")
    return f"out of memory{': ' + detail if detail else ''}{hint}"


def _os_error_message(e: OSError) -> str:
    """'PATH: reason' for an OSError with a file name (permission denied, read-only filesystem, ...)."""
    if e.filename and e.strerror:
        return f"{e.filename}: {e.strerror[:1].lower() + e.strerror[1:]}"
    return e.strerror or str(e)


def main(argv=None):
    from contextlib import nullcontext

    from .runtime import CudaUnavailableError, EngineUnavailableError
    from .signals import as_interrupted, termination_raises

    args = build_parser().parse_args(argv)
    try:
        # kill (SIGTERM) and a closed terminal (SIGHUP) unwind like Ctrl-C, so temporaries are removed; serve has
        # its own stop
        with termination_raises() if args.command != "serve" else nullcontext():
            args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C, kill: one line, and the shell's status for that signal (130, 143)
        e = as_interrupted(e)
        print(f"bllama {args.command}: {e.message()}", file=sys.stderr)
        raise SystemExit(e.exit_status)
    except (FileNotFoundError, IsADirectoryError, ValueError, IndexError, CudaUnavailableError,
            EngineUnavailableError, MissingExtraError) as e:
        # Bad input, or a missing part of the install, is the user's to fix: one line, not a traceback.
        print(f"bllama {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(f"bllama {args.command}: error: {_memory_message(args.command, e)}", file=sys.stderr)
        raise SystemExit(1)
    except OSError as e:  # a full disk, a folder it may not write, a file it may not read: the system's to fix
        print(f"bllama {args.command}: error: {_os_error_message(e)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
