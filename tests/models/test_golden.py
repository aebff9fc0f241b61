"""Golden outputs: each shipped model config, seeded, on a fixed input, gives the recorded embeddings.

A refactor that silently changes what a model computes fails here. After an intended
change, regenerate with ``python -m tests.models.golden_update`` and commit the JSONs.
"""

import json

import pytest
import torch

from .golden_update import CONFIGS, GOLDEN, golden_embeddings

REGENERATE = "if the change is intended, regenerate with `python -m tests.models.golden_update`"


def config_params():
    params = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        golden = GOLDEN / f"{path.stem}.json"
        slow = golden.is_file() and json.loads(golden.read_text()).get("slow", False)
        params.append(pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.mark.parametrize("config_path", config_params())
def test_seeded_model_reproduces_the_golden_embeddings(config_path):
    golden_file = GOLDEN / f"{config_path.stem}.json"
    assert golden_file.is_file(), f"configs/models/{config_path.name} has no golden file {golden_file}; {REGENERATE}"
    golden = json.loads(golden_file.read_text())
    embeddings, _ = golden_embeddings(config_path)
    assert set(embeddings) == set(golden["embeddings"]), (
        f"{config_path.stem}: modalities {sorted(embeddings)} vs golden {sorted(golden['embeddings'])}; {REGENERATE}")
    for modality, rows in golden["embeddings"].items():
        got, want = torch.tensor(embeddings[modality]), torch.tensor(rows)
        error = (got - want).abs().max().item()
        assert error <= 1e-4, (f"{config_path.stem}/{modality}: embeddings moved by {error:.2e} (> 1e-4) from "
                               f"the recorded golden output; {REGENERATE}")
