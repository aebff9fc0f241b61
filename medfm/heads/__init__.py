"""Heads that use the shared space: zero-shot classification, similar-case search."""

from medfm.heads.probe import KNNClassifier, LinearProbe, out_of_fold_scores
from medfm.heads.zeroshot import PromptSet, ZeroShotClassifier, load_prompt_set

__all__ = [
    "KNNClassifier",
    "LinearProbe",
    "PromptSet",
    "ZeroShotClassifier",
    "load_prompt_set",
    "out_of_fold_scores",
]
