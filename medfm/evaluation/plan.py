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
from typing import Any, Literal

from pydantic import Field, model_validator

from medfm.atomic import sha256_file
from medfm.config import Config, load_config, resolve_path
from medfm.heads.zeroshot import PromptSet, load_prompt_set
from medfm.keys import Modality
from medfm.registry import HEADS

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

    by: list[str] = ["sex", "site", "device", "modalities"]  # modalities: the availability pattern
    age_bands: list[float] = [0, 40, 65, 200]  # [0, 40), [40, 65), [65, 200)

    @model_validator(mode="after")
    def _increasing_bands(self) -> Subgroups:
        if any(b <= a for a, b in zip(self.age_bands, self.age_bands[1:], strict=False)):
            raise ValueError(f"age_bands must increase, got {self.age_bands}")
        return self


class CrossSource(Config):
    """The cross-device / cross-site matrix: rows where a head was fitted (or the model pretrained), columns
    where it is tested (the test split and the external splits), each cell the AUROC with its interval and
    the drop against the row's in-distribution cell.

    ``by``: prediction columns naming a source (``device``, ``site``). ``heads`` (default: every head of
    the plan): ``zero_shot`` gives one row (the pretrained model; its in-distribution cell pools the
    sources seen in pretraining); a fitted head gives one row per source of the development split with at
    least ``min_class_count`` studies of each class, plus a row fitted on all of them.
    """

    by: list[str] = ["device", "site"]
    heads: list[Head] | None = None
    min_class_count: int = Field(3, ge=1)


class ZeroShotPlan(Config):
    """Schema of an evaluation plan (the class keeps its first name: every plan has zero-shot tasks)."""

    name: str
    version: str
    intended_use: str | None = None
    target_population: str | None = None
    # What is validated (``medfm validate PLAN``): the pipeline whose cohort and trained checkpoint the
    # plan is run on, and optionally the SHA-256 of that checkpoint's model.safetensors, refused if it differs.
    pipeline: str | None = None
    checkpoint_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$")
    split: str = "test"
    development_split: str = "val"  # where operating points are chosen and probes fitted
    # Splits analysed as external validation (patients held out by site or device): same heads and
    # operating points as the test split, reported beside it, never used for a choice.
    external: list[str] = []
    heads: list[Head] = ["zero_shot"]
    # Keyword arguments of a fitted head's class (``linear_probe: {C: 0.5}``, ``knn: {k: 25}``), checked on load.
    head_settings: dict[Head, dict[str, Any]] = {}
    # Patient-grouped folds giving the development split out-of-fold scores of a fitted head, so that its
    # operating points are not chosen on scores it was fitted to.
    development_folds: int = Field(5, ge=2)
    tasks: list[ZeroShotTask] = Field(min_length=1)
    operating_points: list[OperatingPoint] = []
    primary: list[Endpoint] = []
    secondary: list[Endpoint] = []
    subgroups: Subgroups = Subgroups()
    statistics: Statistics = Statistics()
    acceptance: list[Criterion] = []
    cross_source: CrossSource = CrossSource()
    failure_cases: int = Field(3, ge=0)  # worst false positives and negatives shown per task

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
        fitted = {"linear_probe", "knn"} & set(self.heads)
        if self.development_split in {self.split, *self.external} and (self.operating_points or fitted):
            raise ValueError(f"development_split {self.development_split!r} is also evaluated: thresholds and "
                             "probes chosen on it would be judged on it")
        if self.split in self.external:
            raise ValueError(f"external lists the test split {self.split!r}")
        missing = sorted(set(self.cross_source.heads or []) - set(self.heads))
        if missing:
            raise ValueError(f"cross_source.heads: {missing} not in heads {self.heads}")
        for head, settings in self.head_settings.items():
            if head not in self.fitted_heads:
                raise ValueError(f"head_settings.{head}: only the fitted heads in heads take settings "
                                 f"({', '.join(self.fitted_heads) or 'none'})")
            try:
                create_head(head, **settings)
            except TypeError as err:
                raise ValueError(f"head_settings.{head}: {err}") from None
        return self

    def create_head(self, head: str) -> Any:
        """A fresh, unfitted instance of a fitted head with the plan's settings."""
        return create_head(head, **self.head_settings.get(head, {}))

    @property
    def evaluated_splits(self) -> list[str]:
        """The test split, then the external ones: every split a head is judged on."""
        return [self.split, *self.external]

    @property
    def cross_source_heads(self) -> list[str]:
        """The heads the cross-source matrix has rows for."""
        return self.heads if self.cross_source.heads is None else self.cross_source.heads

    @property
    def fitted_heads(self) -> list[str]:
        """The plan's heads that are fitted on the development split (all but zero-shot)."""
        return [h for h in self.heads if h != "zero_shot"]

    def _endpoints(self) -> list[tuple[str, Endpoint]]:
        named = [(f"primary[{i}]", e) for i, e in enumerate(self.primary)]
        named += [(f"secondary[{i}]", e) for i, e in enumerate(self.secondary)]
        return named + [(f"acceptance[{i}].endpoint", c.endpoint) for i, c in enumerate(self.acceptance)]

    def role_of(self, endpoint: Endpoint) -> Literal["primary", "secondary", "exploratory"]:
        """How the report labels an analysis: as the plan declares it, else exploratory."""
        if endpoint in self.primary:
            return "primary"
        return "secondary" if endpoint in self.secondary else "exploratory"


def create_head(name: str, **settings: Any) -> Any:
    """A fitted head (``linear_probe``, ``knn``) from the registry, unfitted."""
    import medfm.heads.probe  # noqa: F401  (registers the fitted heads)

    return HEADS.get(name)(**settings)


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
