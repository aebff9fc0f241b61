"""Training state: safetensors + JSON, the tensors checked against the SHA-256 recorded when written."""

import json

import pytest
import torch

from medfm.errors import CheckpointError
from medfm.models.trust import UnverifiedCheckpointWarning
from medfm.train.checkpoint import STATE_JSON, STATE_TENSORS, load_train_state, save_train_state


def stepped_optimizer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    layer(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return layer, optimizer


@pytest.fixture
def saved(tmp_path):
    _, optimizer = stepped_optimizer()
    save_train_state(tmp_path, optimizer, {"step": 1, "epoch": 0}, {"bias": torch.tensor([0.5])})
    return tmp_path, optimizer


def test_state_round_trips_and_records_the_tensors_hash(saved):
    from medfm.atomic import sha256_file

    directory, optimizer = saved
    record = json.loads((directory / STATE_JSON).read_text())
    assert record["files"] == {STATE_TENSORS: sha256_file(directory / STATE_TENSORS)}
    fresh = torch.optim.AdamW(torch.nn.Linear(4, 2).parameters(), lr=1e-2)  # no state until loaded
    progress, loss_state = load_train_state(directory, fresh)
    assert progress == {"step": 1, "epoch": 0} and torch.equal(loss_state["bias"], torch.tensor([0.5]))
    saved_state, loaded_state = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[i]["exp_avg"], loaded_state[i]["exp_avg"]) for i in saved_state)


@pytest.mark.parametrize("damage", [lambda b: b[:-5], lambda b: b[:-9] + bytes([b[-9] ^ 1]) + b[-8:]])
def test_truncated_or_altered_tensors_are_refused(saved, damage):
    directory, _ = saved
    path = directory / STATE_TENSORS
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        load_train_state(directory, stepped_optimizer()[1])
    assert str(err.value) == (f"{path}: does not match the SHA-256 recorded in train_state.json when it was written "
                              "(truncated, altered, or its save was interrupted); refusing to load it")


def test_state_from_before_hashes_resumes_with_a_warning(saved):
    directory, _ = saved
    record = json.loads((directory / STATE_JSON).read_text())
    del record["files"]
    (directory / STATE_JSON).write_text(json.dumps(record))
    with pytest.warns(UnverifiedCheckpointWarning, match="train_state.json: no file hashes recorded"):
        progress, _ = load_train_state(directory, stepped_optimizer()[1])
    assert progress["step"] == 1


@pytest.mark.parametrize(("content", "reason"), [
    ('{"param_groups": [', "train_state.json: training state unreadable"),
    ('{"progress": {}}', "train_state.json: not a medfm training state"),
])
def test_unreadable_or_foreign_state_json_is_one_line(saved, content, reason):
    directory, _ = saved
    (directory / STATE_JSON).write_text(content)
    with pytest.raises(CheckpointError, match=reason) as err:
        load_train_state(directory, stepped_optimizer()[1])
    assert "\n" not in str(err.value)
