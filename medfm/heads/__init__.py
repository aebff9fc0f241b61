"""Heads that use the shared space: zero-shot classification (retrieval comes later)."""

from medfm.heads.zeroshot import PromptSet, ZeroShotClassifier, load_prompt_set

__all__ = ["PromptSet", "ZeroShotClassifier", "load_prompt_set"]
