from collections import Counter

import torch

from medfm.data.samplers import balanced_order, balanced_weights
from medfm.keys import Field


def samples(sites):
    return [{Field.META: {"site": s}, Field.LABEL: {"af": float(i % 4 == 0)}} for i, s in enumerate(sites)]


def test_weights_are_inverse_group_size():
    weights = balanced_weights(samples(["a"] * 8 + ["b"] * 2), ["site"])
    assert torch.allclose(weights[:8], torch.full((8,), 1 / 16, dtype=torch.float64))
    assert torch.allclose(weights[8:], torch.full((2,), 1 / 4, dtype=torch.float64))


def test_balanced_order_draws_sites_equally_often():
    data = samples(["a"] * 90 + ["b"] * 10)
    drawn = Counter()
    for epoch in range(50):
        order = balanced_order(data, ["site"], torch.Generator().manual_seed(epoch))
        drawn.update(data[i][Field.META]["site"] for i in order.tolist())
    share_b = drawn["b"] / sum(drawn.values())
    assert 0.45 < share_b < 0.55  # without balancing it would be 0.10


def test_labels_and_metadata_combine():
    data = samples(["a"] * 8 + ["b"] * 8)
    weights = balanced_weights(data, ["site", "af"])
    assert len(set(weights.tolist())) == 2  # (site, af) groups of size 2 and 6
