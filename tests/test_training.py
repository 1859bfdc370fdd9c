import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from bllama import bLlama, bLlamaConfig
from bllama.data import PackedDataset, TextDataModule
from bllama.module import lr_multiplier, stage2_start
from bllama.train import AtomicCheckpointIO, load_checkpoint, make_trainer

ROOT = Path(__file__).resolve().parents[1]


def micro_cfg(**kw):
    base = dict(vocab_size=64, seq_len=32, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2,
                ffn_size=128, batch_size=4, warmup_steps=2, max_steps=20)
    return bLlamaConfig(**{**base, **kw})


def random_dm(cfg, n=3000):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (n,), generator=g).numpy()
    return TextDataModule(PackedDataset(tokens, max_length=cfg.seq_len), batch_size=cfg.batch_size, seed=0)


def test_schedules():
    c = micro_cfg(warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, c) == pytest.approx(0.1)
    assert lr_multiplier(9, c) == pytest.approx(1.0)
    assert lr_multiplier(110, c) == pytest.approx(0.1)
    assert lr_multiplier(60, c) == pytest.approx(0.55)
    t = micro_cfg(warmup_steps=10, max_steps=110, schedule="two_stage", lr=1.5e-3, min_lr_ratio=0.1)
    mid = stage2_start(t)
    before, after = lr_multiplier(mid - 1, t), lr_multiplier(mid, t)
    assert after < before * 0.7  # the peak drops from 1.5e-3 to 1e-3 at mid-run
    assert after == pytest.approx(2 / 3 * (1 - 0.9 * (mid - 10) / 100))


def test_two_stage_turns_weight_decay_off(tmp_path):
    cfg = micro_cfg(schedule="two_stage", max_steps=6)
    model = bLlama(cfg)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["weight_decay"]))

    pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               limit_val_batches=0, callbacks=[Spy()]).fit(model, random_dm(cfg))
    assert [wd for step, wd in seen if step <= 3] == [0.1] * 3
    assert all(wd == 0.0 for step, wd in seen if step > 3)


def test_bf16_mixed_trains_and_checkpoint_resumes(tmp_path):
    cfg = micro_cfg()
    model = bLlama(cfg)
    dm = random_dm(cfg)
    trainer = make_trainer(tmp_path, max_steps=4, precision="bf16-mixed", accelerator="cpu", devices=1,
                           enable_progress_bar=False)
    trainer.fit(model, dm)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and not list((tmp_path / "checkpoints").glob(".*.tmp"))
    assert torch.isfinite(trainer.callback_metrics["train_loss"])

    resumed = bLlama(cfg)
    t2 = make_trainer(tmp_path / "b", max_steps=7, precision="bf16-mixed", accelerator="cpu", devices=1,
                      enable_progress_bar=False)
    t2.fit(resumed, dm, ckpt_path=str(ckpt))
    assert t2.global_step == 7
    loaded = load_checkpoint(ckpt)
    assert loaded.config == cfg
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_atomic_checkpoint_leaves_old_file_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "c.ckpt"
    io.save_checkpoint({"a": torch.ones(3)}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        io.save_checkpoint({"a": Boom()}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def test_tiny_preset_learns_tinyshakespeare(trained_tiny):
    """Learning evidence: a short run (120 steps, see conftest.trained_tiny) must cut validation loss far below
    its start, ~ln(384) = 5.95 for an untrained model. Broken gradients, quantization or data would keep it high."""
    start, end = trained_tiny["start_loss"], trained_tiny["end_loss"]
    assert start > 5.5
    assert end < start - 1.5, (start, end)


def test_fsdp_strategy_is_configured_per_block_but_needs_a_gpu():
    # Lightning's FSDPStrategy refuses CPU accelerators, so FSDP training itself only runs on a GPU machine;
    # what can be checked here is the per-block wrapping the module asks for.
    from pytorch_lightning.strategies import FSDPStrategy
    from bllama.model import Block

    s = FSDPStrategy(auto_wrap_policy=bLlama.fsdp_wrap_policy(), activation_checkpointing_policy={Block})
    assert bLlama.fsdp_wrap_policy() == {Block} and s is not None
    with pytest.raises(ValueError, match="GPU"):
        pl.Trainer(accelerator="cpu", devices=2, strategy=s)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp"])
def test_two_cpu_processes_end_with_identical_weights(tmp_path, strategy):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "parallel_train.py"), strategy,
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = bLlama(micro_cfg()).state_dict()
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    moved = [k for k in a if k in init and a[k].shape == init[k].shape and not torch.equal(a[k], init[k])]
    assert len(moved) > 10  # the weights trained
