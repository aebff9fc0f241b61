"""MAE-style masked pretraining of a ``vit3d`` encoder alone (He et al., CVPR 2022).

A random 75 % of the patch tokens is dropped; the encoder sees only the rest, and a
small decoder (mask tokens + its own position embeddings + a few transformer layers)
reconstructs the voxels of the dropped patches, each patch normalised to zero mean and
unit variance (the paper's ``norm_pix_loss``: predicting local structure, not brightness).
The loss is the MSE over masked patches only; visible patches would be copied.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from monai.networks.blocks import TransformerBlock
from pydantic import Field
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medfm.atomic import write_atomic, write_json_atomic
from medfm.config import Config
from medfm.errors import CheckpointError
from medfm.models.trust import FILES, checked_record, expected_sha256, load_tensors, record_of
from medfm.models.volume import ViT3dEncoder

ENCODER_WEIGHTS = "encoder.safetensors"
MAE_META = "mae.json"


class MAEConfig(Config):
    """Pretraining run of :func:`pretrain_mae`.

    Attributes:
        steps: optimiser steps (the loader cycles over the volumes as often as needed).
        warmup_steps: linear warm-up before cosine decay to zero.
    """

    mask_ratio: float = Field(0.75, gt=0, lt=1)
    decoder_dim: int = Field(64, ge=8)
    decoder_layers: int = Field(2, ge=1)
    decoder_heads: int = Field(2, ge=1)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1.5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(40, ge=0)
    seed: int = 0


def patchify(volumes: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """``(B, C, D, H, W)`` → ``(B, N, C·pd·ph·pw)`` in the token order of MONAI's conv patch embedding."""
    b, c, d, h, w = volumes.shape
    pd, ph, pw = patch
    x = volumes.reshape(b, c, d // pd, pd, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (d // pd) * (h // ph) * (w // pw), c * pd * ph * pw)


class MaskedVolumePretrainer(nn.Module):
    """Encoder (shared with ``vit3d``) + MAE decoder; ``forward`` returns ``(loss, pred, mask)``.

    Args:
        encoder: the ``vit3d`` encoder whose patch embedding and blocks are trained.
        decoder_dim: width of the decoder, narrower than the encoder as in the paper
            (the decoder is discarded, so its capacity is spent only on pretraining).
        decoder_layers: transformer layers of the decoder.
        mask_ratio: fraction of patches hidden from the encoder.
    """

    def __init__(self, encoder: ViT3dEncoder, decoder_dim: int = 64, decoder_layers: int = 2,
                 mask_ratio: float = 0.75, decoder_heads: int = 2):
        super().__init__()
        n = encoder.n_tokens
        n_masked = int(n * mask_ratio)
        if not 0 < n_masked < n:
            raise ValueError(f"mask_ratio {mask_ratio} of {n} patches leaves no masked or no visible patch")
        if decoder_dim % decoder_heads:
            raise ValueError(f"decoder_dim {decoder_dim} is not a multiple of decoder_heads {decoder_heads}")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.n_masked = n_masked
        patch = encoder.config.patch_size
        self.patch = patch
        self.embed = nn.Linear(encoder.config.hidden_size, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.position = nn.Parameter(torch.zeros(1, n, decoder_dim))
        self.blocks = nn.ModuleList([TransformerBlock(decoder_dim, 4 * decoder_dim, decoder_heads, qkv_bias=True)
                                     for _ in range(decoder_layers)])
        self.norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, math.prod(patch))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)

    def random_mask(self, batch: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, indices of the visible patches and the ``(B, N)`` mask (1 = hidden)."""
        order = torch.rand(batch, n, device=device).argsort(dim=1)
        keep = order[:, : n - self.n_masked]
        mask = torch.ones(batch, n, device=device)
        mask.scatter_(1, keep, 0.0)
        return keep, mask

    def forward(self, volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vit = self.encoder.vit
        tokens = vit.patch_embedding(volumes)  # (B, N, hidden), position embeddings added
        b, n, hidden = tokens.shape
        keep, mask = self.random_mask(b, n, tokens.device)
        x = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, hidden))
        for block in vit.blocks:
            x = block(x)
        x = self.embed(vit.norm(x))
        full = self.mask_token.expand(b, n, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, full.shape[-1]), x)
        x = full + self.position
        for block in self.blocks:
            x = block(x)
        pred = self.head(self.norm(x))
        return self.loss(volumes, pred, mask), pred, mask

    def target(self, volumes: torch.Tensor) -> torch.Tensor:
        """Voxels per patch, each patch normalised to zero mean and unit variance."""
        patches = patchify(volumes, self.patch)
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    def loss(self, volumes: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the voxels of masked patches only."""
        per_patch = ((pred - self.target(volumes)) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()




def pretrain_mae(encoder: ViT3dEncoder, volumes: list[torch.Tensor] | Dataset, config: MAEConfig,
                 checkpoint_dir: str | Path) -> dict:
    """Pretrain ``encoder`` in place with MAE and save its weights to ``checkpoint_dir``.

    AdamW (betas 0.9/0.95 as in the paper), linear warm-up then cosine decay; batch
    order, masks and initialisation of the decoder depend only on ``config.seed``.
    Writes ``encoder.safetensors`` (the encoder's state dict, the ``vit3d`` keys) and
    ``mae.json`` (the encoder config, its input spec and the loss history), atomically.

    Args:
        volumes: ``(1, D, H, W)`` tensors already through ``encoder.preprocess``, or a
            Dataset of them.

    Returns:
        ``{"steps", "losses", "final_loss", "weights"}``.
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = MaskedVolumePretrainer(encoder, config.decoder_dim, config.decoder_layers, config.mask_ratio,
                                   config.decoder_heads)
    model.train()
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "position" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or "position" in name]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    loader = DataLoader(volumes, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    losses: list[float] = []
    while len(losses) < config.steps:
        for batch in loader:
            loss, _, _ = model(batch.float())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if len(losses) >= config.steps:
                break

    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in encoder.state_dict().items()}
    weights = write_atomic(directory / ENCODER_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(directory / MAE_META, {
        "encoder": encoder.config.model_dump(mode="json"), "input_spec": encoder.input_spec(),
        "mae": config.model_dump(mode="json"), "losses": losses, FILES: record_of(directory, [weights]),
    })
    return {"steps": len(losses), "losses": losses, "final_loss": losses[-1], "weights": str(weights)}


def load_mae_encoder(encoder: ViT3dEncoder, checkpoint_dir: str | Path) -> ViT3dEncoder:
    """Load weights written by :func:`pretrain_mae` into ``encoder`` (same architecture required).

    Raises:
        CheckpointError: a file is missing, or the checkpoint was pretrained with a
            different encoder config (another grid or width would load wrong or not at all).
    """
    directory = Path(checkpoint_dir)
    for name in (ENCODER_WEIGHTS, MAE_META):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing; not an MAE checkpoint written by pretrain_mae")
    where = directory / MAE_META
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
        saved = meta["encoder"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: not an MAE record written by pretrain_mae ({type(err).__name__}: {err})") \
            from None
    current = encoder.config.model_dump(mode="json")
    different = sorted(k for k in current if saved.get(k) != current[k] and k != "dropout")
    if different:
        raise CheckpointError(f"{where}: encoder config differs in {', '.join(different)}")
    hashes = checked_record(directory, meta.get(FILES), where)
    weights = directory / ENCODER_WEIGHTS
    encoder.load_state_dict(load_tensors(weights, expected_sha256(hashes, directory, weights, where), where))
    return encoder
