"""A micro model and a random-token data module for the training tests (test_training, test_interrupt)."""
import torch

from bllama import bLlamaConfig
from bllama.data import PackedDataset, TextDataModule

MICRO = dict(vocab_size=64, seq_len=32, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2, ffn_size=128,
             batch_size=4, warmup_steps=2, max_steps=20)


def micro_cfg(**kw) -> bLlamaConfig:
    return bLlamaConfig(**{**MICRO, **kw})


def random_dm(cfg: bLlamaConfig, n: int = 3000, resumable: bool = False) -> TextDataModule:
    """n seeded random tokens packed into cfg.seq_len windows."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (n,), generator=g).numpy()
    return TextDataModule(PackedDataset(tokens, max_length=cfg.seq_len), batch_size=cfg.batch_size, seed=0,
                          resumable=resumable)
