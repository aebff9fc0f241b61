"""The pretraining loop: one process, CPU or GPU, resumable at epoch boundaries."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import medfm.align  # noqa: F401,E402  (registers the losses)
from medfm.atomic import write_json_atomic
from medfm.data.dataset import collate_samples
from medfm.data.samplers import balanced_order
from medfm.keys import Field, Modality
from medfm.models.multimodal import MultimodalModel
from medfm.registry import LOSSES
from medfm.train.checkpoint import has_train_state, load_train_state, save_train_state
from medfm.train.config import TrainConfig


def pretrain(model: MultimodalModel, samples: list[dict[str, Any]], config: TrainConfig,
             checkpoint_dir: str | Path, resume: bool = True, show_progress: bool = True) -> dict[str, Any]:
    """Align the model's modalities on ``samples``; checkpoint after every epoch.

    If ``checkpoint_dir`` already holds a checkpoint from an earlier, interrupted run
    with the same config and ``resume`` is set, training continues after its last
    completed epoch and ends with the same weights an uninterrupted run gives.

    Returns:
        Summary: epochs run, steps, seconds, per-epoch mean losses, final temperature.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    loss_fn = LOSSES.get(config.loss)()
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(len(samples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and has_train_state(checkpoint_dir):
        model.load_weights(checkpoint_dir)
        progress_state = load_train_state(checkpoint_dir, optimizer)
        start_epoch, history = progress_state["epoch"], progress_state["history"]

    patient_index: dict[str, int] = {}
    model.train()
    started = time.perf_counter()
    columns = (TextColumn("pretrain epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress) as bar:
        task = bar.add_task("pretrain", total=total_steps, completed=start_epoch * steps_per_epoch,
                            epoch=start_epoch + 1, loss=float("nan"))
        for epoch in range(start_epoch, config.epochs):
            # Batch order and dropout depend only on (seed, epoch): a resumed run repeats them exactly.
            generator = torch.manual_seed(config.seed * 1000 + epoch)
            if config.balance_by:
                order = balanced_order(samples, config.balance_by, generator)
            else:
                order = torch.randperm(len(samples))
            losses = []
            for step_in_epoch in range(steps_per_epoch):
                picked = order[step_in_epoch * config.batch_size:(step_in_epoch + 1) * config.batch_size]
                if len(picked) < 2:
                    continue
                batch = collate_samples([samples[i] for i in picked])
                step = epoch * steps_per_epoch + step_in_epoch
                for group in optimizer.param_groups:
                    group["lr"] = group["peak_lr"] * _lr_factor(step, total_steps, config.warmup_fraction)
                groups = None
                if config.mask_same_patient:
                    groups = torch.tensor([patient_index.setdefault(m["patient_id"], len(patient_index))
                                           for m in batch[Field.META]])
                loss, _ = loss_fn(model(batch), batch[Field.MASK], model.temperature_scale(), groups)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                losses.append(loss.item())
                bar.update(task, advance=1, epoch=epoch + 1, loss=loss.item())
            history.append({"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1),
                            "temperature": 1.0 / model.temperature_scale().item()})
            model.save_pretrained(checkpoint_dir)
            save_train_state(checkpoint_dir, optimizer, {"epoch": epoch + 1, "history": history,
                                                         "config": config.model_dump(mode="json")})
    summary = {
        "epochs": config.epochs, "resumed_from_epoch": start_epoch, "steps": total_steps,
        "seconds": time.perf_counter() - started, "history": history,
        "final_temperature": 1.0 / model.temperature_scale().item(),
    }
    write_json_atomic(checkpoint_dir / "train_log.json", summary)
    model.eval()
    return summary


def _optimizer(model: MultimodalModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, position embeddings and the temperature."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_text = name.startswith(f"encoders.{Modality.REPORT}.")
        lr = config.text_lr if is_text else config.lr
        decay = 0.0 if param.ndim < 2 or "position" in name or name == "logit_scale" else config.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW([{"params": p, "lr": lr, "peak_lr": lr, "weight_decay": wd}
                              for (lr, wd), p in groups.items()])


def _lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
