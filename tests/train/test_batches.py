"""Epoch batches: mixed studies, or one modality per batch with each image's own report."""

import pytest
import torch

from medfm.errors import MedfmError
from medfm.keys import Field, Modality, report_of
from medfm.train import TrainConfig
from medfm.train.batches import EpochBatches, modality_of, split_by_image

CXR, OCT, CT = Modality.CXR, Modality.OCT, Modality.CT


def study(i, *images):
    sample = {Field.LABEL: {}, Field.META: {"study_id": f"S{i}", "patient_id": f"P{i}"}}
    for image in images:
        sample[image] = torch.full((1,), float(i))
        sample[report_of(image)] = f"{image} report of study {i}"
    return sample


def test_a_study_becomes_one_sample_per_image_with_its_own_report():
    studies = [study(0, CXR, OCT), study(1, CXR)]
    del studies[1][report_of(CXR)]  # an image without its own report has nothing to align with
    views = split_by_image(studies)
    assert sorted(sorted(map(str, v)) for v in views) == [
        sorted(["cxr", "report.cxr", "label", "meta"]), sorted(["oct", "report.oct", "label", "meta"])]
    oct_view = next(v for v in views if OCT in v)
    assert oct_view[report_of(OCT)] == "oct report of study 0" and oct_view[Field.META]["study_id"] == "S0"


def test_studies_with_one_joined_report_cannot_be_split():
    joined = {CXR: torch.zeros(1), Modality.REPORT: "one document", Field.LABEL: {}, Field.META: {}}
    with pytest.raises(MedfmError, match="own report"):
        split_by_image([joined])


def test_each_batch_holds_one_modality_and_repeat_draws_it_again():
    views = split_by_image([study(i, CXR) for i in range(10)] + [study(i, CT) for i in range(10, 13)])
    batches = EpochBatches(views, global_batch=4, by_modality=True, repeat={CT: 3})
    # cxr: 10 samples -> 4 + 4 + 2; ct: 3 x 3 = 9 samples -> 4 + 4 + a lone 1, dropped.
    assert len(batches) == 5
    epoch = batches.of_epoch(None, torch.Generator().manual_seed(0))
    assert len(epoch) == len(batches)
    for batch in epoch:
        assert len({modality_of(views[i]) for i in batch}) == 1
    ct_draws = sorted(i for batch in epoch for i in batch if modality_of(views[i]) == CT)
    assert len(ct_draws) == 8 and set(ct_draws) == {10, 11, 12}
    cxr_draws = sorted(i for batch in epoch for i in batch if modality_of(views[i]) == CXR)
    assert cxr_draws == list(range(10))
    again = batches.of_epoch(None, torch.Generator().manual_seed(0))
    assert again == epoch  # the epoch's generator alone decides: a resumed run sees the same batches


def test_mixed_batches_cut_the_order_and_drop_a_lone_last_sample():
    batches = EpochBatches([{}] * 9, global_batch=4, by_modality=False)
    assert len(batches) == 2
    assert batches.of_epoch(torch.arange(9), torch.Generator()) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(("extra", "match"), [
    ({"loss": "infonce"}, "pairs: anchor"),
    ({"loss": {"name": "gram", "pairs": "anchor", "anchor": "report"}}, "pairs: anchor"),
    ({"balance_by": ["site"]}, "balance_by"),
])
def test_by_modality_needs_anchor_pairs_on_report(extra, match):
    config = {"batches": "by_modality", "loss": {"name": "infonce", "pairs": "anchor", "anchor": "report"}, **extra}
    with pytest.raises(ValueError, match=match):
        TrainConfig.model_validate(config)


def test_repeat_needs_by_modality_and_image_modalities():
    with pytest.raises(ValueError, match="needs batches: by_modality"):
        TrainConfig.model_validate({"repeat": {"ct": 2}})
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig.model_validate({"batches": "by_modality", "repeat": {"ct": 0},
                                    "loss": {"name": "infonce", "pairs": "anchor", "anchor": "report"}})
