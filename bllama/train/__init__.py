"""Training: the LightningModule (module.py), callbacks, and the trainer with atomic checkpoints (trainer.py)."""
