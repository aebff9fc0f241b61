"""Contrastive pretraining: the loop, its config, and resumable checkpoints."""

from medfm.train.config import TrainConfig
from medfm.train.loop import pretrain

__all__ = ["TrainConfig", "pretrain"]
