"""Validation plans (``evaluation/plans/*.yaml``): what is evaluated, how, and what counts as a pass.

A plan is written before results are seen. Besides the zero-shot tasks it can state the
intended use, the heads to evaluate, operating points fixed on a development split,
primary and secondary endpoints, subgroups, the interval method and pass/fail
acceptance criteria. Every run records the plan file's SHA-256
(:func:`plan_fingerprint`), so a plan edited after a run shows as a different hash in
the report. A plan with only ``tasks`` (the zero-shot plans before validation reports)
is still a valid plan: every other section has a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medfm.atomic import sha256_file
from medfm.config import Config, load_config, resolve_path
from medfm.heads.zeroshot import PromptSet, load_prompt_set
from medfm.keys import Modality

Head = Literal["zero_shot", "linear_probe", "knn"]
Metric = Literal["auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece"]


class ZeroShotTask(Config):
    """One finding, read from one modality, scored against one label column."""

    finding: str
    modality: Modality
    label: str
    prompts: str

    @property
    def key(self) -> str:
        """How endpoints and criteria name a task: ``finding/modality`` (drusen/oct vs drusen/fundus)."""
        return f"{self.finding}/{self.modality}"


class OperatingPoint(Config):
    """A decision threshold chosen on the development split and applied unchanged to the test split.

    ``rule``: ``sensitivity`` (the highest threshold reaching ``target`` sensitivity),
    ``specificity`` (likewise), ``youden`` (maximum sensitivity + specificity − 1), or
    ``fixed`` (``target`` is the threshold itself, on the probability scale).
    """

    name: str
    rule: Literal["sensitivity", "specificity", "youden", "fixed"]
    target: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _target_when_needed(self) -> OperatingPoint:
        if (self.rule == "youden") != (self.target is None):
            need = "takes no target" if self.rule == "youden" else "needs a target between 0 and 1"
            raise ValueError(f"operating point {self.name!r}: rule {self.rule} {need}")
        return self


class Endpoint(Config):
    """One analysis: a metric of a head on a task (``finding/modality``), at an operating point if it needs one."""

    task: str
    metric: Metric = "auroc"
    head: Head = "zero_shot"
    operating_point: str | None = None


class Criterion(Config):
    """Pass/fail: the chosen bound of an endpoint's interval (or its estimate) against a limit.

    ``bound: lower, at_least: 0.80`` reads "the lower 95% confidence bound is at least
    0.80"; ``bound: upper, at_most: 0.10`` suits error measures (Brier, ECE).
    """

    endpoint: Endpoint
    bound: Literal["lower", "estimate", "upper"] = "lower"
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> Criterion:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("a criterion takes exactly one of at_least and at_most")
        return self


class Statistics(Config):
    """How intervals are computed; the report names the method beside every interval."""

    ci: Literal["cluster_bootstrap", "delong", "wilson"] = "cluster_bootstrap"
    resamples: int = Field(2000, ge=100)
    level: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = 0
    calibration_bins: int = Field(10, ge=2)
    binning: Literal["uniform", "quantile"] = "uniform"


class Subgroups(Config):
    """Who results are broken down by: manifest metadata columns, and age bands in years."""

    by: list[str] = ["sex", "site", "device"]
    age_bands: list[float] = [0, 40, 65, 200]  # [0, 40), [40, 65), [65, 200)

    @model_validator(mode="after")
    def _increasing_bands(self) -> Subgroups:
        if any(b <= a for a, b in zip(self.age_bands, self.age_bands[1:], strict=False)):
            raise ValueError(f"age_bands must increase, got {self.age_bands}")
        return self


class ZeroShotPlan(Config):
    """Schema of an evaluation plan (the class keeps its first name: every plan has zero-shot tasks)."""

    name: str
    version: str
    intended_use: str | None = None
    split: str = "test"
    development_split: str = "val"  # where operating points are chosen and probes fitted
    heads: list[Head] = ["zero_shot"]
    tasks: list[ZeroShotTask] = Field(min_length=1)
    operating_points: list[OperatingPoint] = []
    primary: list[Endpoint] = []
    secondary: list[Endpoint] = []
    subgroups: Subgroups = Subgroups()
    statistics: Statistics = Statistics()
    acceptance: list[Criterion] = []

    @model_validator(mode="after")
    def _endpoints_name_what_the_plan_has(self) -> ZeroShotPlan:
        tasks = {t.key for t in self.tasks}
        points = {p.name for p in self.operating_points}
        if len(points) != len(self.operating_points):
            raise ValueError("operating point names must be unique")
        needs_point = {"sensitivity", "specificity", "ppv", "npv"}
        for where, endpoint in self._endpoints():
            if endpoint.task not in tasks:
                raise ValueError(f"{where}: task {endpoint.task!r} is not one of the plan's tasks "
                                 f"({', '.join(sorted(tasks))}); name tasks as finding/modality")
            if endpoint.head not in self.heads:
                raise ValueError(f"{where}: head {endpoint.head!r} is not in heads {self.heads}")
            if (endpoint.metric in needs_point) != (endpoint.operating_point is not None):
                raise ValueError(f"{where}: {endpoint.metric} " + ("needs an operating_point" if endpoint.metric
                                 in needs_point else "is threshold-free; remove operating_point"))
            if endpoint.operating_point is not None and endpoint.operating_point not in points:
                raise ValueError(f"{where}: operating point {endpoint.operating_point!r} is not defined "
                                 f"(defined: {', '.join(sorted(points)) or 'none'})")
        if self.development_split == self.split and (self.operating_points or "linear_probe" in self.heads):
            raise ValueError(f"development_split and split are both {self.split!r}: thresholds and probes "
                             "chosen on the test split would be judged on it")
        return self

    def _endpoints(self) -> list[tuple[str, Endpoint]]:
        named = [(f"primary[{i}]", e) for i, e in enumerate(self.primary)]
        named += [(f"secondary[{i}]", e) for i, e in enumerate(self.secondary)]
        return named + [(f"acceptance[{i}].endpoint", c.endpoint) for i, c in enumerate(self.acceptance)]

    def role_of(self, endpoint: Endpoint) -> Literal["primary", "secondary", "exploratory"]:
        """How the report labels an analysis: as the plan declares it, else exploratory."""
        if endpoint in self.primary:
            return "primary"
        return "secondary" if endpoint in self.secondary else "exploratory"


def load_plan(path: str | Path) -> tuple[ZeroShotPlan, dict[str, PromptSet]]:
    """Load a plan and every prompt set it names (paths relative to the plan file)."""
    plan = load_config(path, ZeroShotPlan)
    prompt_sets = {}
    for i, task in enumerate(plan.tasks):
        prompt_sets[task.finding] = load_prompt_set(resolve_path(path, f"tasks.{i}.prompts", task.prompts))
    return plan, prompt_sets


def plan_fingerprint(path: str | Path) -> str:
    """SHA-256 of the plan file as written: any edit after a run changes it."""
    return sha256_file(path)
