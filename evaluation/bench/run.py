"""Run the benchmarks and rewrite the measured section of docs/benchmarks.md.

Usage: ``python evaluation/bench/run.py`` from the repository root (``make bench``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOC = ROOT / "docs/benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def main() -> int:
    os.chdir(ROOT)
    sys.path.insert(0, str(HERE))
    import bench_loading
    import bench_text_cache
    import bench_train_step

    loading = bench_loading.run()
    text = bench_text_cache.run()
    train = bench_train_step.run()
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    lines = [
        BEGIN,
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine} by `make bench`.",
        "",
        "| benchmark | baseline (same run) | measured | baseline | ratio |",
        "|---|---|---|---|---|",
        f"| {text['name']} | {text['baseline']} | {text['measured_s']:.3f} s | {text['baseline_s']:.3f} s "
        f"| {text['speedup']:.1f}x faster |",
    ]
    for modality, row in train["encoders"].items():
        lines.append(f"| {modality} {train['name']} | {train['baseline']} ({train['peak_gflops']:.0f} GFLOP/s) "
                     f"| {row['gflops']:.1f} GFLOP/s, {row['samples_per_s']:.0f} samples/s | "
                     f"{train['peak_gflops']:.0f} GFLOP/s | {row['share_of_peak']:.0%} of peak |")
    baselines = {"volumes": "MONAI LoadImaged + Spacingd + ScaleIntensityRanged",
                 "ecgs": "wfdb.rdrecord + ecg_to_input"}
    for kind, target in (("volumes", 100), ("ecgs", 20)):
        row = loading[kind]
        lines.append(
            f"| loading {row['source']}, second epoch through the cache (first epoch: "
            f"{row['first_epoch_ratio']:.2f}x the baseline's speed) | "
            f"{baselines[kind]}, no cache | {row['second_epoch_s'] * 1e3:.2f} ms/item | "
            f"{row['baseline_s'] * 1e3:.1f} ms/item "
            f"| {row['second_epoch_speedup']:.0f}x faster (target {target}x) |")
    lines.append(END)
    block = "\n".join(lines)
    doc = DOC.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(doc)
    os.replace(tmp, DOC)
    print(block)
    print(json.dumps({"loading": loading, "text_cache": text, "train_step": train}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
