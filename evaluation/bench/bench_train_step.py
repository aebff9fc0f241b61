"""Training throughput of each demo encoder against this machine's fp32 matmul peak.

Baseline: a large square fp32 matmul measured in the same run (the best a dense
kernel reaches here). The ratio is the share of that peak each encoder's training
step achieves, FLOPs counted by torch's FLOP counter.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from medfm.keys import Modality
from medfm.models import create_model, load_model_config


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def run(batch: int = 32, repeats: int = 3) -> dict:
    config = load_model_config("configs/models/demo.yaml")
    model = create_model(config, seed=0).train()
    cxr, ecg = config.encoder_config(Modality.CXR), config.encoder_config(Modality.ECG)
    inputs = {
        Modality.CXR: torch.rand(batch, 1, cxr.image_size, cxr.image_size),
        Modality.ECG: torch.randn(batch, 12, round(ecg.sample_rate * ecg.duration_s)) * 0.5,
    }
    peak = matmul_peak_gflops()
    rows = {}
    for modality, x in inputs.items():
        def step(modality=modality, x=x):
            model.zero_grad(set_to_none=True)
            model.encode(modality, x).sum().backward()
        with FlopCounterMode(display=False) as counter:
            step()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        seconds = (time.perf_counter() - start) / repeats
        gflops = counter.get_total_flops() / seconds / 1e9
        rows[str(modality)] = {"step_s": seconds, "samples_per_s": batch / seconds,
                               "gflops": gflops, "share_of_peak": gflops / peak}
    return {"name": f"encoder training step, batch {batch}", "baseline": "fp32 matmul 2048³ peak",
            "peak_gflops": peak, "encoders": rows}
