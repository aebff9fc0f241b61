"""Cross-modal recall@k against a brute-force count."""

import numpy as np
import pytest
import torch

from medfm.evaluation.retrieval import cross_modal_retrieval, paired_recall_at_k
from medfm.keys import Modality, report_of
from medfm.pipeline import evaluate_retrieval


def brute_force_recall(q, g, k):
    found = 0
    for i in range(len(q)):
        match = float(q[i] @ g[i])
        closer = sum(1 for j in range(len(g)) if j != i and float(q[i] @ g[j]) >= match)
        found += closer < k
    return found / len(q)


def test_recall_matches_a_direct_count():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    gal = torch.nn.functional.normalize(q + 0.8 * torch.randn(40, 8, generator=g), dim=1)
    result = paired_recall_at_k(q, gal)
    for k in (1, 5, 10):
        assert result[f"recall@{k}"] == pytest.approx(brute_force_recall(q, gal, k))
        assert result[f"chance@{k}"] == k / 40
    assert 0 < result["recall@1"] < result["recall@10"] <= 1


def test_perfect_and_constant_embeddings():
    eye = torch.eye(6)
    assert paired_recall_at_k(eye, eye)["recall@1"] == 1.0
    constant = torch.ones(6, 3) / 3**0.5
    assert paired_recall_at_k(constant, constant)["recall@5"] == 0.0  # ties count against the match


def test_both_directions_and_shape_errors():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g)
    both = cross_modal_retrieval(a, b)
    assert both["image_to_report"]["recall@1"] == paired_recall_at_k(a, b)["recall@1"]
    assert both["report_to_image"]["recall@1"] == paired_recall_at_k(b, a)["recall@1"]
    with pytest.raises(ValueError, match="paired"):
        paired_recall_at_k(a, b[:5])
    assert paired_recall_at_k(np.zeros((0, 4)), np.zeros((0, 4))) == {"n": 0}


def test_pipeline_matches_each_image_with_its_own_report():
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    shuffled = images[[1, 2, 3, 4, 5, 0]]
    embedded = {Modality.CXR: (images, [0, 1, 2, 3, 4, 5]),
                report_of(Modality.CXR): (images[[0, 2, 4]], [0, 2, 4]),  # each study's own report
                Modality.ECG: (images, [0, 1, 2, 3, 4, 5]),
                Modality.REPORT: (shuffled, [0, 1, 2, 3, 4, 5])}  # no own report: the study's report
    out = evaluate_retrieval(embedded)
    assert out["cxr"]["image_to_report"]["n"] == 3
    assert out["cxr"]["image_to_report"]["recall@1"] == 1.0
    assert out["ecg"]["image_to_report"]["recall@1"] == 0.0
