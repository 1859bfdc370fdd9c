import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from bllama import bLlama, bLlamaConfig
from bllama.train.module import lr_multiplier, stage2_start
from bllama.train.trainer import (AtomicCheckpointIO, BitFSDPStrategy, load_checkpoint, make_fsdp_strategy, make_trainer,
                          resolve_compile, resolve_precision)
from micro_training import micro_cfg, random_dm

ROOT = Path(__file__).resolve().parents[1]


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



def test_a_run_resumed_with_other_checkpoint_options_still_writes_last_ckpt(tmp_path):
    """Lightning keys its checkpoint callback's state by the options and versions a file name it finds on disk but
    not in that state: a run resumed with another --checkpoint-every or --val-every wrote last-v1.ckpt, and
    last.ckpt (what --resume last and export read, and what `bllama train` said it wrote) kept the old step."""
    cfg = micro_cfg(max_steps=2)
    make_trainer(tmp_path, max_steps=2, accelerator="cpu", devices=1, enable_progress_bar=False).fit(
        bLlama(cfg), random_dm(cfg))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    cfg = micro_cfg(max_steps=4)
    make_trainer(tmp_path, max_steps=4, accelerator="cpu", devices=1, enable_progress_bar=False, checkpoint_every=1,
                 val_every=3, limit_val_batches=1).fit(bLlama(cfg), random_dm(cfg), ckpt_path=str(last))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    assert not list(last.parent.glob("last-v*.ckpt"))

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


def test_fsdp_strategy_is_configured_per_block_but_needs_a_gpu(tmp_path):
    from pytorch_lightning.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    from bllama.model.transformer import Block

    # Lightning's own FSDPStrategy refuses CPU accelerators outright.
    s = FSDPStrategy(auto_wrap_policy=bLlama.fsdp_wrap_policy(), activation_checkpointing_policy={Block})
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(accelerator="cpu", devices=2, strategy=s)
    # make_trainer(strategy="fsdp") builds ours: one FSDP unit and (when asked) one checkpointed unit per block,
    # sharded checkpoints, fp32 parameters inside FSDP (bf16 only through autocast).
    f = make_fsdp_strategy(activation_checkpointing=True, sharding_strategy="SHARD_GRAD_OP")
    assert isinstance(f, BitFSDPStrategy)
    assert f.kwargs["auto_wrap_policy"]._module_classes == {Block} and f.kwargs["use_orig_params"]
    assert f._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert f.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP and f._state_dict_type == "sharded"
    assert f.mixed_precision.param_dtype == f.mixed_precision.reduce_dtype == torch.float32
    assert make_fsdp_strategy()._activation_checkpointing_kwargs == {}
    with pytest.raises(ValueError, match="sharding_strategy"):
        make_fsdp_strategy(sharding_strategy="ZERO3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs GPUs"):
            make_trainer(tmp_path, strategy="fsdp", accelerator="auto", devices=2)


def test_compile_defaults_to_on_for_gpus_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_compile(None, "auto") is False and resolve_compile(None, "cpu") is False
    assert resolve_compile(None, "gpu") is True
    assert resolve_compile(True, "cpu") is True and resolve_compile(False, "gpu") is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_compile(None, "auto") is True and resolve_compile(None, "cpu") is False


def test_precision_auto_is_bf16_mixed_where_bf16_is_fast(monkeypatch):
    from bllama.train import trainer

    assert resolve_precision("32-true", "gpu") == "32-true" and resolve_precision("32-true", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for fast, want in ((True, "bf16-mixed"), (False, "32-true")):  # a CPU with or without bf16 dot products
        monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: fast)
        assert resolve_precision("auto", "cpu") == resolve_precision("auto", "auto") == want
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "gpu") == resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "gpu") == "32-true"


def _loss_grads_and_counts(cfg, x, **autocast):
    torch.manual_seed(0)
    model = bLlama(cfg).model.train()
    calls = []
    for block in model.layers:
        # a pre-hook: recomputation stops early once the saved tensors are rebuilt, so forward hooks may not fire
        block.register_forward_pre_hook(lambda *args: calls.append(1))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", **autocast):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float().view(-1, cfg.vocab_size), x.view(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), grads, len(calls), sum(saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_checkpointing_same_gradients_less_saved_memory(dtype):
    x = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    autocast = dict(dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    loss0, g0, calls0, saved0 = _loss_grads_and_counts(micro_cfg(num_layers=3), x, **autocast)
    loss1, g1, calls1, saved1 = _loss_grads_and_counts(micro_cfg(num_layers=3, activation_checkpointing=True), x,
                                                       **autocast)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-7, msg=n)
    assert calls0 == 3 and calls1 == 6  # every block ran again in the backward pass
    assert saved1 < saved0 / 4, (saved0, saved1)  # only block inputs (and the head's tensors) are kept
    # not when nothing needs gradients
    m = bLlama(micro_cfg(num_layers=3, activation_checkpointing=True)).model.train()
    calls = []
    for block in m.layers:
        block.register_forward_pre_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        m(x)
    assert len(calls) == 3


def test_compiled_blocks_keep_state_dict_and_gradients():
    cfg = micro_cfg(num_layers=2, activation_checkpointing=True)
    x = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    eager = bLlama(cfg)
    torch.manual_seed(0)
    compiled = bLlama(cfg)
    compiled.compile_blocks(backend="aot_eager", fullgraph=True)  # fullgraph: fails on any graph break in a block
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for m in (eager, compiled):
        m.train()
        torch.nn.functional.cross_entropy(m(x).view(-1, 64), x.view(-1)).backward()
    for (n, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_processes_resume_exactly(tmp_path, strategy):
    """tests/scripts/parallel_resume.py: a crashed run resumed from its mid-run checkpoint (C) and a finished short
    run extended (E) end with the weights of the uninterrupted run (A), step for step the same losses. fsdp: sharded
    checkpoint directories (torch.distributed.checkpoint), per-block FSDP units and activation checkpointing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "parallel_resume.py"), strategy,
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = torch.load(tmp_path / "result.pt", weights_only=False)
    L, W = res["losses"], res["weights"]
    assert res["steps"] == {"a": 7, "b_checkpoint": 4, "c": 7, "d": 3, "e": 7}
    assert L["b"] == L["a"][:5] and L["c"] == L["a"][4:] and L["d"] == L["a"][:3] and L["e"] == L["a"][3:]
    assert L["a"][-1] < L["a"][0]
    for run in "ce":
        for k in W["a"]:
            assert torch.equal(W[run][k], W["a"][k]), (run, k)
    assert any(not torch.equal(W["d"][k], W["a"][k]) for k in W["a"])  # 3 steps are not 7
    fsdp = strategy == "fsdp"
    assert res["ckpt_is_dir"] == fsdp  # sharded checkpoints are directories
    assert ("FullyShardedDataParallel" in res["module_types"]) == fsdp
    assert ("CheckpointWrapper" in res["module_types"]) == fsdp
    assert res["leftovers"] == ["last.ckpt"]  # no temporary or old checkpoint left behind


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


def _throughput_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_throughput_bench_reports_json_and_out_of_memory(tmp_path, monkeypatch, capsys):
    import json

    tt = _throughput_module()
    # the stated FLOPs formula for the default 1.7B model at sequence 2048: 6 x matmul parameters + attention
    cfg = bLlamaConfig(seq_len=2048)
    n_matmul = 24 * (4 * 2048 * 2048 + 3 * 2048 * 8192) + 32000 * 2048
    assert tt.flops_per_token(cfg) == 6 * n_matmul + 12 * 24 * 2048 * 2048
    out = tmp_path / "r.json"
    args = ["--preset", "tiny", "--layers", "2", "--seq-len", "64", "--batch", "4", "--accum", "2", "--steps", "6",
            "--warmup", "1", "--lr-warmup", "2", "--precision", "bf16-mixed", "--activation-checkpointing",
            "--json", str(out)]
    assert tt.main(args) == 0
    r = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == r
    assert r["tokens_per_step"] == 4 * 2 * 64 and r["steps_run"] == 6 and r["steps_timed"] == 5
    assert r["precision"] == "bf16" and r["activation_checkpointing"] and r["tokens_per_s"] > 0
    assert r["loss_end"] < r["loss_start"] - 0.3, r["losses"]  # the byte-level corpus is learnable

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("bllama.model.transformer.Transformer.forward", oom)
    assert tt.main(args[:-1] + [str(tmp_path / "oom.json")]) == 3
    r = json.loads((tmp_path / "oom.json").read_text())
    assert r["error"] == "oom" and "out of memory" in r["message"] and r["seq_len"] == 64
