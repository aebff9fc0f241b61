"""Contrastive objectives that align modalities in the shared space.

Importing this package registers every loss in ``LOSSES`` (``infonce``, ``siglip``, ``gram``).
"""

from medfm.align.config import LossConfig
from medfm.align.gram import GRAMLoss, gram_volumes
from medfm.align.infonce import SymmetricInfoNCE, contrastive_cross_entropy, pairwise_infonce
from medfm.align.siglip import SigLIPLoss, pairwise_siglip

__all__ = ["GRAMLoss", "LossConfig", "SigLIPLoss", "SymmetricInfoNCE", "contrastive_cross_entropy",
           "gram_volumes", "pairwise_infonce", "pairwise_siglip"]
