"""Zero-shot evaluation plans (``evaluation/plans/*.yaml``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medfm.config import Config, load_config, resolve_path
from medfm.heads.zeroshot import PromptSet, load_prompt_set
from medfm.keys import Modality


class ZeroShotTask(Config):
    """One finding, read from one modality, scored against one label column."""

    finding: str
    modality: Modality
    label: str
    prompts: str


class ZeroShotPlan(Config):
    """Schema of a zero-shot plan: which findings to score on which split."""

    name: str
    version: str
    split: str = "test"
    tasks: list[ZeroShotTask] = Field(min_length=1)


def load_plan(path: str | Path) -> tuple[ZeroShotPlan, dict[str, PromptSet]]:
    """Load a plan and every prompt set it names (paths relative to the plan file)."""
    plan = load_config(path, ZeroShotPlan)
    prompt_sets = {}
    for i, task in enumerate(plan.tasks):
        prompt_sets[task.finding] = load_prompt_set(resolve_path(path, f"tasks.{i}.prompts", task.prompts))
    return plan, prompt_sets
