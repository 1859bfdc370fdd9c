"""Training driver shared by `bllama train`, `bllama demo` and the benchmarks: a thin layer over pl.Trainer."""
from __future__ import annotations

import json
import pickle
import signal
import sys
import threading
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.strategies import FSDPStrategy

from ..atomic import atomic_path, remove_path, replace_dir
from ..signals import NAMES, Interrupted, as_interrupted
from ..model.config import bLlamaConfig
from ..model.transformer import Block
from .module import bLlama
from .progress import progress_bar

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle needs more than tensors and plain data (numbers, strings, lists, dicts): loading
    it could run code, so it is refused."""


def torch_load_data(path, what: str = "checkpoint"):
    """torch.load with weights_only=True: tensors and plain containers only, so a hostile pickle (one that calls
    os.system, say) is refused before anything in it runs. Every file bllama writes loads this way (the config is
    stored as a plain dict)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(_refusal(path, what, e)) from None


def _refusal(path, what: str, e: Exception) -> str:
    reason = str(e).strip().splitlines()
    reason = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
    return (f"{path}: refusing to load this {what}: it holds Python objects beyond tensors and plain data, and "
            f"unpickling them could run code ({reason.strip()}). bllama's own checkpoints never need that; "
            "if you wrote and trust this file, load it yourself with torch.load(..., weights_only=False).")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file beside the target and renamed into place, so an interrupted
    save never leaves a truncated checkpoint where a good one was. They are read back (--resume) with
    weights_only=True, like every checkpoint bllama loads (torch_load_data)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        try:
            return super().load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage),
                                           weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(_refusal(path, "checkpoint", e)) from None


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes last.ckpt where a run stopped (--max-steps, --max-minutes).

    Lightning 2.6 writes `last` at a stop only if no periodic checkpoint was written before, so with
    every_n_train_steps a run stopped between two of them would resume from the older one and repeat the steps since.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StopOnSignal(pl.Callback):
    """Ctrl-C, kill or a closed terminal (SIGINT, SIGTERM, SIGHUP) during training: the optimizer step under way
    finishes, LastCheckpoint writes last.ckpt as at any stop (no validation pass on the way out), and run() raises
    Interrupted naming it, so the run continues with --resume last. Before, Ctrl-C dropped every step since the last
    periodic checkpoint (all of them without --checkpoint-every) and SIGTERM ended the process with status 0, as if
    training had finished. A second signal stops at once: a save under way is abandoned and the previous last.ckpt
    kept. Before the first step (setup, the data loaders) a signal stops at once too: there is nothing to keep.
    Single-process runs only; under DDP Lightning's own SIGTERM handling stays."""

    def __init__(self):
        self.signum = None  # the first signal received
        self.interrupt = None  # the KeyboardInterrupt that ended fit, if one did
        self._graceful = False
        self._step_before = 0

    def _install(self, trainer) -> None:
        if trainer.world_size > 1 or threading.current_thread() is not threading.main_thread():
            return
        for signum in NAMES:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self._graceful or self.signum is not None:
            self.signum = self.signum or signum
            raise Interrupted(signum)
        self.signum = signum
        print(f"\nbllama: {NAMES[signum]}: stopping after this step to write a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)

    def setup(self, trainer, pl_module, stage) -> None:
        self._install(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._graceful = True
        self._install(trainer)  # again: Lightning put its own SIGTERM handler in since setup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # at an optimizer step's end only: stopping between accumulated micro-batches would drop their gradients
        if self.signum is not None and trainer.global_step > self._step_before:
            trainer.should_stop = True
            trainer.limit_val_batches = 0  # Lightning validates before a should_stop exit: not on the way out

    def on_validation_end(self, trainer, pl_module) -> None:
        # a signal during a validation pass between steps: stop there rather than after one more step
        if self.signum is not None and trainer.state.fn == "fit" and trainer.global_step > self._step_before:
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = as_interrupted(exception)


class BitFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy whose sharded checkpoints are written atomically.

    FSDPStrategy does not use the CheckpointIO plugin for `state_dict_type="sharded"`: every rank writes its shard
    straight into the checkpoint directory (torch.distributed.checkpoint), so a crash mid-save would leave a
    half-written `last.ckpt/`. Here all ranks write into `.NAME.tmp/` beside it and rank 0 swaps it into place
    after a barrier (old -> `.NAME.old/`, tmp -> NAME, old removed; a crash between the two renames leaves the
    previous checkpoint as `.NAME.old/`). Full state dicts go through the CheckpointIO (AtomicCheckpointIO).
    Needs a filesystem that every rank sees, as sharded checkpoints always do.
    """

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")  # one name every rank derives, unlike atomic_dir's
        if self.is_global_zero:
            remove_path(tmp)
        self.barrier("bllama_sharded_save_start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("bllama_sharded_save_written")
        if self.is_global_zero:
            replace_dir(tmp, path)
        self.barrier("bllama_sharded_save_done")


def make_fsdp_strategy(activation_checkpointing: bool = False, sharding_strategy: str = "FULL_SHARD",
                       state_dict_type: str = "sharded", cls=BitFSDPStrategy, **kwargs) -> BitFSDPStrategy:
    """FSDP with one wrapped unit per transformer block (and, if asked, one activation-checkpointed unit per block).

    Parameters stay fp32 inside FSDP (fp32 all-gathers and gradient reduce-scatters); with
    `precision="bf16-mixed"` Lightning's autocast runs the matmuls in bf16. Lightning's default for bf16-mixed under
    FSDP would all-gather bf16 copies of the weights, so the ternary codes and scales would be computed from
    bf16-rounded latent weights instead of the fp32 master weights a single device uses; this keeps both paths the
    same function at the price of twice the parameter traffic (small next to a 64k-token step).
    """
    from torch.distributed.fsdp import MixedPrecision

    if sharding_strategy not in SHARDING_STRATEGIES:
        raise ValueError(f"sharding_strategy must be one of {SHARDING_STRATEGIES}, got {sharding_strategy!r}")
    if state_dict_type not in ("sharded", "full"):
        raise ValueError(f"state_dict_type must be 'sharded' or 'full', got {state_dict_type!r}")
    fp32 = MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32, buffer_dtype=torch.float32)
    return cls(auto_wrap_policy=bLlama.fsdp_wrap_policy(),
               activation_checkpointing_policy={Block} if activation_checkpointing else None,
               sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, mixed_precision=fp32, **kwargs)


def trains_on_gpu(accelerator: str = "auto") -> bool:
    """Whether Lightning's `accelerator` argument puts training on a GPU ("auto": when CUDA is available)."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def cpu_has_fast_bf16() -> bool:
    """Whether the CPU has bf16 dot products (AVX512_BF16 or AMX): there bf16 autocast trains the tiny preset 1.3-1.8x
    faster than fp32 (bench/NOTES-training.md); without them it is emulated and much slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: no cheap way to ask, so keep fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Precision "auto": bf16-mixed (fp32 master weights and optimizer state, bf16 autocast) on a GPU with bf16 and
    on a CPU with bf16 dot products (cpu_has_fast_bf16), else 32-true; any other value is returned unchanged."""
    if precision != "auto":
        return precision
    if trains_on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def resolve_compile(compile: Optional[bool], accelerator: str = "auto") -> bool:
    """`bllama train --compile/--no-compile`, unset: compile the blocks on a GPU, not on a CPU. On an H100 the
    compiled 1.7B step is 3.9x the eager one (47,035 vs 12,136 tokens/s at sequence 1024, bench/RESULTS.md) and
    keeps a third of the activations. On a CPU it also pays (+37% on the tiny preset here, after ~12 s of compiling)
    but needs a C++ toolchain at run time, which a laptop may lack, so there it stays opt-in."""
    return compile if compile is not None else trains_on_gpu(accelerator)


def dataset_from_paths(paths: Sequence[str], tokenizer, max_length: int, sampling: str = "sequential",
                       text_field: str = "text"):
    """One packed dataset from text, parquet and JSONL files (one token stream, in the order given) and prepared
    token files (.bin)."""
    from torch.utils.data import ConcatDataset

    from ..data import PackedDataset, TokenDataset

    for p in paths:
        if Path(p).is_dir():  # it said "text file not found"
            raise ValueError(f"{p} is a folder: give its files (e.g. {Path(p) / '*.txt'}, expanded by the shell)")
    # All document files are packed into one stream: a dataset per file refused a run whose one small file was
    # shorter than a block ("corpus too short") and dropped the partial last block of every file.
    # A token file's JSON sidecar (`bllama train data/*` names both) is part of the token file, not a JSONL corpus:
    # it failed as "corpus.bin.json:1: invalid JSON".
    sidecar = {str(p) for p in paths if str(p).endswith(".bin.json") and Path(str(p)[:-len(".json")]).is_file()}
    bins = list(dict.fromkeys(str(p)[:-len(".json")] if str(p) in sidecar else str(p) for p in paths
                              if str(p).endswith(".bin") or str(p) in sidecar))
    docs = [p for p in paths if not str(p).endswith(".bin") and str(p) not in sidecar]
    parts = [PackedDataset.from_files(docs, tokenizer, max_length, text_field=text_field)] if docs else []
    for p in bins:
        parts.append(check_token_file(TokenDataset(p, max_length=max_length, sampling=sampling), tokenizer))
    if not parts:
        raise ValueError("no training data given")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def check_token_file(ds, tokenizer):
    """Refuse a token file made with another tokenizer than the run's (its sidecar names the vocabulary): the ids
    would mean other pieces, so the model would train on noise without a word, or fail mid-run on an id past its
    vocabulary."""
    from ..tokenizers.sentencepiece import tokenizer_checksum

    theirs, ours = ds.meta.get("tokenizer_checksum"), tokenizer_checksum(tokenizer)
    vocab = ds.meta.get("vocab_size")
    if vocab is not None and vocab != int(tokenizer.vocab_size):
        other = f"vocab {vocab}, this run's {tokenizer.vocab_size}"
    elif theirs and ours and theirs != ours:
        other = "the same vocabulary size, other pieces"
    else:
        return ds
    raise ValueError(f"{ds.path} was made by `bllama data prepare` with another tokenizer than this run's ({other}); "
                     "train with the tokenizer it was made with, or prepare it again with this one")


def make_trainer(out_dir: Path, max_steps: Optional[int] = None, max_minutes: Optional[float] = None,
                 precision: str = "auto", accelerator: str = "auto", devices="auto", strategy="auto",
                 val_every: Optional[int] = None, limit_val_batches=None, callbacks: Optional[List] = None,
                 enable_progress_bar: bool = True, log_every: int = 10, accumulate: int = 1,
                 activation_checkpointing: bool = False, sharding_strategy: str = "FULL_SHARD",
                 state_dict_type: str = "sharded", checkpoint_every: Optional[int] = None) -> pl.Trainer:
    """strategy="fsdp" builds make_fsdp_strategy(...) (the FSDP options apply only to it); any other strategy
    (a name such as "ddp", or a Strategy object) goes to Lightning unchanged. With FSDP, activation checkpointing is
    Lightning's per-block wrapper; with any other strategy set bLlamaConfig.activation_checkpointing instead."""
    # enable_version_counter=False: last.ckpt is overwritten, never joined by last-v1.ckpt. Lightning versions a name
    # it finds on disk unless its restored state says it wrote it, and that state is keyed by the options: a run
    # resumed with another --checkpoint-every or --val-every wrote last-v1.ckpt, and the next --resume last (and
    # export, and the "wrote last.ckpt" line) took the stale last.ckpt.
    ckpt = LastCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0 if val_every is None else 1,
                          monitor="val_loss" if val_every else None, every_n_train_steps=checkpoint_every,
                          enable_version_counter=False)
    kwargs = {}
    if val_every:
        kwargs.update(val_check_interval=val_every, check_val_every_n_epoch=None)
    if strategy == "fsdp":
        if accelerator == "cpu" or accelerator == "auto" and not torch.cuda.is_available():
            # Lightning refuses FSDPStrategy on CPUs ("The strategy `fsdp` requires a GPU accelerator") only by exact
            # type, which our subclass escapes; torch's FSDP would then fail inside fit ("FSDP needs a non-CPU
            # accelerator device"). Say it here, before any process is started.
            raise ValueError("strategy 'fsdp' needs GPUs (torch's FullyShardedDataParallel picks no CPU device); "
                             "use strategy 'ddp' on CPUs")
        strategy = make_fsdp_strategy(activation_checkpointing=activation_checkpointing,
                                      sharding_strategy=sharding_strategy, state_dict_type=state_dict_type)
    bar = progress_bar() if enable_progress_bar else None
    return pl.Trainer(
        default_root_dir=str(out_dir), max_steps=max_steps if max_steps else -1,
        max_epochs=None if max_steps or max_minutes else 1,
        max_time=timedelta(minutes=max_minutes) if max_minutes else None,
        precision=resolve_precision(precision, accelerator), accelerator=accelerator, devices=devices,
        strategy=strategy, accumulate_grad_batches=accumulate,
        logger=CSVLogger(str(out_dir), name="logs"), callbacks=[ckpt, *(callbacks or []), *([bar] if bar else [])],
        # AtomicCheckpointIO serves every single-file save (single device, DDP, FSDP full state dicts) and removes
        # old checkpoints (files or directories); sharded FSDP saves bypass it (BitFSDPStrategy makes those atomic).
        plugins=[AtomicCheckpointIO()], enable_progress_bar=enable_progress_bar, log_every_n_steps=log_every,
        limit_val_batches=limit_val_batches, num_sanity_val_steps=0, **kwargs)


def save_run_files(out_dir: Path, config: bLlamaConfig, tokenizer) -> None:
    from .run_tokenizer import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2))
    if hasattr(tokenizer, "save"):
        tokenizer.save(out_dir / "tokenizer.model")


def run(out_dir: Path, model: bLlama, tokenizer, datamodule, resume: Optional[str] = None,
        **trainer_options) -> pl.Trainer:
    """The one training loop behind `bllama train` and the demo: writes the run folder's config.json and
    tokenizer.model, then fits `model` on `datamodule` with make_trainer(out_dir, **trainer_options) (checkpoints in
    out_dir/checkpoints), from the checkpoint `resume` if given. Returns the trainer. Ctrl-C or kill stops after the
    step under way with last.ckpt written (StopOnSignal) and raises Interrupted, whose detail names the checkpoint."""
    save_run_files(out_dir, model.config, tokenizer)
    stop = StopOnSignal()
    trainer = make_trainer(out_dir, **{**trainer_options, "callbacks": [*(trainer_options.get("callbacks") or []),
                                                                         stop]})
    on_main = threading.current_thread() is threading.main_thread()
    handlers = {signum: signal.getsignal(signum) for signum in NAMES} if on_main else {}
    try:
        trainer.fit(model, datamodule, ckpt_path=resume)
    except SystemExit:  # Lightning ends a KeyboardInterrupt with sys.exit(1): say which signal, and what was kept
        if stop.interrupt is None and stop.signum is None:
            raise
        signum = stop.signum or stop.interrupt.signum
        raise Interrupted(signum, _kept(trainer, out_dir, stopped=False)) from None
    finally:  # Lightning restores them only where it had installed its own (and sets SIGINT ignored on Ctrl-C)
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    if stop.signum is not None:
        raise Interrupted(stop.signum, _kept(trainer, out_dir, stopped=True))
    return trainer


def _kept(trainer: pl.Trainer, out_dir: Path, stopped: bool) -> str:
    """What an interrupted run left: the step its last.ckpt holds, or that there is none."""
    ckpt = trainer.checkpoint_callback
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    step = getattr(ckpt, "_last_global_step_saved", 0) if ckpt is not None else 0
    if stopped and step == trainer.global_step and step > 0:
        return f"stopped after step {step} and wrote {last}"
    if step > 0:
        return f"stopped in step {trainer.global_step + 1}; {last} holds step {step}"
    if last.exists():
        try:
            held = f" (step {torch.load(last, map_location='cpu', weights_only=True, mmap=True)['global_step']})"
        except Exception:  # noqa: BLE001 - only a detail of the message
            held = ""
        return f"stopped before this run wrote a checkpoint; {last} is the earlier one{held}"
    return "stopped before the first checkpoint: nothing to resume from"


def resume_checkpoint(out_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint that --resume names, or None for a fresh start ('last' in a folder with no checkpoint yet)."""
    if resume is None:
        return None
    path = Path(out_dir) / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.exists():
        if resume == "last":
            return None
        raise FileNotFoundError(f"--resume: checkpoint not found: {path}")
    return path


def check_resume(path: Path, config: bLlamaConfig, tokenizer) -> None:
    """Refuse to resume a checkpoint of another shape or tokenizer before anything is written: Lightning failed with
    a size-mismatch traceback after config.json and tokenizer.model had been overwritten (the run folder then
    described a model its checkpoint is not), and another tokenizer of the same size resumed without a word."""
    from ..model.config import SHAPE_FIELDS
    from ..tokenizers.sentencepiece import tokenizer_checksum
    from .run_tokenizer import load_run_tokenizer

    try:  # mmap: only the small hyper-parameters are read, not the weights and optimizer state
        ckpt = torch_load_data(path / "meta.pt") if path.is_dir() else \
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(_refusal(path, "checkpoint", e)) from None
    except RuntimeError as e:
        raise ValueError(f"--resume: {path} is not a complete checkpoint ({str(e).splitlines()[0]})") from None
    saved, now = (ckpt.get("hyper_parameters") or {}).get("config") or {}, config.to_dict()
    diff = [f"{k}={saved[k]!r} (this run: {now.get(k)!r})" for k in SHAPE_FIELDS if k in saved and saved[k] != now.get(k)]
    if diff:
        raise ValueError(f"--resume: {path} holds a model with {', '.join(diff)}; resume with the run's settings "
                         "or start a new --out")
    try:
        theirs = tokenizer_checksum(load_run_tokenizer(path)[0])
    except FileNotFoundError:
        return
    ours = tokenizer_checksum(tokenizer)
    if theirs and ours and theirs != ours:
        raise ValueError(f"--resume: {path} was trained with another tokenizer than this run's (the run folder's "
                         "tokenizer); resume with that one (or without --tokenizer) or start a new --out")


def is_sharded_checkpoint(path) -> bool:
    """A directory written by FSDPStrategy(state_dict_type="sharded"): torch.distributed.checkpoint shards plus
    Lightning's meta.pt."""
    path = Path(path)
    return path.is_dir() and (path / "meta.pt").is_file() and (path / ".metadata").is_file()


def load_sharded_checkpoint(path) -> bLlama:
    """A bLlama (on the CPU, in one process) from a sharded FSDP checkpoint directory.

    Only the model weights are read (torch.distributed.checkpoint loads into the tensors of a freshly built model;
    no process group is needed); the optimizer state, three times the size of the model, stays on disk.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    meta = torch_load_data(path / "meta.pt", "sharded checkpoint's meta.pt")
    model = bLlama(meta["hyper_parameters"]["config"])
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict(state["model"])
    return model


def load_checkpoint(path) -> bLlama:
    """A bLlama from a Lightning checkpoint written by bllama train (or any bLlama checkpoint): a .ckpt file, a
    sharded FSDP checkpoint directory, or a training output folder (its checkpoints/last.ckpt, file or directory)."""
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        cand = path / "checkpoints" / "last.ckpt"
        if not cand.exists():
            raise FileNotFoundError(f"no checkpoints/last.ckpt under {path}")
        path = cand
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            raise FileNotFoundError(f"{path} is a directory but not a sharded checkpoint (no meta.pt and .metadata)")
        return load_sharded_checkpoint(path)
    if not zipfile.is_zipfile(path):  # torch.save's format; anything else failed deep in the unpickler (KeyError: 105)
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip without its directory at the end
                raise ValueError(f"{path} is not a complete checkpoint (truncated: the zip archive has no end)")
        raise ValueError(f"{path} is not a model: give a .gguf file, a Hugging Face folder or a bllama training "
                         "checkpoint (a .ckpt file or a run folder)")
    try:
        return bLlama.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(_refusal(path, "checkpoint", e)) from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):
            raise
        raise ValueError(f"{path} is not a complete checkpoint (truncated or damaged: {str(e).splitlines()[0]})") \
            from None


def tokenizer_beside(checkpoint_path):
    """The tokenizer that bllama train wrote next to its checkpoints: tokenizer.model, or the tokenizer.json of a run
    started from a byte-level BPE checkpoint (--init-from a LLaMA-3 / BitNet 2B4T folder)."""
    from .run_tokenizer import load_run_tokenizer

    return load_run_tokenizer(checkpoint_path)[0]
