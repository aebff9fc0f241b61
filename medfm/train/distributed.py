"""One process or many under ``torchrun``: process-group setup and gathers that keep gradients.

Contrastive losses need every other sample of the global batch as a negative, so each
rank embeds its slice of the batch and the packed embeddings of all ranks are gathered
*with* gradients; every rank then computes the same loss on the whole global batch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from medfm.errors import MedfmError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, how many there are, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and logs, so files are never written twice."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_s: float = 1800.0) -> DistContext:
    """Join the process group ``torchrun`` describes in RANK/WORLD_SIZE/LOCAL_RANK; no-op alone.

    The backend is nccl when CUDA is available (one GPU per local rank), gloo on CPU.
    A group that already exists (e.g. set up by a test harness) is used as it is.

    Raises:
        MedfmError: the torchrun environment is incomplete or asks for more GPUs than exist.
    """
    if dist.is_available() and dist.is_initialized():
        return _context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except KeyError as err:
        raise MedfmError(f"WORLD_SIZE={world_size} but {err.args[0]} is not set: start with torchrun") from None
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise MedfmError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    return _context(rank, world_size, local_rank)


def _context(rank: int, world_size: int, local_rank: int) -> DistContext:
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", local_rank) if nccl else torch.device("cpu")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the group this module created (a no-op alone)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def gather_with_grad(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's packed rows (``counts[r]`` rows on rank r), keeping the graph.

    Ranks hold different numbers of packed rows (a modality present in more samples of
    one slice), and ``all_gather`` needs equal shapes, so rows are padded to the largest
    count and the padding cut off after. Gradients flow back to each rank's own rows:
    the backward sums the copies of all ranks, which the gradient average later divides.
    A rank with no rows must still pass a tensor that requires grad, or it would skip
    the backward collective the others wait in.
    """
    if len(counts) == 1:
        return local
    width = max(counts)
    if width == 0:
        return local[:0]
    padded = torch.cat([local, local.new_zeros((width - len(local), *local.shape[1:]))])
    with warnings.catch_warnings():  # deprecated in favour of a functional API without autograd on gloo
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_nn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


def average_gradients(parameters: list[torch.nn.Parameter], ctx: DistContext, bucket_mb: float = 64.0) -> None:
    """Mean of each parameter's gradient over ranks, in flat buckets to save round trips.

    An explicit all-reduce rather than ``DistributedDataParallel``: a rank whose slice
    lacks a modality leaves that encoder's gradients empty (zero here if another rank used
    it, no ``find_unused_parameters`` graph search), and gradient caching runs several backward
    passes per step, which DDP would sync (or need ``no_sync``) at each one.
    """
    if not ctx.distributed:
        return
    # A parameter no rank used (a modality absent from the whole global batch) keeps grad None,
    # as it would alone, so AdamW skips it (no weight decay step); one used anywhere is reduced.
    used = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(used)
    parameters = [p for p, n in zip(parameters, used.tolist(), strict=True) if n > 0]
    for param in parameters:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    limit = int(bucket_mb * 2**20)
    bucket: list[torch.Tensor] = []
    size = 0
    for param in parameters:
        bucket.append(param.grad)
        size += param.grad.numel() * param.grad.element_size()
        if size >= limit:
            _reduce_bucket(bucket, ctx.world_size)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, ctx.world_size)


def _reduce_bucket(grads: list[torch.Tensor], world_size: int) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for same in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in same:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def check_same_samples(ctx: DistContext, fingerprint: str) -> None:
    """Fail fast if ranks were given different sample lists.

    Every rank slices the same global batch order out of its own copy of the samples;
    different copies would silently pair the wrong embeddings.

    Raises:
        MedfmError: two ranks hold different samples.
    """
    if not ctx.distributed:
        return
    seen: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(seen, fingerprint)
    if len(set(seen)) != 1:
        raise MedfmError(f"ranks hold different training samples (fingerprints {sorted(set(seen))}); "
                         "every rank must read the same split")
