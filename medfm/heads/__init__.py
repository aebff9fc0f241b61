"""Heads that use the shared space: zero-shot classification, similar-case search."""

from medfm.heads.zeroshot import PromptSet, ZeroShotClassifier, load_prompt_set

__all__ = ["PromptSet", "ZeroShotClassifier", "load_prompt_set"]
