"""The pretraining loop: one process or many under torchrun, CPU or GPU, resumable at any step.

Every optimizer step is a pure function of (seed, step) and the state before it: the
batch order depends only on (seed, epoch) and the dropout RNG is re-seeded from
(seed, step, rank). So a run resumed from a step checkpoint replays exactly the steps
an uninterrupted run would take, and on CPU ends with identical weights.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import medfm.align  # noqa: F401  (registers the losses)
from medfm.atomic import commit_together, recover_together, write_json_atomic
from medfm.data.samplers import balanced_order
from medfm.errors import CheckpointError
from medfm.keys import Field, Modality, input_keys
from medfm.models.multimodal import MultimodalModel
from medfm.registry import LOSSES
from medfm.train.batches import EpochBatches, split_by_image
from medfm.train.checkpoint import has_train_state, load_train_state, remove_train_state, save_train_state
from medfm.train.config import TrainConfig
from medfm.train.distributed import (
    DistContext,
    average_gradients,
    barrier,
    check_same_samples,
    gather_with_grad,
    init_distributed,
)
from medfm.train.gradcache import gradcache_backward, plain_backward
from medfm.train.precision import Precision, resolve_precision
from medfm.train.steplog import StepLog

SUMMARY_NAME = "train_log.json"


def pretrain(model: MultimodalModel, samples: list[dict[str, Any]], config: TrainConfig,
             checkpoint_dir: str | Path, resume: bool = True, show_progress: bool = True,
             dist_ctx: DistContext | None = None, on_step: Callable[[int], None] | None = None,
             ) -> dict[str, Any]:
    """Align the model's modalities on ``samples``; checkpoint every N steps and every epoch.

    Under torchrun every rank passes the same ``samples``; rank r embeds positions
    ``r·B … (r+1)·B`` of each global batch of ``B × world size`` and the loss is taken
    over the gathered global batch. Only rank 0 writes files.

    Args:
        resume: continue from the training state in ``checkpoint_dir`` if there is one;
            otherwise an earlier state there is removed and training starts at step 0.
        dist_ctx: the process group (default: :func:`init_distributed` from the environment).
        on_step: called with the number of completed optimizer steps after each step
            (and after its checkpoint, if one is due).

    Returns:
        Summary: epochs, steps, where it resumed, seconds, per-epoch mean losses, final temperature.

    Raises:
        CheckpointError: the state to resume was written by a run with another world size.
        MedfmError: fewer than two samples, or ranks hold different samples.
    """
    ctx = dist_ctx or init_distributed()
    checkpoint_dir = Path(checkpoint_dir)
    if ctx.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        recover_together(checkpoint_dir)  # a save a kill interrupted: finished if it was complete, else dropped
    barrier(ctx)
    if config.threads:
        torch.set_num_threads(config.threads)
    check_same_samples(ctx, _fingerprint(samples))
    model.to(ctx.device)
    precision = resolve_precision(config.precision, ctx.device)
    loss_fn = _build_loss(config).to(ctx.device)
    optimizer = _optimizer(model, loss_fn, config)
    trainable = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    if config.batches == "by_modality":
        samples = split_by_image(samples)
    plan = _StepPlan(samples, config, ctx.world_size)
    patient_index = {p: i for i, p in enumerate(sorted({s[Field.META]["patient_id"] for s in samples}))}

    start_step, history, epoch_losses = 0, [], []
    if resume and has_train_state(checkpoint_dir):
        model.load_weights(checkpoint_dir)
        progress, loss_state = load_train_state(checkpoint_dir, optimizer)
        if progress.get("world_size", 1) != ctx.world_size:
            raise CheckpointError(f"{checkpoint_dir}: written by a run on {progress.get('world_size', 1)} "
                                  f"process(es), resumed on {ctx.world_size}: the batches would differ")
        loss_fn.load_state_dict(loss_state)
        start_step = progress.get("step", progress["epoch"] * plan.steps_per_epoch)
        history, epoch_losses = progress["history"], progress.get("epoch_losses", [])
    elif ctx.is_main:
        remove_train_state(checkpoint_dir)
    barrier(ctx)  # no rank starts before rank 0 has cleared or read the old state

    log = StepLog(checkpoint_dir, start_step) if ctx.is_main else None
    model.train()
    started = time.perf_counter()
    columns = (TextColumn("pretrain epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f} · {task.fields[rate]:.1f} samples/s"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not (show_progress and ctx.is_main)) as bar:
            task = bar.add_task("pretrain", total=plan.total_steps, completed=start_step,
                                epoch=start_step // plan.steps_per_epoch + 1, loss=float("nan"), rate=0.0)
            for step in range(start_step, plan.total_steps):
                epoch = step // plan.steps_per_epoch
                tick = time.perf_counter()
                loss, logs, n_samples = _train_step(model, loss_fn, optimizer, trainable, samples, config, plan,
                                                    step, patient_index, precision, ctx)
                seconds = time.perf_counter() - tick
                epoch_losses.append(loss)
                record = {"step": step + 1, "epoch": epoch + 1, "loss": loss, **logs,
                          "lr": optimizer.param_groups[0]["lr"],
                          "temperature": 1.0 / model.temperature_scale().item(),
                          "samples_per_s": n_samples / seconds, "seconds": seconds}
                if log is not None:
                    log.write(record)
                bar.update(task, advance=1, epoch=epoch + 1, loss=loss, rate=record["samples_per_s"])
                epoch_done = (step + 1) % plan.steps_per_epoch == 0
                if epoch_done:
                    history.append({"epoch": epoch + 1, "loss": sum(epoch_losses) / len(epoch_losses),
                                    "temperature": record["temperature"]})
                    epoch_losses = []
                every = config.checkpoint_every_steps
                if epoch_done or (every is not None and (step + 1) % every == 0):
                    _checkpoint(model, optimizer, loss_fn, checkpoint_dir, ctx, config, step + 1, history,
                                epoch_losses)
                if on_step is not None:
                    on_step(step + 1)
    finally:
        if log is not None:
            log.close()
    summary = {
        "epochs": config.epochs, "steps": plan.total_steps, "steps_per_epoch": plan.steps_per_epoch,
        "resumed_from_epoch": start_step // plan.steps_per_epoch, "resumed_from_step": start_step,
        "seconds": time.perf_counter() - started, "history": history,
        "final_temperature": 1.0 / model.temperature_scale().item(),
        "precision": precision, "world_size": ctx.world_size,
        "global_batch": config.batch_size * ctx.world_size,
    }
    if ctx.is_main:
        write_json_atomic(checkpoint_dir / SUMMARY_NAME, summary)
    model.eval()
    return summary


def _build_loss(config: TrainConfig) -> torch.nn.Module:
    """The contrastive objective named by the config, built with its options."""
    return LOSSES.get(config.loss.name)(config.loss)


class _StepPlan:
    """How samples map onto micro-batches and optimizer steps; depends only on sizes, not on the seed.

    A micro-batch is one global contrastive batch (``batch_size × world``), made by
    :class:`~medfm.train.batches.EpochBatches`; ``accumulate`` consecutive micro-batches
    form one optimizer step.
    """

    def __init__(self, samples: list[dict[str, Any]], config: TrainConfig, world_size: int):
        self.config = config
        self.n_samples = len(samples)
        self.per_rank = config.batch_size
        self.global_batch = config.batch_size * world_size
        self.batches = EpochBatches(samples, self.global_batch, config.batches == "by_modality", config.repeat)
        self.steps_per_epoch = math.ceil(len(self.batches) / config.accumulate)
        self.total_steps = self.steps_per_epoch * config.epochs
        self._epoch: dict[int, list[list[int]]] = {}

    def micro_batches(self, samples: list[dict[str, Any]], step: int) -> list[list[int]]:
        """Global sample indices of each micro-batch of optimizer step ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch not in self._epoch:
            # A private generator seeded by (seed, epoch): the batches survive a restart mid-epoch.
            generator = torch.Generator().manual_seed(_derived_seed(self.config.seed, epoch, "order"))
            order = None
            if self.config.batches == "mixed":
                order = (balanced_order(samples, self.config.balance_by, generator) if self.config.balance_by
                         else torch.randperm(self.n_samples, generator=generator))
            self._epoch = {epoch: self.batches.of_epoch(order, generator)}
        accumulate = self.config.accumulate
        return self._epoch[epoch][k * accumulate:(k + 1) * accumulate]


def _train_step(model: MultimodalModel, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                trainable: list[torch.nn.Parameter], samples: list[dict[str, Any]], config: TrainConfig,
                plan: _StepPlan, step: int, patient_index: dict[str, int], precision: Precision,
                ctx: DistContext) -> tuple[float, dict[str, float], int]:
    """One optimizer step over ``accumulate`` micro-batches; returns mean loss, mean pair losses, samples."""
    factor = _lr_factor(step, plan.total_steps, config.warmup_fraction)
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor
    # Dropout draws from the global RNG: seeding it per (seed, step, rank) makes a step replayable alone.
    torch.manual_seed(_derived_seed(config.seed, step, ctx.rank))
    optimizer.zero_grad(set_to_none=True)
    micro = plan.micro_batches(samples, step)
    losses, pair_logs, n = [], {}, 0
    for indices in micro:
        loss, logs = contrastive_backward(model, loss_fn, [samples[i] for i in indices], plan.per_rank,
                                          patient_index if config.mask_same_patient else None,
                                          config.grad_cache_chunk, precision, ctx, weight=1.0 / len(micro))
        losses.append(loss.item())
        for key, value in logs.items():
            pair_logs.setdefault(key, []).append(value)
        n += len(indices)
    average_gradients(trainable, ctx)
    torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
    optimizer.step()
    return sum(losses) / len(losses), {k: sum(v) / len(v) for k, v in pair_logs.items()}, n


def contrastive_backward(model: MultimodalModel, loss_fn: torch.nn.Module, batch: list[dict[str, Any]],
                         per_rank: int, patient_index: dict[str, int] | None, grad_cache_chunk: int | None,
                         precision: Precision, ctx: DistContext, weight: float = 1.0,
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Accumulate the gradients of ``weight × loss`` over one global batch into ``.grad``.

    Every rank holds the whole global ``batch`` (the same list on every rank), embeds
    its own slice ``rank·per_rank …``, gathers all slices' embeddings with gradients and
    computes the loss of the global batch. Masks and patient groups are computed from
    ``batch`` itself, identically on every rank, so they need no communication.
    Gradients are not averaged across ranks here (see :func:`average_gradients`).

    Returns:
        The detached loss of the global batch and the loss's per-pair logs.
    """
    device = ctx.device
    masks = {k: torch.tensor([k in s for s in batch], device=device) for k in input_keys(batch)}
    groups = None
    if patient_index is not None:
        groups = torch.tensor([patient_index[s[Field.META]["patient_id"]] for s in batch], device=device)
    bounds = [(r * per_rank, min((r + 1) * per_rank, len(batch))) for r in range(ctx.world_size)]
    counts = {m: [int(mask[lo:hi].sum()) if lo < hi else 0 for lo, hi in bounds] for m, mask in masks.items()}
    lo, hi = bounds[ctx.rank]
    local = batch[lo:hi] if lo < hi else []

    def loss_of(embeddings: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        full = {}
        for m in masks:
            mine = embeddings.get(m)
            if mine is None:  # this rank's slice lacks m: contribute no rows, still join the gather
                mine = torch.zeros(0, model.config.embed_dim, device=device, requires_grad=True)
            full[m] = gather_with_grad(mine, counts[m])
        return loss_fn(full, masks, model.temperature_scale(), groups)

    if grad_cache_chunk is not None:
        return gradcache_backward(model, local, grad_cache_chunk, loss_of, precision, device, weight)
    return plain_backward(model, local, loss_of, precision, device, weight)


def _checkpoint(model: MultimodalModel, optimizer: torch.optim.Optimizer, loss_fn: torch.nn.Module,
                directory: Path, ctx: DistContext, config: TrainConfig, step: int,
                history: list[dict[str, Any]], epoch_losses: list[float]) -> None:
    """Weights, adapters and training state replace the previous set together; rank 0 writes, all wait."""
    if ctx.is_main:
        progress = {"step": step, "epoch": len(history), "history": history, "epoch_losses": epoch_losses,
                    "world_size": ctx.world_size, "config": config.model_dump(mode="json")}

        def write(staging: Path) -> None:
            model.save_pretrained(staging)
            save_train_state(staging, optimizer, progress, loss_fn.state_dict())

        commit_together(directory, write)
    barrier(ctx)


def _optimizer(model: MultimodalModel, loss_fn: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, position embeddings, the temperature and loss parameters."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_text = name.startswith(f"encoders.{Modality.REPORT}.")
        lr = config.text_lr if is_text else config.lr
        decay = 0.0 if param.ndim < 2 or "position" in name or name == "logit_scale" else config.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    for param in loss_fn.parameters():  # e.g. SigLIP's bias: a scalar like the temperature
        if param.requires_grad:
            groups.setdefault((config.lr, 0.0), []).append(param)
    # fused: one kernel per group instead of ~10 per tensor; on CPU the per-tensor loop cost
    # 5x more (57 vs 11 ms per step for the demo model's 274 tensors, evaluation/bench/bench_train.py).
    return torch.optim.AdamW([{"params": p, "lr": lr, "peak_lr": lr, "weight_decay": wd}
                              for (lr, wd), p in groups.items()], fused=True)


def _lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warmup over ``warmup_fraction`` of the steps, then a cosine to zero."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _derived_seed(seed: int, index: int, salt: int | str) -> int:
    """A 63-bit seed from (seed, index, salt) that collides for no two inputs in practice."""
    text = str(salt).encode()
    entropy = [seed, index, int.from_bytes(hashlib.sha256(text).digest()[:4], "little")]
    return int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def _fingerprint(samples: list[dict[str, Any]]) -> str:
    """Hash of the study ids in order: equal on every rank iff they read the same split."""
    ids = "\n".join(str(s.get(Field.META, {}).get("study_id", i)) for i, s in enumerate(samples))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]
