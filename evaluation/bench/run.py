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


def train_rows(train: dict) -> list[str]:
    """Table rows of ``bench_train.run()``: peak, base encoders, full step, memory."""
    peak = train["peak"]["gflops"]
    rows = [f"| fp32 matmul peak, best of {', '.join(train['peak']['by_size'])} | - | {peak:.0f} GFLOP/s | - | - |"]
    for key, row in train["base_encoders"].items():
        mine, bare = row["medfm"], row["bare_monai_vit"]
        rows.append(
            f"| {key} base encoder ({row['encoder']}, {row['tokens']} tokens, width {row['hidden_size']}, "
            f"{row['num_layers']} layers) forward+backward, batch {mine['batch']} | fp32 matmul peak; bare MONAI "
            f"ViT of the same shape: {bare['gflops']:.1f} GFLOP/s, {bare['share_of_peak']:.0%} of peak "
            f"| {mine['gflops']:.1f} GFLOP/s, {mine['samples_per_s']:.3g} samples/s | {peak:.0f} GFLOP/s "
            f"| {mine['share_of_peak']:.0%} of peak (target {train['targets']['share_of_peak']:.0%}) |")
    step = train["full_step"]
    rows.append(
        f"| demo pretraining step, batch {step['batch']} (cache reads, collate, {len(step['encoders_s'])} encoders, "
        f"loss, AdamW) | the same encoders alone, forward+backward on the same packed inputs "
        f"| {step['step_s']:.2f} s/step, {step['samples_per_s']:.1f} samples/s | {step['encoders_sum_s']:.2f} s "
        f"| {step['overhead']:+.1%} overhead (target < {train['targets']['overhead']:.0%}) |")
    mem = train["memory"]
    cached, small, large = mem["gradcache_large"], mem["plain_small"], mem["plain_large"]
    if mem["increment_ratio"] is None:
        rows.append(f"| step memory, {mem['model']} | failed: {cached.get('error') or small.get('error')} "
                    "| - | - | - |")
    else:
        plain_large = (f"plain {large['batch']}: {large['step_increment_mib']:.0f} MiB" if "error" not in large
                       else f"plain {large['batch']} failed")
        rows.append(
            f"| step memory increment (peak RSS − RSS before), {cached['batch']} samples with gradient caching "
            f"(chunk {cached['grad_cache_chunk']}), {mem['model']}; {plain_large} | plain {small['batch']}-sample "
            f"step | {cached['step_increment_mib']:.0f} MiB | {small['step_increment_mib']:.0f} MiB "
            f"| {mem['increment_ratio']:.2f}x (target ≤ {train['targets']['memory_ratio']}x) |")
    return rows


def main() -> int:
    os.chdir(ROOT)
    sys.path.insert(0, str(HERE))
    import bench_loading
    import bench_search
    import bench_service
    import bench_stats
    import bench_text_cache
    import bench_train

    loading = bench_loading.run()
    text = bench_text_cache.run()
    train = bench_train.run()
    search = bench_search.run()
    service = bench_service.run()
    statistics = bench_stats.run()
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
    lines += train_rows(train)
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
    lines += bench_search.rows(search)
    lines += bench_service.rows(service)
    lines += bench_stats.rows(statistics)
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
    results = {"loading": loading, "text_cache": text, "train": train, "search": search, "service": service,
               "stats": statistics}
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
