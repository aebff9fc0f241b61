"""MAE pretraining of vit3d: it learns, the loss sees only masked patches, weights load back."""

import pytest
import torch

from medfm.errors import CheckpointError
from medfm.models.mae import MAEConfig, MaskedVolumePretrainer, load_mae_encoder, patchify, pretrain_mae
from medfm.models.volume import ViT3dConfig, ViT3dEncoder

CONFIG = ViT3dConfig(image_size=(8, 16, 16), patch_size=(4, 4, 4), hidden_size=32, num_layers=1, num_heads=2,
                     mlp_dim=64)


def _volumes(n=4):
    g = torch.Generator().manual_seed(1)
    z, y, x = torch.meshgrid(torch.arange(8.0), torch.arange(16.0), torch.arange(16.0), indexing="ij")
    return [torch.sin(x * a + y * b + z * 0.3 + c)[None] for a, b, c in torch.rand(n, 3, generator=g) * 2]


def test_loss_decreases_on_a_small_fixed_set(tmp_path):
    torch.manual_seed(0)
    config = MAEConfig(steps=30, batch_size=4, lr=3e-3, warmup_steps=3, decoder_dim=32, decoder_layers=1)
    out = pretrain_mae(ViT3dEncoder(CONFIG), _volumes(), config, tmp_path)
    first, last = sum(out["losses"][:5]) / 5, sum(out["losses"][-5:]) / 5
    # Predicting zero for every normalised patch scores 1.0; below it the model has learnt structure.
    assert last < 0.92 and last < first - 0.15, out["losses"]


def test_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    model = MaskedVolumePretrainer(ViT3dEncoder(CONFIG), decoder_dim=16, decoder_layers=1, mask_ratio=0.75)
    volumes = torch.stack(_volumes(2))
    loss, pred, mask = model(volumes)
    visible = (mask == 0)[..., None]
    changed_visible = torch.where(visible, pred + 5.0, pred)
    assert torch.allclose(model.loss(volumes, changed_visible, mask), loss)
    changed_masked = torch.where(visible, pred, pred + 5.0)
    assert model.loss(volumes, changed_masked, mask) > loss + 1.0


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_mask_ratio_is_respected_per_sample(ratio):
    model = MaskedVolumePretrainer(ViT3dEncoder(CONFIG), decoder_dim=16, decoder_layers=1, mask_ratio=ratio)
    _, pred, mask = model(torch.randn(3, 1, 8, 16, 16))
    assert pred.shape == (3, 32, 64) and mask.shape == (3, 32)
    assert (mask.sum(dim=1) == int(32 * ratio)).all()
    assert not torch.equal(mask[0], mask[1])  # masks are drawn per sample


def test_patchify_follows_the_patch_embedding_token_order():
    volume = torch.zeros(1, 1, 8, 16, 16)
    volume[0, 0, 4:8, 0:4, 12:16] = 1.0  # patch (1, 0, 3) of the 2x4x4 grid
    patches = patchify(volume, (4, 4, 4))
    assert patches.sum(-1).nonzero().flatten().tolist() == [0, 1 * 16 + 0 * 4 + 3]


def test_pretrained_weights_load_into_vit3d_and_change_its_output(tmp_path):
    torch.manual_seed(0)
    config = MAEConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=0, decoder_dim=16, decoder_layers=1)
    pretrain_mae(ViT3dEncoder(CONFIG), _volumes(), config, tmp_path)
    torch.manual_seed(1)
    fresh = ViT3dEncoder(CONFIG).eval()
    x = torch.stack(_volumes(2))
    before = fresh(x)
    loaded = load_mae_encoder(fresh, tmp_path)
    assert not torch.allclose(loaded(x), before)
    other = ViT3dEncoder(CONFIG.model_copy(update={"hidden_size": 16, "mlp_dim": 32}))
    with pytest.raises(CheckpointError, match="hidden_size"):
        load_mae_encoder(other, tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        load_mae_encoder(fresh, tmp_path / "nowhere")


def test_a_truncated_or_altered_mae_checkpoint_is_refused(tmp_path):
    import json
    import warnings

    from medfm.models.mae import ENCODER_WEIGHTS, MAE_META
    from medfm.models.trust import UnverifiedCheckpointWarning

    torch.manual_seed(0)
    config = MAEConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=0, decoder_dim=16, decoder_layers=1)
    pretrain_mae(ViT3dEncoder(CONFIG), _volumes(), config, tmp_path)
    weights, meta = tmp_path / ENCODER_WEIGHTS, tmp_path / MAE_META
    good = weights.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint written now is verified, not merely trusted
        load_mae_encoder(ViT3dEncoder(CONFIG), tmp_path)
    for damaged in (good[:-100], good[:-1] + bytes([good[-1] ^ 1])):
        weights.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=f"{ENCODER_WEIGHTS}: does not match the SHA-256 recorded in "
                                                  f"{MAE_META}"):
            load_mae_encoder(ViT3dEncoder(CONFIG), tmp_path)
    weights.write_bytes(good)
    record = json.loads(meta.read_text())
    del record["files"]  # written before hashes were recorded: loads, with a warning
    meta.write_text(json.dumps(record))
    with pytest.warns(UnverifiedCheckpointWarning):
        load_mae_encoder(ViT3dEncoder(CONFIG), tmp_path)
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(CheckpointError, match=f"{MAE_META}: not an MAE record"):
        load_mae_encoder(ViT3dEncoder(CONFIG), tmp_path)
