import math

import pytest
import torch

from medfm.align import SymmetricInfoNCE, pairwise_infonce
from medfm.keys import Modality


def logsumexp(*values):
    return math.log(sum(math.exp(v) for v in values))


def test_against_hand_computed_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # logits = a @ b.T = [[0.6, 1.0], [0.8, 0.0]]
    rows = [-0.6 + logsumexp(0.6, 1.0), -0.0 + logsumexp(0.8, 0.0)]
    cols = [-0.6 + logsumexp(0.6, 0.8), -0.0 + logsumexp(1.0, 0.0)]
    expected = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    assert pairwise_infonce(a, b, torch.tensor(1.0)).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_sharpens():
    a = torch.eye(2)
    assert pairwise_infonce(a, a, torch.tensor(1.0)).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert pairwise_infonce(a, a, torch.tensor(2.0)).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_same_patient_rows_are_not_negatives():
    a = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    groups = torch.tensor([7, 7, 9])
    logits = a @ b.T
    masked = logits.clone()
    masked[0, 1] = masked[1, 0] = float("-inf")
    target = torch.arange(3)
    expected = 0.5 * (torch.nn.functional.cross_entropy(masked, target)
                      + torch.nn.functional.cross_entropy(masked.T, target))
    assert pairwise_infonce(a, b, torch.tensor(1.0), groups).item() == pytest.approx(expected.item(), abs=1e-6)


def test_missing_modalities_only_drop_their_pairs():
    torch.manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 8), dim=-1)  # noqa: E731
    cxr, report, ecg = unit(4), unit(4), unit(2)  # samples 1 and 3 have no ECG
    masks = {Modality.CXR: torch.ones(4, dtype=torch.bool), Modality.REPORT: torch.ones(4, dtype=torch.bool),
             Modality.ECG: torch.tensor([True, False, True, False])}
    scale = torch.tensor(5.0)
    loss, logs = SymmetricInfoNCE()({Modality.CXR: cxr, Modality.ECG: ecg, Modality.REPORT: report}, masks, scale)
    expected = {
        "cxr-report": pairwise_infonce(cxr, report, scale),
        "cxr-ecg": pairwise_infonce(cxr[[0, 2]], ecg, scale),
        "ecg-report": pairwise_infonce(ecg, report[[0, 2]], scale),
    }
    assert logs == pytest.approx({k: v.item() for k, v in expected.items()})
    assert loss.item() == pytest.approx(sum(logs.values()) / 3)


def test_a_pair_with_one_shared_sample_is_skipped():
    masks = {Modality.CXR: torch.tensor([True, True, True]), Modality.ECG: torch.tensor([False, True, False]),
             Modality.REPORT: torch.tensor([True, True, True])}
    emb = {Modality.CXR: torch.eye(3), Modality.ECG: torch.eye(3)[:1], Modality.REPORT: torch.eye(3)}
    _, logs = SymmetricInfoNCE()(emb, masks, torch.tensor(1.0))
    assert set(logs) == {"cxr-report"}


def test_gradients_reach_both_sides():
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    b = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    pairwise_infonce(a, b, torch.tensor(10.0)).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
