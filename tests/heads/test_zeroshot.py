import numpy as np
import pytest
import torch

from medfm.heads import PromptSet, ZeroShotClassifier, load_prompt_set
from medfm.models import create_model, load_model_config

from ..conftest import REPO


@pytest.fixture(scope="module")
def fitted():
    model = create_model(load_model_config(REPO / "configs/models/tiny.yaml"), seed=0).eval()
    prompts = [PromptSet(finding="effusion", version="1", positive=["Pleural effusion.", "Fluid."],
                         negative=["No pleural effusion.", "Sharp angles."])]
    return ZeroShotClassifier(model, prompts).fit()


def test_fit_returns_self_with_fitted_attributes(fitted):
    assert fitted.findings_ == ["effusion"]
    assert fitted.positive_.shape == fitted.negative_.shape == (1, 16)
    assert torch.allclose(fitted.positive_.norm(dim=-1), torch.ones(1))


def test_probabilities_follow_the_prompt_ensembles(fitted):
    x = torch.cat([fitted.positive_, fitted.negative_])
    proba = fitted.predict_proba(x)
    assert proba.shape == (2, 1)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert proba[0, 0] > 0.5 > proba[1, 0]
    assert fitted.predict(x).tolist() == [[1], [0]]
    # the probability is the two-way softmax of the scaled cosines
    s = fitted.scale_
    cos = torch.stack([x @ fitted.positive_[0], x @ fitted.negative_[0]], dim=1) * s
    assert np.allclose(proba[:, 0], torch.softmax(cos, dim=1)[:, 0].numpy(), atol=1e-6)


def test_single_prompt_scores_cover_every_prompt(fitted):
    x = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    scores = fitted.single_prompt_scores(x, "effusion")
    assert set(scores) == {"+ Pleural effusion.", "+ Fluid.", "- No pleural effusion.", "- Sharp angles."}
    assert all(v.shape == (5,) for v in scores.values())


def test_shipped_prompt_sets_validate_and_have_both_sides():
    paths = sorted((REPO / "configs/prompts").glob("*.yaml"))
    named = {task.split("prompts/")[1].split(".yaml")[0] for plan in (REPO / "evaluation/plans").glob("*.yaml")
             for task in plan.read_text().splitlines() if "prompts/" in task}
    assert {p.stem for p in paths} == named  # every plan's prompt set ships, and none is orphaned
    for path in paths:
        prompts = load_prompt_set(path)
        assert prompts.finding == path.stem and prompts.positive and prompts.negative
        assert not set(prompts.positive) & set(prompts.negative)
