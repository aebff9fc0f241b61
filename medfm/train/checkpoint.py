"""Training state (optimizer moments, epoch) as safetensors + JSON, never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medfm.atomic import write_atomic, write_json_atomic
from medfm.errors import CheckpointError

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def save_train_state(directory: Path, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Write the optimizer's tensors and the loop's counters next to the model weights."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().contiguous()
               for index, slots in state["state"].items() for name, value in slots.items()
               if isinstance(value, torch.Tensor)}
    record = {"param_groups": state["param_groups"], "progress": progress}
    # Tensors first, counters last: the JSON's epoch never runs ahead of the moments.
    write_atomic(directory / STATE_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(directory / STATE_JSON, record)


def load_train_state(directory: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer from :func:`save_train_state`; returns the loop's counters."""
    try:
        record = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(str(directory / STATE_TENSORS))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory}: training state unreadable ({err})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return record["progress"]


def has_train_state(directory: Path) -> bool:
    return (directory / STATE_JSON).is_file() and (directory / STATE_TENSORS).is_file()
