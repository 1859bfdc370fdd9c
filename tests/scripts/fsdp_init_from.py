"""Run by tests/test_finetune.py: `bllama train --init-from CHECKPOINT --strategy fsdp` on 2 CPU processes (gloo).

    python fsdp_init_from.py CHECKPOINT DATA OUT [CLI ARGS...]

The real CLI path (bllama.cli.main): every rank reads the checkpoint with load_pretrained, Lightning's FSDPStrategy
(our BitFSDPStrategy with its per-block units and sharded checkpoints) shards the loaded weights, trains, and writes
a sharded checkpoint directory. Two test-only changes, both from tests/scripts/parallel_resume.py, let that run on a
CPU: make_trainer is handed the CPU-capable subclass (CPUFSDPStrategy, gloo) where the CLI asks for "fsdp", and its
GPU-only refusal is skipped. Lightning's launcher re-runs this script in the second process, so both ranks patch.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bllama.train.trainer as trainer_mod  # noqa: E402
from parallel_resume import CPUFSDPStrategy  # noqa: E402

make_trainer = trainer_mod.make_trainer


def make_trainer_on_cpu(out_dir, strategy="auto", activation_checkpointing=False, sharding_strategy="FULL_SHARD",
                        state_dict_type="sharded", **kwargs):
    if strategy == "fsdp":
        strategy = trainer_mod.make_fsdp_strategy(activation_checkpointing, sharding_strategy, state_dict_type,
                                                  cls=CPUFSDPStrategy, process_group_backend="gloo")
    return make_trainer(out_dir, strategy=strategy, **kwargs)


trainer_mod.make_trainer = make_trainer_on_cpu

if __name__ == "__main__":
    from bllama.cli import main

    ckpt, data, out, *rest = sys.argv[1:]
    main(["train", data, "--init-from", ckpt, "--out", out, "--strategy", "fsdp", "--accelerator", "cpu",
          "--devices", "2", "--precision", "32-true", "--num-workers", "0", "--no-compile", *rest])
