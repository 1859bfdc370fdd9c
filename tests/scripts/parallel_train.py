"""Run by tests/test_training.py: trains a tiny model for a few steps under a Lightning strategy on 2 CPU
processes (gloo) and saves each rank's final weights, so the test can check the ranks agree."""
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from bllama import bLlama, bLlamaConfig
from bllama.data import PackedDataset, TextDataModule


class SaveWeights(pl.Callback):
    def __init__(self, out):
        self.out = Path(out)

    def on_train_end(self, trainer, module):
        # FSDP shards parameters: gather a full state dict on every rank through the strategy.
        state = trainer.strategy.lightning_module_state_dict() if trainer.world_size > 1 else module.state_dict()
        torch.save({k: v.detach().clone() for k, v in state.items()}, self.out / f"rank{trainer.global_rank}.pt")


def main(strategy: str, out: str):
    torch.manual_seed(0)
    cfg = bLlamaConfig(vocab_size=64, seq_len=32, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2,
                       ffn_size=128, batch_size=4, warmup_steps=2, max_steps=6)
    tokens = torch.randint(0, 64, (4000,)).numpy()
    dm = TextDataModule(PackedDataset(tokens, max_length=cfg.seq_len), batch_size=cfg.batch_size, seed=0)
    if strategy == "fsdp":
        from pytorch_lightning.strategies import FSDPStrategy

        strategy = FSDPStrategy(auto_wrap_policy=bLlama.fsdp_wrap_policy(), process_group_backend="gloo")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                         callbacks=[SaveWeights(out)])
    trainer.fit(bLlama(cfg), dm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
