"""Contrastive objectives that align modalities in the shared space."""

from medfm.align.infonce import SymmetricInfoNCE, pairwise_infonce

__all__ = ["SymmetricInfoNCE", "pairwise_infonce"]
