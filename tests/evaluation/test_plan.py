"""Validation plans: every section checked when loaded, the zero-shot-only plans still valid, the hash recorded."""

import pytest

from medfm.errors import ConfigError
from medfm.evaluation.plan import load_plan, plan_fingerprint

from ..conftest import REPO

PROMPTS = REPO / "configs/prompts"
HEAD = f"""name: p
version: "1"
tasks:
  - {{finding: drusen, modality: oct, label: drusen, prompts: {PROMPTS}/drusen.yaml}}
  - {{finding: drusen, modality: fundus, label: drusen, prompts: {PROMPTS}/drusen.yaml}}
"""


def write(tmp_path, extra=""):
    (tmp_path / "plan.yaml").write_text(HEAD + extra)
    return tmp_path / "plan.yaml"


def test_the_demo_plan_and_a_full_validation_plan_load(tmp_path):
    plan, prompts = load_plan(REPO / "evaluation/plans/demo.yaml")
    assert plan.statistics.ci == "cluster_bootstrap" and len(plan.acceptance) == 3 and len(prompts) == 8
    assert plan.heads == ["zero_shot", "linear_probe", "knn"] and plan.external == ["external"]
    assert plan.create_head("knn").k == 15 and plan.create_head("linear_probe").C == 1.0
    plan, _ = load_plan(write(tmp_path, """intended_use: Triage of OCT scans for drusen in adults.
heads: [zero_shot, linear_probe]
operating_points:
  - {name: sens90, rule: sensitivity, target: 0.9}
  - {name: youden, rule: youden}
primary:
  - {task: drusen/oct, metric: auroc}
secondary:
  - {task: drusen/fundus, metric: sensitivity, operating_point: sens90, head: linear_probe}
subgroups: {by: [sex, site], age_bands: [0, 50, 120]}
statistics: {ci: cluster_bootstrap, resamples: 1000}
acceptance:
  - {endpoint: {task: drusen/oct, metric: auroc}, bound: lower, at_least: 0.8}
"""))
    assert plan.role_of(plan.primary[0]) == "primary" and plan.role_of(plan.secondary[0]) == "secondary"
    assert plan.role_of(plan.acceptance[0].endpoint) == "primary"  # the same analysis as the primary endpoint
    assert plan.tasks[1].key == "drusen/fundus"
    plan, _ = load_plan(write(tmp_path, "heads: [zero_shot, knn]\nhead_settings: {knn: {k: 5}}\n"))
    assert plan.create_head("knn").k == 5 and plan.fitted_heads == ["knn"]


@pytest.mark.parametrize("extra, message", [
    ("primary:\n  - {task: drusen, metric: auroc}\n", "finding/modality"),
    ("primary:\n  - {task: drusen/oct, metric: sensitivity}\n", "needs an operating_point"),
    ("operating_points:\n  - {name: a, rule: youden}\nprimary:\n"
     "  - {task: drusen/oct, metric: auroc, operating_point: a}\n", "threshold-free"),
    ("primary:\n  - {task: drusen/oct, metric: ppv, operating_point: nope}\n", "not defined"),
    ("operating_points:\n  - {name: a, rule: sensitivity}\n", "needs a target"),
    ("operating_points:\n  - {name: a, rule: youden, target: 0.5}\n", "takes no target"),
    ("primary:\n  - {task: drusen/oct, head: knn}\n", "not in heads"),
    ("acceptance:\n  - {endpoint: {task: drusen/oct}, at_least: 0.8, at_most: 0.9}\n", "exactly one"),
    ("split: val\noperating_points:\n  - {name: a, rule: youden}\n", "judged on it"),
    ("subgroups: {age_bands: [0, 65, 40]}\n", "must increase"),
    ("statistics: {ci: jackknife}\n", "ci"),
    ("external: [test]\n", "external lists the test split"),
    ("external: [val]\noperating_points:\n  - {name: a, rule: youden}\n", "judged on it"),
    ("heads: [zero_shot]\ncross_source: {heads: [linear_probe]}\n", "cross_source.heads"),
    ("heads: [zero_shot, knn]\nhead_settings: {knn: {neighbours: 5}}\n", "head_settings.knn"),
    ("head_settings: {zero_shot: {}}\n", "only the fitted heads"),
])
def test_a_plan_that_contradicts_itself_is_one_clear_error(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_plan(write(tmp_path, extra))


def test_editing_a_plan_changes_its_fingerprint(tmp_path):
    path = write(tmp_path)
    before = plan_fingerprint(path)
    path.write_text(path.read_text().replace('version: "1"', 'version: "2"'))
    assert plan_fingerprint(path) != before and len(before) == 64
