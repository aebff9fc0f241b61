"""Report-encoder training step: frozen-prefix cache vs recomputing the frozen layers.

Baseline: the same model, same LoRA layer, same batch, with the cache disabled
(`cache_frozen_prefix: false`), i.e. every step runs all six MiniLM layers forward.
"""

from __future__ import annotations

import time

import torch

from medfm.models import load_model_config
from medfm.models.text import HFTextEncoder, LoraSpec

REPORTS = [
    "EXAMINATION: Chest radiograph, PA view. FINDINGS: The heart is enlarged. Small left pleural effusion "
    "with blunting of the costophrenic angle. No pneumothorax. No focal consolidation. IMPRESSION: "
    f"Cardiomegaly and small left effusion. 12-lead ECG. Rhythm: sinus rhythm. Ventricular rate {60 + i} bpm. "
    "Interpretation: Normal axis. Voltage criteria for left ventricular hypertrophy. Abnormal ECG."
    for i in range(32)
]


def step_seconds(encoder: HFTextEncoder, repeats: int = 5) -> float:
    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    def step():
        for p in params:
            p.grad = None
        encoder(REPORTS).sum().backward()
    step()  # warm-up, and fills the cache when enabled
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def run() -> dict:
    # The demo's MiniLM with LoRA on its last layer (the demo model itself keeps the text frozen).
    config = load_model_config("configs/models/demo.yaml").encoder_config("report").model_copy(update={
        "lora": LoraSpec(r=8, alpha=16, dropout=0.0, layers=[5], target_modules=["query", "key", "value", "dense"])})
    torch.manual_seed(0)
    cached = step_seconds(HFTextEncoder(config))
    torch.manual_seed(0)
    uncached = step_seconds(HFTextEncoder(config.model_copy(update={"cache_frozen_prefix": False})))
    return {
        "name": "report encoder training step (batch 32, ~110 tokens, LoRA on layer 5 of 6)",
        "baseline": "frozen layers recomputed every step",
        "measured_s": cached, "baseline_s": uncached, "speedup": uncached / cached,
    }
