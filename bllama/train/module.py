"""bLlama: the LightningModule users train, quantize and generate with."""
from __future__ import annotations

import math
import time
import warnings
from typing import List, Optional, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..model.config import bLlamaConfig
from ..model.generate import generate_ids
from ..model.transformer import Block, Transformer, count_parameters


def lr_multiplier(step: int, config: bLlamaConfig) -> float:
    """LR as a fraction of config.lr at an optimizer step.

    cosine: linear warm-up, then cosine decay to min_lr_ratio (the original bLLaMa).
    two_stage (b1.58 FAQ): warm-up, then a linear decay whose peak drops from lr to lr2 at mid-run;
    the weight decay is switched off at the same step (see bLlama.on_train_batch_start).
    """
    warm, total = max(config.warmup_steps, 0), max(config.max_steps, 1)
    if step < warm:
        return (step + 1) / warm
    progress = min((step - warm) / max(total - warm, 1), 1.0)
    if config.schedule == "cosine":
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    peak = 1.0 if step < stage2_start(config) else config.lr2 / config.lr
    return peak * (1 - (1 - config.min_lr_ratio) * progress)


def stage2_start(config: bLlamaConfig) -> int:
    return config.max_steps // 2


class bLlama(pl.LightningModule):
    """A BitNet b1.58 LLaMA. `bLlama(bLlamaConfig())` is the 1.7B model; see bLlamaConfig.preset()."""

    def __init__(self, config: Union[bLlamaConfig, dict, None] = None):
        super().__init__()
        if config is None:
            config = bLlamaConfig()
        elif isinstance(config, dict):
            config = bLlamaConfig.from_dict(config)
        self.config = config
        self.save_hyperparameters({"config": config.to_dict()})
        self.model = Transformer(config)
        self._last_batch_time: Optional[float] = None

    @classmethod
    def from_pretrained(cls, path, quantize=None, **overrides) -> "bLlama":
        """A bLlama with the weights of a Hugging Face LLaMA / BitNet folder or one of our GGUF files
        (bllama/convert/hf_load.py); its tokenizer and chat template are in `model.pretrained`."""
        from ..convert.hf_load import load_pretrained

        model, info = load_pretrained(path, quantize=quantize, **overrides)
        model.pretrained = info
        return model

    # ---- model ------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def num_parameters(self) -> int:
        return count_parameters(self)

    def quantize_weights_to_ternary(self, verbose: bool = True) -> dict:
        """Switch every BitLinear to int8 ternary codes + one scale (irreversible); returns size info, printed
        unless verbose=False (the original bLLaMa's argument)."""
        before = self.model_size_bytes()
        for _, layer in self.model.bitlinears():
            layer.quantize()
        after = self.model_size_bytes()
        info = {"bytes_before": before, "bytes_after": after, "packed_file_bytes": self.packed_size_bytes()}
        if verbose:
            print(f"quantized {len(self.model.bitlinears())} BitLinear layers: in memory {before / 2**20:.1f} MiB -> "
                  f"{after / 2**20:.1f} MiB (int8 codes, 1 byte/weight); a GGUF TQ2_0 file packs them at 2.06 bits "
                  f"per weight: about {info['packed_file_bytes'] / 2**20:.1f} MiB with an f16 embedding")
        return info

    def is_quantized(self) -> bool:
        layers = self.model.bitlinears()
        return bool(layers) and all(m.quantized for _, m in layers)

    def model_size_bytes(self) -> int:
        """Bytes of parameters and persistent buffers as held in memory now (a tied head counts once)."""
        tensors = {t.data_ptr(): t for t in list(self.parameters()) + list(self.model.buffers())
                   if t.device.type != "meta"}
        return sum(t.numel() * t.element_size() for t in tensors.values()) - sum(
            b.numel() * b.element_size() for n, b in self.model.named_buffers() if n.startswith("rope_"))

    def packed_size_bytes(self) -> int:
        """Size of the model as a GGUF file: ternary at 66 bytes per 256 weights, the rest as exported."""
        total = 0
        ternary = {id(m.weight_codes if m.quantized else m.weight) for _, m in self.model.bitlinears()}
        for _, m in self.model.bitlinears():
            total += m.in_features * m.out_features * 66 // 256
        for name, p in self.model.named_parameters():
            if id(p) in ternary:
                continue
            total += p.numel() * (2 if p.dim() == 2 else 4)  # embedding / head f16, norms f32
        return total

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, prompt: str, tokenizer, max_len: int = 200, do_sample: bool = False,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 repetition_penalty: float = 1.0, num_return_sequences: int = 1, seed: Optional[int] = None,
                 use_cache: bool = True, device: Optional[Union[str, torch.device]] = None) -> Union[str, List[str]]:
        """Text continuing `prompt` (prompt included), up to max_len new tokens or EOS (a list of
        num_return_sequences texts when more than one). device (the original bLLaMa's argument): move the model
        there first; None keeps it where it is."""
        from ..tokenizers.sentencepiece import load_tokenizer

        if device is not None:
            self.to(device)
        if not self.is_quantized():
            warnings.warn("the model is not quantized: generating with training-mode (fake-quantized) BitLinear "
                          "layers; call quantize_weights_to_ternary() first for the real ternary model")
        tok = load_tokenizer(tokenizer)
        prompt_ids = tok.encode(prompt)
        outs = generate_ids(self.model, prompt_ids, max_len, do_sample=do_sample, temperature=temperature,
                            top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                            num_return_sequences=num_return_sequences, seed=seed, eos_id=tok.eos_id,
                            use_cache=use_cache)
        texts = [tok.decode(prompt_ids + ids) for ids in outs]
        return texts[0] if num_return_sequences == 1 else texts

    # ---- training ---------------------------------------------------------------------------------------
    def _loss(self, batch):
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1)), x.numel()

    def training_step(self, batch, batch_idx):
        loss, ntok = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_ppl", torch.exp(loss.detach()))
        now = time.perf_counter()
        if self._last_batch_time is not None:
            self.log("tokens_per_s", ntok * self.trainer.world_size / (now - self._last_batch_time), prog_bar=True)
        self._last_batch_time = now
        return loss

    def validation_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", torch.exp(loss), sync_dist=True)
        return loss

    def test_step(self, batch, batch_idx):
        loss, _ = self._loss(batch)
        self.log("test_loss", loss, sync_dist=True)
        self.log("test_ppl", torch.exp(loss), sync_dist=True)
        return loss

    def configure_optimizers(self):
        c = self.config
        params = {id(p): (n, p) for n, p in self.named_parameters() if p.requires_grad}.values()
        # Weight decay on matrices only, not on norms, biases (the usual LLaMA practice).
        decay = [p for n, p in params if p.dim() >= 2]
        no_decay = [p for n, p in params if p.dim() < 2]
        # fused (one kernel for the whole update) where every parameter is on a GPU, the default foreach elsewhere
        fused = all(p.is_cuda for p in decay + no_decay) or None
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, betas=c.betas, fused=fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, c))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx):
        if self.config.schedule == "two_stage" and self.global_step >= stage2_start(self.config):
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["weight_decay"] = 0.0

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        val = gradient_clip_val if gradient_clip_val is not None else self.config.grad_clip
        if not val:
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.model
        if isinstance(model, FullyShardedDataParallel):
            # Lightning's FSDPPrecision refuses norm clipping ("`gradient_clip_algorithm='norm'` is currently not
            # supported for `FSDPPrecision`"); FSDP's own clip_grad_norm_ all-reduces the norm of the shards.
            model.clip_grad_norm_(val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=val, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        sched = self.lr_schedulers()
        if sched is not None:
            self.log("lr", sched.get_last_lr()[0])

    @staticmethod
    def fsdp_wrap_policy():
        """For FSDPStrategy(auto_wrap_policy=..., activation_checkpointing_policy=...): one unit per block."""
        return {Block}

    def compile_blocks(self, **kwargs) -> None:
        """torch.compile every transformer block in place (nn.Module.compile; state_dict keys unchanged).

        The blocks share their code and shapes, so one graph serves all of them: compile time does not grow with
        depth as it does for a whole-model torch.compile. The embedding, final norm, LM head and loss stay eager.
        """
        for layer in self.model.layers:
            layer.compile(**kwargs)
