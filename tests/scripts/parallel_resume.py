"""Run by tests/test_training.py: interrupted-and-resumed training must continue exactly like an uninterrupted run,
on 2 CPU processes (gloo), through make_trainer and Lightning's own checkpointing.

    python parallel_resume.py ddp|fsdp OUT_DIR [gpu [compile]]

With "gpu" (bench/gpu_train_check.sh): the same fits on the GPUs of the machine (devices = $DEVICES, default 1) in
bf16-mixed, with the real BitFSDPStrategy; "compile" adds per-block torch.compile. GPU kernels are not bitwise
deterministic, so there the printed differences are to be read, not asserted to be zero.

Fits of the same STEPS-step schedule on a resumable TextDataModule (what `bllama train` uses; the corpus is
shorter than the run, so the run crosses passes over the data):
  A: all STEPS steps straight.
  B: checkpoints every 2 steps and crashes before step 6 (an exception in both ranks); C resumes B's last.ckpt
     (written at step 4, mid-pass, by ModelCheckpoint(every_n_train_steps)) to the end.
  D: checkpoints every 2 steps, stops at max_steps=3 (LastCheckpoint writes last.ckpt at step 3); E resumes it
     with max_steps=STEPS.
Rank 0 writes the per-step losses and the final weights, read back from the checkpoints with
bllama.train.trainer.load_checkpoint (a sharded checkpoint directory for fsdp), to OUT_DIR/result.pt.

fsdp on CPU: Lightning's accelerator connector refuses `FSDPStrategy` on a CPU accelerator, but only by exact type
(our BitFSDPStrategy subclass passes), and torch's FullyShardedDataParallel refuses to pick a device by itself on a
machine without an accelerator ("FSDP needs a non-CPU accelerator device, but no accelerator device is detected")
although it runs on CPU tensors with gloo when given device_id=cpu. Lightning passes device_id=root_device.index,
None for a CPU, so this test-only subclass hands FSDP the CPU device. Everything else (per-block wrapping,
activation-checkpoint wrappers, sharded torch.distributed.checkpoint saves, sharded resume of weights, optimizer and
LR schedule) is Lightning's and ours unchanged.
"""
import contextlib
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from bllama import bLlama, bLlamaConfig
from bllama.data import PackedDataset, TextDataModule
from bllama.train.trainer import BitFSDPStrategy, load_checkpoint, make_fsdp_strategy, make_trainer



@contextlib.contextmanager
def fsdp_device_cpu():
    import torch.distributed.fsdp._init_utils as init_utils
    import torch.distributed.fsdp.fully_sharded_data_parallel as fsdp_mod

    original = fsdp_mod._init_device_handle

    def on_cpu(state, module, ignored_params, device_id):
        return original(state, module, ignored_params, torch.device("cpu") if device_id is None else device_id)

    fsdp_mod._init_device_handle = init_utils._init_device_handle = on_cpu
    try:
        yield
    finally:
        fsdp_mod._init_device_handle = init_utils._init_device_handle = original


class CPUFSDPStrategy(BitFSDPStrategy):
    def _setup_model(self, model):
        with fsdp_device_cpu():
            return super()._setup_model(model)


STEPS = 7
BATCH = 2
BLOCKS = 10  # training blocks: 2 ranks x 2 per step -> a pass every 2.5 steps


class RecordLoss(pl.Callback):
    def __init__(self, crash_at=None):
        self.losses, self.crash_at = [], crash_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.crash_at:
            raise Crash(f"simulated crash before step {self.crash_at + 1}")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class Crash(RuntimeError):
    pass


def cfg():
    return bLlamaConfig(vocab_size=64, seq_len=32, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2,
                        ffn_size=128, batch_size=BATCH, warmup_steps=2, max_steps=STEPS)


GPU = False
COMPILE = False


def fit(kind, out: Path, max_steps: int, resume=None, crash_at=None, checkpoint_every=None):
    c = cfg()
    torch.manual_seed(0)  # the same initial weights in every fit (and on both ranks)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, c.vocab_size, (BLOCKS * c.seq_len + 1,), generator=g).numpy()
    dm = TextDataModule(PackedDataset(tokens, max_length=c.seq_len), batch_size=BATCH, train_test_split=1.0, seed=0,
                        resumable=True)
    if kind == "fsdp":
        # what make_trainer(strategy="fsdp", activation_checkpointing=True) builds, with the CPU device above
        strategy = make_fsdp_strategy(activation_checkpointing=True, cls=BitFSDPStrategy if GPU else CPUFSDPStrategy)
    else:
        strategy = kind
    rec = RecordLoss(crash_at)
    trainer = make_trainer(out, max_steps=max_steps, accelerator="gpu" if GPU else "cpu",
                           devices=int(os.environ.get("DEVICES", "1")) if GPU else 2, strategy=strategy,
                           precision="bf16-mixed" if GPU else "32-true", callbacks=[rec], enable_progress_bar=False,
                           limit_val_batches=0, checkpoint_every=checkpoint_every)
    model = bLlama(c)
    if COMPILE:
        model.compile_blocks()
    try:
        trainer.fit(model, dm, ckpt_path=resume)
    except Crash:
        pass
    kinds = {type(m).__name__ for m in trainer.model.modules()}
    return trainer, rec.losses, kinds


def main(kind: str, out: str):
    out = Path(out)
    last = lambda run: out / run / "checkpoints" / "last.ckpt"  # noqa: E731
    ta, la, kinds = fit(kind, out / "a", STEPS)
    tb, lb, _ = fit(kind, out / "b", STEPS, crash_at=5, checkpoint_every=2)
    step_b = torch.load(last("b") / "meta.pt" if last("b").is_dir() else last("b"), map_location="cpu",
                        weights_only=False)["global_step"]
    tc, lc, _ = fit(kind, out / "c", STEPS, resume=str(last("b")))
    td, ld, _ = fit(kind, out / "d", 3, checkpoint_every=2)  # stops between periodic checkpoints
    te, le, _ = fit(kind, out / "e", STEPS, resume=str(last("d")))
    if ta.global_rank == 0:
        w = {run: load_checkpoint(out / run).state_dict() for run in "acde"}
        torch.save({"losses": {"a": la, "b": lb, "c": lc, "d": ld, "e": le}, "weights": w,
                    "steps": {"a": ta.global_step, "b_checkpoint": step_b, "c": tc.global_step, "d": td.global_step,
                              "e": te.global_step},
                    "module_types": sorted(kinds), "ckpt_is_dir": last("b").is_dir(),
                    "leftovers": sorted(p.name for p in (out / "c" / "checkpoints").iterdir())},
                   out / "result.pt")
        diff = lambda run: max(float((w[run][k].float() - w["a"][k].float()).abs().max()) for k in w["a"])  # noqa
        print("RESUME_SUMMARY " + json.dumps({
            "strategy": kind, "gpu": GPU, "compile": COMPILE, "world_size": ta.world_size,
            "steps": [ta.global_step, step_b, tc.global_step, td.global_step, te.global_step],
            "max_weight_diff_crash_resume": diff("c"), "max_weight_diff_extend": diff("e"),
            "max_loss_diff": max(abs(x - y) for x, y in zip(lb + lc[1:], la)) if lc else None,
            "losses_uninterrupted": [round(v, 4) for v in la], "losses_resumed": [round(v, 4) for v in lc],
            "checkpoint_is_directory": last("b").is_dir(), "module_types": sorted(kinds)}), flush=True)


if __name__ == "__main__":
    GPU = "gpu" in sys.argv[3:]
    COMPILE = "compile" in sys.argv[3:]
    main(sys.argv[1], sys.argv[2])
