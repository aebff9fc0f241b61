"""Record the golden embeddings of every shipped model config: ``python -m tests.models.golden_update``.

Run this only after a change that is meant to alter model outputs (a new encoder in a
config, a transform version bump, a deliberate architecture change), and say so in the
commit. ``tests/models/test_golden.py`` compares against what this writes.

Inputs are built from each modality's input contract: a seeded uniform tensor of the
contract's shape for tensor modalities, fixed sentences for text. A modality whose
contract gives no shape fails loudly here instead of being left out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from medfm.atomic import write_json_atomic
from medfm.models import create_model, load_model_config
from medfm.models.contract import expected_input_shape

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs/models"
GOLDEN = Path(__file__).resolve().parent / "golden"
SEED = 0
BATCH = 2
REPORTS = ["The heart is enlarged. Small left pleural effusion.", "Sinus rhythm, normal axis."]
SLOW_S = 10.0  # a config whose forward takes longer than this is recorded as slow (skipped by default)


def golden_inputs(model) -> dict[str, Any]:
    """The fixed input of every modality, from the model's input contract.

    Raises:
        SystemExit: a modality whose contract gives no complete input shape.
    """
    inputs: dict[str, Any] = {}
    for index, modality in enumerate(model.modalities):
        spec = model.input_spec(modality)
        if spec is None:
            inputs[str(modality)] = list(REPORTS)
            continue
        shape = expected_input_shape(spec)
        if shape is None or None in shape:
            raise SystemExit(f"golden_update: cannot build an input for {modality} from its contract {spec}; "
                             "give its input_spec() an input_shape, or image_size/shape and channels")
        generator = torch.Generator().manual_seed(SEED * 100 + index)
        inputs[str(modality)] = torch.rand((BATCH, *shape), generator=generator)
    return inputs


def golden_embeddings(config_path: Path) -> tuple[dict[str, list[list[float]]], float]:
    """Embeddings per modality of the seeded model on the fixed input, and the seconds it took."""
    model = create_model(load_model_config(config_path), seed=SEED).eval()
    started = time.perf_counter()
    with torch.no_grad():
        out = {m: model.encode(m, x).tolist() for m, x in golden_inputs(model).items()}
    return out, time.perf_counter() - started


def describe_input() -> str:
    return (f"per modality with an input contract: torch.rand((batch={BATCH}, *contract shape)) from "
            f"torch.Generator().manual_seed({SEED} * 100 + index of the modality in the config); "
            f"text: {REPORTS}")


def main() -> int:
    GOLDEN.mkdir(exist_ok=True)
    for config_path in sorted(CONFIGS.glob("*.yaml")):
        embeddings, seconds = golden_embeddings(config_path)
        record = {
            "config": config_path.stem, "seed": SEED, "input": describe_input(), "slow": seconds > SLOW_S,
            "embeddings": {m: [[round(v, 6) for v in row] for row in rows] for m, rows in embeddings.items()},
        }
        write_json_atomic(GOLDEN / f"{config_path.stem}.json", record)
        print(f"{config_path.stem}: {', '.join(embeddings)} recorded ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
