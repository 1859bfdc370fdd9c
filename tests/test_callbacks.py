"""WeightDistributionCallback with a tiny fake model (independent of bllama.model)."""

import os
import struct

import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

from bllama.train.callbacks import WeightDistributionCallback, plot_ternary_distribution, ternary_fractions  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeBitLinear(nn.Linear):
    def ternary_codes(self) -> torch.Tensor:
        w = self.weight
        s = w.abs().mean().clamp(min=1e-5)
        return (w / s).round().clamp(-1, 1).to(torch.int8)


class FakeBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj = FakeBitLinear(d, d, bias=False)
        self.down_proj = FakeBitLinear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)  # no ternary_codes: must be ignored


class FakeModule(pl.LightningModule):
    def __init__(self, d=8, n_layers=3):
        super().__init__()
        self.layers = nn.ModuleList(FakeBlock(d) for _ in range(n_layers))
        self.head = nn.Linear(d, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        for blk in self.layers:
            x = x + blk.down_proj(torch.relu(blk.q_proj(blk.norm(x))))
        return self.head(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == PNG_MAGIC, "not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _trainer(tmp_path, cb, steps):
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, callbacks=[cb], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path))


def _loader(n=12):
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 8))
    return torch.utils.data.DataLoader(ds, batch_size=2)


def test_fractions_found_by_duck_typing():
    torch.manual_seed(0)
    m = FakeModule(n_layers=2)
    fr = ternary_fractions(m)
    assert list(fr) == ["layers.0.q_proj", "layers.0.down_proj", "layers.1.q_proj", "layers.1.down_proj"]
    for name, (neg, zero, pos) in fr.items():
        assert neg + zero + pos == pytest.approx(1.0)
        codes = m.get_submodule(name).ternary_codes()
        assert zero == pytest.approx((codes == 0).float().mean().item())
        assert neg > 0 and pos > 0


def test_fractions_reject_non_ternary():
    class Bad(nn.Module):
        def ternary_codes(self):
            return torch.tensor([0, 1, 2], dtype=torch.int8)

    with pytest.raises(ValueError, match="outside"):
        ternary_fractions(nn.Sequential(Bad()))


def test_callback_writes_png_every_n_steps(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "plots"
    cb = WeightDistributionCallback(every_n_steps=2, out_dir=str(out))
    _trainer(tmp_path, cb, steps=5).fit(FakeModule(), _loader())
    files = sorted(os.listdir(out))
    # steps 2 and 4, plus the final step 5 at the end of training
    assert files == ["ternary_step0000002.png", "ternary_step0000004.png", "ternary_step0000005.png"]
    for f in files:
        w, h = _png_size(out / f)
        assert 300 <= w <= 4000 and 150 <= h <= 4000
        assert (out / f).stat().st_size > 2000
    assert cb.written == [str(out / f) for f in files]
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert f"wrote {out / files[0]}" in said


def test_callback_no_end_plot_and_no_duplicates_with_accumulation(tmp_path):
    out = tmp_path / "plots"
    cb = WeightDistributionCallback(every_n_steps=1, out_dir=str(out), on_train_end=False)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=2, default_root_dir=str(tmp_path))
    trainer.fit(FakeModule(), _loader())
    assert sorted(os.listdir(out)) == ["ternary_step0000001.png", "ternary_step0000002.png"]
    assert len(cb.written) == 2


def test_plot_is_readable_for_a_big_model(tmp_path):
    # 24 layers x 7 projections: one row per projection type, so height grows with 7 rows, not 168.
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    fr = {f"model.layers.{i}.{'self_attn' if n[0] in 'qkvo' else 'mlp'}.{n}": (0.3, 0.4, 0.3)
          for i in range(24) for n in names}
    path = plot_ternary_distribution(fr, str(tmp_path / "big.png"), title="t")
    w, h = _png_size(path)
    assert w >= 600 and h <= 1400
    assert not any(p.endswith(".tmp.png") for p in os.listdir(tmp_path))


def test_invalid_every_n_steps():
    with pytest.raises(ValueError):
        WeightDistributionCallback(every_n_steps=0)


def test_progress_bar_of_a_step_bounded_run_has_no_negative_epoch_count(tmp_path, monkeypatch):
    """Lightning's rich bar printed "Epoch 0/-2" for a run bounded by steps (max_epochs -1) (issue #19 item 6)."""
    import bllama.train.progress as progress
    from bllama.train.trainer import make_trainer

    monkeypatch.setattr(progress, "_interactive", lambda: True)  # the rich bar is the terminal's

    trainer = make_trainer(tmp_path, max_steps=5, accelerator="cpu")
    bar = trainer.progress_bar_callback
    bar.setup(trainer, None, "fit")
    trainer.fit_loop.max_epochs = -1  # what fit() makes of max_epochs=None with a step limit (_parse_loop_limits)
    assert "/-" not in bar._get_train_description(0) and "Epoch 0" in bar._get_train_description(0)
    one = make_trainer(tmp_path, accelerator="cpu")  # one epoch: the limit is still shown
    one.progress_bar_callback.setup(one, None, "fit")
    assert one.progress_bar_callback._get_train_description(0).strip() == "Epoch 0/0"


def test_a_run_logged_to_a_file_prints_progress_lines(tmp_path, monkeypatch):
    """Where stdout is no terminal (`bllama train ... > log`, nohup, a scheduler) rich's bar drew nothing until the
    run ended: hours without a line. There it prints plain, flushed lines instead."""
    import io

    import pytorch_lightning as pl
    import torch

    import bllama.train.progress as progress
    from bllama import bLlama, bLlamaConfig
    from bllama.data import PackedDataset, TextDataModule
    from bllama.train.trainer import make_trainer

    monkeypatch.setattr(progress, "_interactive", lambda: False)
    assert isinstance(progress.progress_bar(), progress.LineProgress)
    cfg = bLlamaConfig(vocab_size=64, seq_len=16, hidden_size=32, num_heads=2, num_layers=1, ffn_size=64,
                       batch_size=2, warmup_steps=1, max_steps=4)
    tokens = torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(0)).numpy()
    dm = TextDataModule(PackedDataset(tokens, max_length=16), batch_size=2, seed=0, resumable=True)
    out = io.StringIO()
    trainer = make_trainer(tmp_path, max_steps=4, accelerator="cpu", val_every=2, limit_val_batches=1,
                           accumulate=2)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, progress.LineProgress)
    bar.stream, bar.every_s = out, 0
    trainer.fit(bLlama(cfg), dm)
    lines = out.getvalue().splitlines()
    assert lines[0] == "training: step 0 of 4; a line every 0 s"
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split(",")[0] for s in steps] == ["step 1/4 (25.0%)", "step 2/4 (50.0%)", "step 3/4 (75.0%)",
                                                "step 4/4 (100.0%)"]  # once per optimizer step, not micro-batch
    assert "train_loss" in steps[-1] and "elapsed" in steps[-1] and "left" in steps[0]
    assert sum(line.startswith("validation at step 2: val_loss") for line in lines) == 1
    assert lines[-1].startswith("end: step 4/4 (100.0%)")
    assert isinstance(pl.Trainer(logger=False).progress_bar_callback, pl.callbacks.ProgressBar)  # untouched
