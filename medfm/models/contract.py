"""The input contract a checkpoint carries, and the checks that hold inputs to it.

A model only means something for inputs prepared as in training: the same transform
version, resampling, intensity scaling, sampling rate and size. Each encoder states
these in ``input_spec()`` (a flat or nested dict); a checkpoint stores the specs of
all modalities as its ``input_contract``. On load, the contract of the rebuilt model
must equal the stored one, so a medfm whose transform changed (a version bump) refuses
an old checkpoint instead of feeding it differently prepared inputs. At inference,
tensors are checked against the shape the contract implies.

Specs are interpreted generically, by key, so a new encoder needs no change here:

| key | meaning |
|---|---|
| ``input_shape`` | the exact per-sample shape (channel first) |
| ``channels`` | channel count (else known per ``transform``, see ``TRANSFORM_CHANNELS``) |
| ``shape`` | the spatial shape (e.g. a volume's ``D, H, W``) |
| ``image_size`` | an int (square 2D, cube if ``spatial_dims`` is 3) or a list of sizes |
| ``sample_rate`` + ``duration_s`` | a signal of ``round(rate * duration)`` samples |
"""

from __future__ import annotations

from typing import Any

from medfm.errors import CheckpointError, InputContractError
from medfm.keys import STANDARD_LEADS

# Channels produced by transforms whose spec predates the ``channels`` key.
TRANSFORM_CHANNELS: dict[str, int] = {"radiograph_to_input": 1, "ecg_to_input": len(STANDARD_LEADS)}


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, so differences are reported by their full key."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def contract_differences(stored: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """Every difference between two contracts, one line each: modality, key, stored vs current."""
    lines = []
    for modality in sorted(set(stored) | set(current)):
        if modality not in current:
            lines.append(f"{modality}: in the checkpoint's contract but this model has no input spec for it")
            continue
        if modality not in stored:
            lines.append(f"{modality}: this model has an input spec the checkpoint did not record")
            continue
        old, new = flatten(stored[modality]), flatten(current[modality])
        for key in sorted(set(old) | set(new)):
            # JSON turns tuples into lists; compare in that form.
            a, b = _jsonish(old.get(key, "<absent>")), _jsonish(new.get(key, "<absent>"))
            if a != b:
                lines.append(f"{modality}.{key}: checkpoint {a!r}, this medfm {b!r}")
    return lines


def check_contract(stored: dict[str, dict], current: dict[str, dict], where: str) -> None:
    """Refuse a checkpoint whose stored input contract differs from the rebuilt model's.

    Raises:
        CheckpointError: naming each modality and key that differs, stored vs current.
    """
    diffs = contract_differences(stored, current)
    if diffs:
        raise CheckpointError(f"{where}: input contract differs from this medfm's preprocessing, so inputs "
                              f"would be prepared differently from training: {'; '.join(diffs)}")


def expected_input_shape(spec: dict[str, Any]) -> tuple[int | None, ...] | None:
    """Per-sample shape ``(C, *spatial)`` a spec implies; None where a spec says nothing about shape.

    A channel count the spec does not give is None (not checked).
    """
    if "input_shape" in spec:
        return tuple(int(n) for n in spec["input_shape"])
    channels = spec.get("channels", TRANSFORM_CHANNELS.get(spec.get("transform", "")))
    if "shape" in spec:
        return (channels, *(int(n) for n in spec["shape"]))
    if "image_size" in spec:
        size = spec["image_size"]
        spatial = tuple(int(n) for n in size) if isinstance(size, list | tuple) else (
            (int(size),) * int(spec.get("spatial_dims", 2)))
        return (channels, *spatial)
    if "sample_rate" in spec and "duration_s" in spec:
        return (channels, round(spec["sample_rate"] * spec["duration_s"]))
    return None


def check_input_shape(modality: str, spec: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Refuse a batch ``(n, C, ...)`` whose per-sample shape differs from the contract's.

    Raises:
        InputContractError: saying which dimension differs, expected vs got, in the
            contract's terms (channels, image size, samples at the trained rate).
    """
    expected = expected_input_shape(spec)
    if expected is None:
        return
    got = tuple(shape[1:])
    if len(got) != len(expected):
        raise InputContractError(f"{modality}: expected a batch of shape (n, {_dims(expected)}), got "
                                 f"{tuple(shape)}")
    channels, *spatial = expected
    if channels is not None and got[0] != channels:
        raise InputContractError(f"{modality}: the model was trained on {channels}-channel inputs, got {got[0]} "
                                 f"channels (batch shape {tuple(shape)})")
    if tuple(got[1:]) != tuple(spatial):
        if "sample_rate" in spec and "input_shape" not in spec:
            raise InputContractError(
                f"{modality}: the model was trained on {spatial[0]} samples ({spec['duration_s']} s at "
                f"{spec['sample_rate']} Hz), got {got[1]} samples; resample with model.preprocess")
        raise InputContractError(f"{modality}: the model was trained at size {tuple(spatial)}, got "
                                 f"{tuple(got[1:])}; resize with model.preprocess")


def _dims(shape: tuple[int | None, ...]) -> str:
    return ", ".join("C" if n is None else str(n) for n in shape)


def _jsonish(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
