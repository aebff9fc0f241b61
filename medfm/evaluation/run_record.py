"""What a run records about its data, model and environment, for the validation report's data, model and
provenance sections: participant flow counts, availability patterns, a model summary, software versions,
the git commit, hashes and seeds. Nothing here holds a patient identifier.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from medfm import __version__
from medfm.atomic import sha256_file
from medfm.cohort import Cohort
from medfm.keys import IMAGE_MODALITIES

PACKAGES = ("torch", "monai", "numpy", "scipy", "pandas", "transformers", "peft", "faiss-cpu", "pydicom", "wfdb",
            "matplotlib", "jinja2")


def flow_counts(cohort: Cohort, table: pd.DataFrame, quarantined: dict[str, int],
                samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Patients and studies from the manifest through each inclusion rule to each partition.

    Args:
        cohort: the loaded cohort (its inclusion-rule records, ``exclusions``).
        table: the included studies with their ``split`` column.
        quarantined: unreadable files per split.
        samples: the samples read per split (how many studies of each image modality could be read).
    """
    patient = cohort.config.patient_column
    manifest = {"patients": cohort.manifest_patients, "studies": cohort.manifest_studies}
    rules = [{"name": e.name, "rule": e.rule, "excluded_patients": e.patients_excluded,
              "excluded_studies": e.studies_excluded} for e in cohort.exclusions]
    splits = []
    for name, rows in table.groupby("split", sort=False):
        read = samples.get(str(name), [])
        splits.append({"name": str(name), "patients": int(rows[patient].nunique()), "studies": len(rows),
                       "quarantined_studies": int(quarantined.get(str(name), 0)),
                       "analysed": {str(m): sum(m in s for s in read) for m in IMAGE_MODALITIES
                                    if any(m in s for s in read)}})
    splits.sort(key=lambda s: ({"train": 0, "val": 1, "test": 2}.get(s["name"], 3), s["name"]))
    return {"manifest": manifest, "rules": rules,
            "included": {"patients": int(table[patient].nunique()), "studies": len(table)}, "splits": splits}


def availability(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Per split, how many studies have each pattern of image modalities (``cxr+ecg``, ``cxr`` ...)."""
    out: dict[str, dict[str, int]] = {}
    for split, read in samples.items():
        patterns = pd.Series(["+".join(m for m in IMAGE_MODALITIES if m in s) or "none" for s in read])
        out[split] = {str(k): int(v) for k, v in patterns.value_counts().sort_index().items()}
    return out


def model_summary(model, checkpoint: Path) -> dict[str, Any]:
    """Encoders with their parameter counts and input contracts, and the checkpoint's weights hash."""
    encoders = {}
    for modality in model.modalities:
        spec = model.input_spec(modality)
        encoders[str(modality)] = {
            "name": model.config.encoders[modality]["name"],
            "parameters": sum(p.numel() for p in model.encoders[modality].parameters()),
            "input": ", ".join(f"{k} {v}" for k, v in (spec or {}).items()) or "text",
        }
    weights = Path(checkpoint) / "model.safetensors"
    return {"name": model.config.name, "embed_dim": model.config.embed_dim, "encoders": encoders,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "checkpoint_sha256": sha256_file(weights) if weights.is_file() else None}


def provenance(manifest: Path, seeds: dict[str, int]) -> dict[str, Any]:
    """Software versions, the git commit of the code, the manifest's hash and every seed."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"medfm_version": __version__, "python": sys.version.split()[0],
            "platform": f"{platform.system()} {platform.machine()}", "packages": packages, "git": git_state(),
            "manifest_sha256": sha256_file(manifest), "seeds": seeds}


def git_state(folder: Path | None = None) -> dict[str, Any]:
    """The commit of the medfm source tree and whether it had uncommitted changes (None outside a git checkout)."""
    folder = folder or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
