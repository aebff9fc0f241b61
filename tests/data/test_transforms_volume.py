"""Volume and fundus input transforms: geometry, orientation, intensities, and real synthetic files."""

import numpy as np
import pandas as pd
import pytest
import torch

from medfm.cohort.synth import synthesize_cohort
from medfm.data.dataset import READERS
from medfm.data.transforms import (
    FUNDUS_MEAN,
    FUNDUS_STD,
    fundus_field_of_view,
    fundus_to_input,
    orientation_code,
    volume_to_input,
)
from medfm.errors import MedfmReadError
from medfm.io.images import Image, plane_affine
from medfm.keys import Modality
from medfm.models import load_model_config
from medfm.models.vision import ViT2dConfig, ViT2dEncoder
from medfm.models.volume import ViT3dConfig, ViT3dEncoder

from ..conftest import REPO


def _volume(array, spacing, orientation=(1.0, 0, 0, 0, 1.0, 0), normal_sign=1.0):
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    affine = plane_affine(spacing[1], spacing[2], orientation, (0.0, 0.0, 0.0),
                          normal_sign * np.cross(row_dir, col_dir) * spacing[0])
    return Image(array[None].astype(np.float32), affine, tuple(spacing), {})


def test_bright_cube_keeps_its_physical_size_after_resampling():
    # 10 mm cube in a volume of 1 x 0.5 x 0.5 mm voxels -> 2 mm target voxels: 5 voxels per side.
    array = np.zeros((40, 80, 80))
    array[15:25, 30:50, 30:50] = 1000.0
    image = _volume(array, (1.0, 0.5, 0.5))
    x = volume_to_input(image, (20, 20, 20), (2.0, 2.0, 2.0), window=(0, 1000), normalise="window")
    assert x.shape == (1, 20, 20, 20) and x.dtype == torch.float32
    inside = x[0] > 0.5
    for axis in range(3):
        extent_mm = inside.any(dim=tuple(a for a in range(3) if a != axis)).sum().item() * 2.0
        assert extent_mm == pytest.approx(10.0, abs=2.0), axis


def test_flipped_affine_gives_the_same_tensor_after_reorientation():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(8, 12, 10))
    array[2, 3, 4] = 50.0  # an asymmetric landmark
    reference = _volume(array, (2.0, 1.0, 1.0))
    # Same anatomy stored with slices reversed and columns running right instead of left.
    flipped_array = array[::-1, :, ::-1].copy()
    affine = reference.affine.copy()
    affine[:3, 3] = reference.affine[:3, :3] @ np.array([7, 0, 9]) + reference.affine[:3, 3]
    affine[:3, 0] *= -1
    affine[:3, 2] *= -1
    flipped = Image(flipped_array[None].astype(np.float32), affine, (2.0, 1.0, 1.0), {})
    assert orientation_code(flipped.affine) == "IPR" and orientation_code(reference.affine) == "SPL"
    args = dict(shape=(8, 12, 10), spacing_mm=(2.0, 1.0, 1.0), normalise="zscore", orientation="SPL")
    assert torch.allclose(volume_to_input(flipped, **args), volume_to_input(reference, **args))


def test_permuted_axes_are_brought_to_the_requested_order():
    array = np.zeros((6, 8, 10))
    array[1, 2, 3] = 1.0
    image = _volume(array, (1.0, 1.0, 1.0))
    x = volume_to_input(image, (10, 8, 6), (1.0, 1.0, 1.0), normalise="minmax", orientation="LPS")
    assert tuple(int(i) for i in (x[0] == x.max()).nonzero()[0]) == (3, 2, 1)


def test_ct_window_maps_hounsfield_units_and_pads_with_air():
    array = np.array([-2000.0, -1000.0, -300.0, 400.0, 1500.0]).reshape(1, 1, 5).repeat(2, axis=0)
    x = volume_to_input(_volume(array, (1.0, 1.0, 1.0)), (4, 1, 5), (1.0, 1.0, 1.0), window=(-1000, 400),
                        normalise="window")
    assert torch.allclose(x[0, 1, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert (x[0, 0] == 0).all() and (x[0, 3] == 0).all()  # zero padding = the window's low end (air)


def test_window_normalisation_requires_a_window_and_a_volume():
    image = _volume(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="window"):
        volume_to_input(image, (4, 4, 4), (1.0, 1.0, 1.0), normalise="window")
    flat = Image(np.zeros((1, 4, 4), np.float32), np.eye(4), (1.0, 1.0), {})
    with pytest.raises(MedfmReadError, match="volume"):
        volume_to_input(flat, (4, 4, 4), (1.0, 1.0, 1.0))


def _disc_photo(height=200, width=300, centre=(100, 170), radius=70, grey=False):
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    rgb = np.zeros((3, height, width), np.float32)
    rgb[0][disc], rgb[1][disc], rgb[2][disc] = 200.0, 90.0, 40.0
    rgb[:, 5, 5] = 255.0  # a hot pixel in the border must not stretch the crop
    array = rgb[:1] if grey else rgb
    return Image(array, np.eye(4), (1.0, 1.0), {"stored_dtype": "uint8"})


def test_fundus_field_of_view_finds_the_disc():
    # disc rows 30..170 and columns 100..240; the box may drop a tip row or column of 1-2
    # pixels (below 1 % of the line), never include the hot pixel at (5, 5).
    box = fundus_field_of_view(_disc_photo().array)
    assert np.allclose(box, (30, 171, 100, 241), atol=1)


def test_fundus_input_is_the_normalised_disc_filling_the_square():
    x = fundus_to_input(_disc_photo(), 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    centre = x[:, 32, 32]
    expected = (torch.tensor([200.0, 90.0, 40.0]) / 255 - torch.tensor(FUNDUS_MEAN)) / torch.tensor(FUNDUS_STD)
    assert torch.allclose(centre, expected, atol=1e-4)
    # the disc touches all four sides: its edge midpoints are inside, the corners outside
    assert torch.allclose(x[:, 32, 1], expected, atol=0.05) and torch.allclose(x[:, 1, 32], expected, atol=0.05)
    black = -torch.tensor(FUNDUS_MEAN) / torch.tensor(FUNDUS_STD)
    assert torch.allclose(x[:, 0, 0], black, atol=1e-4)


def test_grey_fundus_is_replicated_to_three_channels():
    x = fundus_to_input(_disc_photo(grey=True), 32)
    raw = x * torch.tensor(FUNDUS_STD).view(3, 1, 1) + torch.tensor(FUNDUS_MEAN).view(3, 1, 1)
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    manifest = synthesize_cohort(root, n_patients=12, seed=0, progress=False, modalities=["oct", "fundus", "ct"])
    return root, pd.read_csv(manifest)


def _files(cohort, column):
    root, table = cohort
    return [root / p for p in table[column].dropna()]


def test_readers_and_tiny_encoders_preprocess_real_synthetic_files(cohort):
    config = load_model_config(REPO / "configs/models/tiny.yaml")
    from medfm.models import create_model

    model = create_model(config, seed=0).eval()
    for modality, column in [(Modality.OCT, "oct_path"), (Modality.CT, "ct_path"), (Modality.FUNDUS, "fundus_path")]:
        files = _files(cohort, column)
        assert files, column
        spec = model.input_spec(modality)
        for path in files:
            x = model.preprocess(modality, READERS[modality](path))
            expected = (1, *spec["shape"]) if "shape" in spec else (3, spec["image_size"], spec["image_size"])
            assert tuple(x.shape) == expected and torch.isfinite(x).all(), path
        with torch.no_grad():
            embedding = model.encode(modality, x[None])
        assert embedding.shape == (1, config.embed_dim)


def test_ct_window_and_oct_zscore_on_real_files(cohort):
    ct = ViT3dEncoder(ViT3dConfig(image_size=(16, 32, 32), patch_size=(4, 8, 8), spacing_mm=(12.5, 11.0, 11.0),
                                  normalise="window", window=(-1000, 400), hidden_size=16, num_layers=1,
                                  num_heads=2, mlp_dim=16))
    image = READERS[Modality.CT](_files(cohort, "ct_path")[0])
    x = ct.preprocess(image)
    assert x.min() >= 0 and x.max() <= 1
    assert (x == 0).float().mean() > 0.2  # air around and inside the chest
    assert ((x > 0.6) & (x < 1)).any()  # soft tissue between the window's ends
    oct_encoder = ViT3dEncoder(ViT3dConfig(image_size=(16, 32, 32), patch_size=(4, 8, 8),
                                           spacing_mm=(0.375, 0.04, 0.1875), orientation="PSL",
                                           hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16))
    devices = {}
    for path in _files(cohort, "oct_path"):
        image = READERS[Modality.OCT](path)
        x = oct_encoder.preprocess(image)
        devices[image.array.shape] = x
    assert len(devices) == 2  # two OCT devices with different sampling land on one grid
    for x in devices.values():
        assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 1.5


def test_fundus_png_and_dicom_both_read_and_fill_the_input(cohort):
    encoder = ViT2dEncoder(ViT2dConfig(image_size=32, patch_size=8, transform="fundus", in_channels=3,
                                       hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16))
    kinds = set()
    for path in _files(cohort, "fundus_path"):
        kinds.add(path.suffix)
        x = encoder.preprocess(READERS[Modality.FUNDUS](path))
        assert x.shape == (3, 32, 32)
        black = -torch.tensor(FUNDUS_MEAN) / torch.tensor(FUNDUS_STD)
        assert not torch.allclose(x[:, 16, 16], black, atol=0.1)  # the centre is retina, not border
    assert kinds == {".png", ".dcm"}
    assert encoder(x[None]).shape == (1, 16)


def test_readers_refuse_a_format_foreign_to_the_modality(tmp_path, cohort):
    from medfm.io import UnsupportedFormatError

    png = next(p for p in _files(cohort, "fundus_path") if p.suffix == ".png")
    with pytest.raises(UnsupportedFormatError, match="not a ct format"):
        READERS[Modality.CT](png)
