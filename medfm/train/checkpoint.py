"""Training state (optimizer moments, loss parameters, counters) as safetensors + JSON, never pickle.

``train_state.json`` records the SHA-256 of ``train_state.safetensors`` (under ``files``);
resuming refuses a tensors file that does not match it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from medfm.atomic import write_atomic, write_json_atomic
from medfm.errors import CheckpointError
from medfm.models.trust import FILES, checked_record, expected_sha256, load_tensors, record_of

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
OPTIMIZER_PREFIX = "optim."
LOSS_PREFIX = "loss."


def save_train_state(directory: Path, optimizer: torch.optim.Optimizer, progress: dict[str, Any],
                     loss_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the optimizer's tensors, the loss's own state and the loop's counters.

    Args:
        loss_state: ``loss_fn.state_dict()``; a loss with learnable parameters (a
            SigLIP bias) must resume with them, the model checkpoint does not hold them.
    """
    state = optimizer.state_dict()
    tensors = {f"{OPTIMIZER_PREFIX}{index}.{name}": value.detach().cpu().contiguous()
               for index, slots in state["state"].items() for name, value in slots.items()
               if isinstance(value, torch.Tensor)}
    tensors |= {f"{LOSS_PREFIX}{name}": value.detach().cpu().contiguous()
                for name, value in (loss_state or {}).items()}
    # Tensors first, counters (and the tensors' hash) last: the JSON's step never runs ahead of the moments.
    written = write_atomic(directory / STATE_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
    record = {"param_groups": state["param_groups"], "progress": progress, FILES: record_of(directory, [written])}
    write_json_atomic(directory / STATE_JSON, record)


def load_train_state(directory: Path, optimizer: torch.optim.Optimizer,
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore the optimizer from :func:`save_train_state`.

    Returns:
        The loop's counters and the loss's state dict (for ``loss_fn.load_state_dict``).

    Raises:
        CheckpointError: the files are unreadable, the tensors do not match the SHA-256
            recorded when they were written, or they do not fit the optimizer.
    """
    where = directory / STATE_JSON
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{where}: training state unreadable ({err})") from None
    if not isinstance(record, dict) or not {"param_groups", "progress"} <= set(record):
        raise CheckpointError(f"{where}: not a medfm training state (needs 'param_groups' and 'progress')")
    hashes = checked_record(directory, record.get(FILES), where)
    tensors_path = directory / STATE_TENSORS
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path}: training state file missing")
    tensors = load_tensors(tensors_path, expected_sha256(hashes, directory, tensors_path, where), where)
    state: dict[int, dict[str, torch.Tensor]] = {}
    loss_state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(LOSS_PREFIX):
            loss_state[key[len(LOSS_PREFIX):]] = value
            continue
        index, name = key.removeprefix(OPTIMIZER_PREFIX).split(".", 1)
        state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{directory / STATE_JSON}: optimizer state does not fit this model ({err})") from None
    return record["progress"], loss_state


def has_train_state(directory: Path) -> bool:
    return (directory / STATE_JSON).is_file() and (directory / STATE_TENSORS).is_file()


def remove_train_state(directory: Path) -> None:
    """Forget an earlier run's counters, so a fresh run killed early never resumes into it."""
    for name in (STATE_JSON, STATE_TENSORS):
        (directory / name).unlink(missing_ok=True)

