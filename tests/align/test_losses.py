"""Every alignment loss against a slow reference written with Python loops (values and gradients).

The references below share no code with ``medfm.align``: they walk the batch sample
by sample, build each pair's score from scalar dot products, compute GRAM's
determinant by the Leibniz formula, and let autograd differentiate that.
"""

import itertools
import math

import pydantic
import pytest
import torch
import torch.nn.functional as F

import medfm.align  # noqa: F401  (registers the losses)
from medfm.align import LossConfig, gram_volumes
from medfm.align.pairs import select_pairs
from medfm.config import validate_config
from medfm.errors import ConfigError, MedfmError
from medfm.keys import Modality, report_of
from medfm.registry import LOSSES

CXR, ECG, REPORT = Modality.CXR, Modality.ECG, Modality.REPORT
# Sample 5 has no cxr, samples 1 and 4 no ECG, sample 2 no report, sample 6 only a cxr;
# samples 0 and 3 are two studies of one patient (group 0), as are 1 and 2 (group 1).
PRESENCE = {
    CXR: [1, 1, 1, 1, 1, 0, 1],
    ECG: [1, 0, 1, 1, 0, 1, 0],
    REPORT: [1, 1, 0, 1, 1, 1, 0],
}
GROUPS = [0, 1, 1, 0, 3, 4, 5]
DIM = 4


def make_batch(seed=0, presence=PRESENCE):
    """Packed unit embeddings (float64 leaves), masks, a scale leaf."""
    gen = torch.Generator().manual_seed(seed)
    embeddings, masks = {}, {}
    for modality, present in presence.items():
        rows = sum(present)
        packed = F.normalize(torch.randn(rows, DIM, generator=gen, dtype=torch.float64), dim=-1)
        embeddings[modality] = packed.requires_grad_()
        masks[modality] = torch.tensor([bool(p) for p in present])
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    return embeddings, masks, scale


# ----------------------------------------------------------------------------------------- references
def rows_by_sample(packed, present):
    """sample index → its packed row, by counting present samples one by one."""
    out, row = {}, 0
    for sample, flag in enumerate(present):
        if flag:
            out[sample] = packed[row]
            row += 1
    return out


def dot(u, v):
    total = u[0] * v[0]
    for t in range(1, len(u)):
        total = total + u[t] * v[t]
    return total


def relation(groups, mode):
    """(is_positive(i, j), is_counted(i, j)) over the original sample indices."""
    def positive(i, j):
        return i == j or (groups is not None and mode == "positive" and groups[i] == groups[j])

    def counted(i, j):
        return not (groups is not None and mode == "mask" and i != j and groups[i] == groups[j])
    return positive, counted


def ref_softmax_ce(samples_rows, samples_cols, score, sim, positive, counted, beta):
    """Mean over rows of -1/|P| Σ_p log(e^{score_p} / (Σ_P e^{score} + Σ_N w e^{score}))."""
    total = 0.0
    for i in samples_rows:
        cols = [j for j in samples_cols if counted(i, j)]
        pos = [j for j in cols if positive(i, j)]
        neg = [j for j in cols if not positive(i, j)]
        weight = {j: 1.0 for j in cols}
        if beta > 0 and neg:
            mean = sum(torch.exp(beta * sim(i, k)) for k in neg) / len(neg)
            for j in neg:
                weight[j] = torch.exp(beta * sim(i, j)) / mean
        denominator = sum(weight[j] * torch.exp(score(i, j)) for j in cols)
        total = total + sum(-(score(i, p) - torch.log(denominator)) for p in pos) / len(pos)
    return total / len(samples_rows)


def ref_pairs(pairs, anchor):
    names = sorted(PRESENCE)
    chosen = []
    for x in names:
        for y in names:
            if x < y and (pairs == "all" or anchor in (x, y)):
                chosen.append((x, y))
    return chosen


def ref_infonce(embeddings, scale, groups, pairs, anchor, same_patient, beta):
    positive, counted = relation(groups, same_patient)
    losses = []
    for x, y in ref_pairs(pairs, anchor):
        rx, ry = rows_by_sample(embeddings[x], PRESENCE[x]), rows_by_sample(embeddings[y], PRESENCE[y])
        shared = [s for s in rx if s in ry]
        if len(shared) < 2:
            continue
        def sim(i, j, rx=rx, ry=ry):
            return dot(rx[i], ry[j])
        forward = ref_softmax_ce(shared, shared, lambda i, j, sim=sim: scale * sim(i, j), sim,
                                 positive, counted, beta)
        backward = ref_softmax_ce(shared, shared, lambda i, j, sim=sim: scale * sim(j, i),
                                  lambda i, j, sim=sim: sim(j, i), positive, counted, beta)
        losses.append(0.5 * (forward + backward))
    return sum(losses) / len(losses)


def ref_siglip(embeddings, scale, bias, groups, pairs, anchor, same_patient):
    positive, counted = relation(groups, same_patient)
    losses = []
    for x, y in ref_pairs(pairs, anchor):
        rx, ry = rows_by_sample(embeddings[x], PRESENCE[x]), rows_by_sample(embeddings[y], PRESENCE[y])
        shared = [s for s in rx if s in ry]
        if len(shared) < 2:
            continue
        total = 0.0
        for i in shared:
            for j in shared:
                if not counted(i, j):
                    continue
                z = 1.0 if positive(i, j) else -1.0
                total = total + torch.log(1.0 / (1.0 + torch.exp(-z * (scale * dot(rx[i], ry[j]) + bias))))
        losses.append(-total / len(shared))
    return sum(losses) / len(losses)


def leibniz_det(matrix):
    size = len(matrix)
    total = 0.0
    for perm in itertools.permutations(range(size)):
        inversions = sum(1 for a in range(size) for b in range(a + 1, size) if perm[a] > perm[b])
        term = 1.0
        for row in range(size):
            term = term * matrix[row][perm[row]]
        total = total + (-1) ** inversions * term
    return total


def ref_gram(embeddings, scale, groups, anchor, same_patient, beta, eps):
    positive, counted = relation(groups, same_patient)
    others = [m for m in sorted(PRESENCE) if m != anchor]
    anchor_rows = rows_by_sample(embeddings[anchor], PRESENCE[anchor])
    other_rows = {m: rows_by_sample(embeddings[m], PRESENCE[m]) for m in others}
    keep = [s for s in anchor_rows if any(s in other_rows[m] for m in others)]
    volume = {}
    for i in keep:
        for j in keep:
            common = [m for m in others if i in other_rows[m] and j in other_rows[m]]
            if not common:
                continue
            vectors = [anchor_rows[i]] + [other_rows[m][j] for m in common]
            gram = [[dot(u, v) for v in vectors] for u in vectors]
            volume[i, j] = torch.sqrt(torch.clamp(leibniz_det(gram), min=eps))

    def comparable_and(test):
        return lambda i, j: (i, j) in volume and test(i, j)
    to_rest = ref_softmax_ce(keep, keep, lambda i, j: -scale * volume[i, j], lambda i, j: -volume[i, j],
                             comparable_and(positive), comparable_and(counted), beta)
    to_anchor = ref_softmax_ce(keep, keep, lambda i, j: -scale * volume[j, i], lambda i, j: -volume[j, i],
                               lambda i, j: (j, i) in volume and positive(j, i),
                               lambda i, j: (j, i) in volume and counted(j, i), beta)
    return 0.5 * (to_rest + to_anchor)


# ----------------------------------------------------------------------------------------- comparisons
def assert_same_value_and_gradients(loss, expected, inputs):
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    got = torch.autograd.grad(loss, inputs)
    want = torch.autograd.grad(expected, inputs)
    for name, g, w in zip(range(len(inputs)), got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-10), f"gradient of input {name} differs"


def config(**kwargs):
    anchor = kwargs.pop("anchor", None)
    if anchor is not None:
        kwargs.update(pairs="anchor", anchor=anchor)
    return LossConfig(**kwargs)


GROUP_OPTIONS = [pytest.param(None, "mask", id="no-groups"), pytest.param(GROUPS, "mask", id="mask"),
                 pytest.param(GROUPS, "positive", id="positive")]


@pytest.mark.parametrize("anchor", [None, REPORT, ECG], ids=["all", "anchor-report", "anchor-ecg"])
@pytest.mark.parametrize("groups,same_patient", GROUP_OPTIONS)
@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_infonce_matches_reference(anchor, groups, same_patient, beta):
    embeddings, masks, scale = make_batch()
    loss_fn = LOSSES.get("infonce")(config(name="infonce", anchor=anchor, same_patient=same_patient,
                                           hard_negatives=beta))
    group_tensor = None if groups is None else torch.tensor(groups)
    loss, _ = loss_fn(embeddings, masks, scale, group_tensor)
    expected = ref_infonce(embeddings, scale, groups, "anchor" if anchor else "all", anchor, same_patient, beta)
    assert_same_value_and_gradients(loss, expected, [*embeddings.values(), scale])


@pytest.mark.parametrize("anchor", [None, CXR], ids=["all", "anchor-cxr"])
@pytest.mark.parametrize("groups,same_patient", GROUP_OPTIONS)
def test_siglip_matches_reference(anchor, groups, same_patient):
    embeddings, masks, scale = make_batch(seed=1)
    loss_fn = LOSSES.get("siglip")(config(name="siglip", anchor=anchor, same_patient=same_patient,
                                          siglip_init_bias=-1.3)).double()
    group_tensor = None if groups is None else torch.tensor(groups)
    loss, _ = loss_fn(embeddings, masks, scale, group_tensor)
    expected = ref_siglip(embeddings, scale, loss_fn.bias, groups, "anchor" if anchor else "all", anchor,
                          same_patient)
    assert_same_value_and_gradients(loss, expected, [*embeddings.values(), scale, loss_fn.bias])


@pytest.mark.parametrize("anchor", [None, CXR], ids=["anchor-default-report", "anchor-cxr"])
@pytest.mark.parametrize("groups,same_patient", GROUP_OPTIONS)
@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_gram_matches_reference(anchor, groups, same_patient, beta):
    embeddings, masks, scale = make_batch(seed=2)
    cfg = config(name="gram", anchor=anchor, same_patient=same_patient, hard_negatives=beta)
    loss_fn = LOSSES.get("gram")(cfg)
    group_tensor = None if groups is None else torch.tensor(groups)
    loss, _ = loss_fn(embeddings, masks, scale, group_tensor)
    expected = ref_gram(embeddings, scale, groups, anchor or REPORT, same_patient, beta, cfg.gram_eps)
    assert_same_value_and_gradients(loss, expected, [*embeddings.values(), scale])


# ----------------------------------------------------------------------------------------- hard negatives
def plain_clip(a, b, scale, groups):
    """The pre-refactor InfoNCE: -inf on same-patient off-diagonals, F.cross_entropy both ways."""
    logits = scale * a @ b.T
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def test_beta_zero_is_plain_infonce_exactly_and_beta_moves_it():
    embeddings, masks, scale = make_batch()
    groups = torch.tensor(GROUPS)
    both = masks[CXR] & masks[REPORT]
    a = embeddings[CXR][torch.cumsum(masks[CXR].long(), 0)[both] - 1]
    b = embeddings[REPORT][torch.cumsum(masks[REPORT].long(), 0)[both] - 1]
    plain = plain_clip(a, b, scale, groups[both])
    only = config(name="infonce", anchor=REPORT)
    sub = {CXR: embeddings[CXR], REPORT: embeddings[REPORT]}
    loss_zero, _ = LOSSES.get("infonce")(only)(sub, masks, scale, groups)
    # Exact up to float64 rounding (log_softmax vs F.cross_entropy order of operations), gradients too.
    assert loss_zero.item() == pytest.approx(plain.item(), rel=1e-14)
    got, want = torch.autograd.grad(loss_zero, embeddings[CXR]), torch.autograd.grad(plain, embeddings[CXR])
    assert torch.allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
    tiny, _ = LOSSES.get("infonce")(only.model_copy(update={"hard_negatives": 1e-9}))(sub, masks, scale, groups)
    assert tiny.item() == pytest.approx(plain.item(), rel=1e-8)  # the reweighting path is continuous at 0
    hard, _ = LOSSES.get("infonce")(only.model_copy(update={"hard_negatives": 2.0}))(sub, masks, scale, groups)
    assert abs(hard.item() - plain.item()) > 1e-4


# ----------------------------------------------------------------------------------------- missing modalities
@pytest.mark.parametrize("name", ["infonce", "siglip", "gram"])
def test_a_sample_sharing_no_pair_contributes_nothing_and_gets_no_gradient(name):
    embeddings, masks, scale = make_batch(seed=3)
    loss_fn = LOSSES.get(name)(LossConfig(name=name)).double()
    groups = torch.tensor(GROUPS)
    loss, logs = loss_fn(embeddings, masks, scale, groups)
    # Sample 6 has only a cxr: its packed row is the last cxr row.
    grad = torch.autograd.grad(loss, embeddings[CXR])[0]
    assert torch.count_nonzero(grad[-1]) == 0
    assert torch.count_nonzero(grad[:-1]) > 0
    smaller = {m: e[:-1] if m == CXR else e for m, e in embeddings.items()}
    smaller_masks = {m: k[:-1] for m, k in masks.items()}
    loss_without, logs_without = loss_fn(smaller, smaller_masks, scale, groups[:-1])
    assert loss_without.item() == pytest.approx(loss.item(), rel=1e-12)
    assert logs_without == pytest.approx(logs, rel=1e-12)


def test_packed_rows_only_get_gradient_from_pairs_they_are_in():
    embeddings, masks, scale = make_batch(seed=4)
    all_pairs = LOSSES.get("infonce")(LossConfig())
    ecg_pairs = LOSSES.get("infonce")(config(anchor=ECG))
    loss_all, logs = all_pairs(embeddings, masks, scale)
    loss_ecg, _ = ecg_pairs(embeddings, masks, scale)
    assert set(logs) == {"cxr-ecg", "cxr-report", "ecg-report"}
    # loss_all = (L_ce + L_cr + L_er)/3 and loss_ecg = (L_ce + L_er)/2: if the ECG rows were touched by
    # cxr-report (e.g. an imputed row), the two gradients would not be proportional.
    grad_all = torch.autograd.grad(loss_all, embeddings[ECG])[0]
    grad_ecg = torch.autograd.grad(loss_ecg, embeddings[ECG])[0]
    assert torch.allclose(grad_all, grad_ecg * 2 / 3, rtol=1e-10, atol=1e-14)


def test_packed_rows_must_match_the_mask():
    embeddings, masks, scale = make_batch()
    embeddings[ECG] = torch.cat([embeddings[ECG], embeddings[ECG][:1]])  # one row too many
    for name in ["infonce", "siglip", "gram"]:
        with pytest.raises(MedfmError, match="ecg.*packed rows"):
            LOSSES.get(name)(LossConfig(name=name)).double()(embeddings, masks, scale)


def test_no_pair_with_two_samples_is_a_typed_error():
    presence = {CXR: [1, 0], REPORT: [0, 1]}
    embeddings, masks, scale = make_batch(presence=presence)
    with pytest.raises(MedfmError, match="no modality pair"):
        LOSSES.get("infonce")(LossConfig())(embeddings, masks, scale)


# ----------------------------------------------------------------------------------------- pairing and logs
@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_anchor_pairing_only_produces_pairs_with_the_anchor(name):
    embeddings, masks, scale = make_batch()
    loss_fn = LOSSES.get(name)(config(name=name, anchor=REPORT)).double()
    _, logs = loss_fn(embeddings, masks, scale)
    pair_keys = {k for k in logs if k != "siglip_bias"}
    assert pair_keys == {"cxr-report", "ecg-report"}


def test_gram_logs_both_directions_of_its_anchor():
    embeddings, masks, scale = make_batch()
    _, logs = LOSSES.get("gram")(config(name="gram", anchor=CXR))(embeddings, masks, scale)
    assert set(logs) == {"cxr-to-rest", "rest-to-cxr"}


# ----------------------------------------------------------------------------------------- GRAM geometry
def test_gram_volume_of_two_unit_vectors_is_the_sine():
    gen = torch.Generator().manual_seed(5)
    a = F.normalize(torch.randn(4, 6, generator=gen, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(4, 6, generator=gen, dtype=torch.float64), dim=-1)
    volumes = gram_volumes(a, b[:, None], torch.ones(4, 1, dtype=torch.bool), eps=1e-12)
    assert torch.allclose(volumes ** 2, 1 - (a @ b.T) ** 2, atol=1e-12)


def test_gram_volume_of_orthonormal_vectors_is_one_and_absent_slots_are_ignored():
    basis = torch.eye(3, dtype=torch.float64)
    anchor = basis[:1].repeat(2, 1)
    rest = torch.stack([basis[1:], torch.stack([basis[1], torch.full((3,), 7.0, dtype=torch.float64)])])
    present = torch.tensor([[True, True], [True, False]])
    volumes = gram_volumes(anchor, rest, present, eps=1e-12)
    # (0, 0): three orthonormal vectors; every other cell uses e0 and e1 only (slot 2 is shared by no pair
    # involving sample 1, whose slot holds garbage that must not matter).
    assert torch.allclose(volumes, torch.ones(2, 2, dtype=torch.float64))


def test_gram_gradients_stay_finite_when_volumes_are_zero():
    gen = torch.Generator().manual_seed(6)
    same = F.normalize(torch.randn(3, 5, generator=gen, dtype=torch.float64), dim=-1)
    embeddings = {REPORT: same.clone().requires_grad_(), CXR: same.clone().requires_grad_(),
                  ECG: same.clone().requires_grad_()}
    masks = {m: torch.ones(3, dtype=torch.bool) for m in embeddings}
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    loss, _ = LOSSES.get("gram")(LossConfig(name="gram"))(embeddings, masks, scale)
    grads = torch.autograd.grad(loss, [*embeddings.values(), scale])
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------------- config
def test_anchor_pairs_without_anchor_names_the_key():
    with pytest.raises(ConfigError) as err:
        validate_config({"pairs": "anchor"}, LossConfig, "configs/train/x.yaml")
    assert err.value.key == "anchor" and "required when pairs is 'anchor'" in str(err.value)
    with pytest.raises(pydantic.ValidationError) as raw:
        LossConfig(pairs="anchor")
    assert raw.value.errors()[0]["loc"] == ("anchor",)


def test_anchor_without_anchor_pairs_is_rejected():
    with pytest.raises(ConfigError) as err:
        validate_config({"anchor": "report"}, LossConfig)
    assert err.value.key == "anchor"


@pytest.mark.parametrize("data,key", [({"name": "nce"}, "name"), ({"hard_negatives": -1}, "hard_negatives"),
                                      ({"same_patient": "drop"}, "same_patient"), ({"temp": 1}, "temp"),
                                      ({"anchor": "xray", "pairs": "anchor"}, "anchor")])
def test_bad_values_name_their_key(data, key):
    with pytest.raises(ConfigError) as err:
        validate_config(data, LossConfig)
    assert err.value.key == key


def test_siglip_refuses_hard_negatives():
    with pytest.raises(ConfigError) as err:
        LOSSES.get("siglip")(LossConfig(name="siglip", hard_negatives=1.0))
    assert err.value.key == "hard_negatives"


# ----------------------------------------------------------------------------------------- common checks
@pytest.mark.parametrize("name", ["infonce", "siglip", "gram"])
def test_every_loss_builds_from_config_and_without_one(name):
    assert name in LOSSES
    embeddings, masks, scale = make_batch(seed=7)
    built = LOSSES.get(name)(LossConfig(name=name)).double()
    default = LOSSES.get(name)().double()
    a, _ = built(embeddings, masks, scale)
    b, _ = default(embeddings, masks, scale)
    assert a.item() == b.item() and math.isfinite(a.item()) and a.item() > 0


def test_siglip_owns_its_bias_and_others_own_nothing():
    siglip = LOSSES.get("siglip")(LossConfig(name="siglip", siglip_init_bias=-4.0))
    assert list(siglip.state_dict()) == ["bias"] and siglip.bias.item() == -4.0
    assert list(LOSSES.get("infonce")().parameters()) == []
    assert list(LOSSES.get("gram")().parameters()) == []
    embeddings, masks, scale = make_batch()
    loss, logs = siglip.double()(embeddings, masks, scale)
    (grad,) = torch.autograd.grad(loss, siglip.bias)
    assert grad.item() != 0 and logs["siglip_bias"] == -4.0


@pytest.mark.parametrize("same_patient", ["mask", "positive"])
@pytest.mark.parametrize("block_rows", [1, 3, 4, 64])
def test_blockwise_infonce_equals_the_full_matrix_formula(same_patient, block_rows):
    """The memory-bounded path (scores recomputed in backward, a few rows at a time) changes nothing."""
    from medfm.align.infonce import pairwise_infonce, symmetric_cross_entropy
    from medfm.align.pairs import target_masks

    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(11, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    b = torch.nn.functional.normalize(torch.randn(11, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6])
    positives, valid = target_masks(groups, 11, same_patient)
    full = symmetric_cross_entropy(scale * (a @ b.T), positives, valid)
    blockwise = pairwise_infonce(a, b, scale, groups, same_patient, block_rows=block_rows)
    assert blockwise.item() == pytest.approx(full.item(), rel=1e-12)
    for want, got in zip(torch.autograd.grad(full, (a, b, scale)), torch.autograd.grad(blockwise, (a, b, scale)),
                         strict=True):
        assert torch.allclose(want, got, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------- each image's own report
OWN = {CXR: [1, 1, 1, 1, 0], ECG: [1, 1, 0, 1, 1],
       report_of(CXR): [1, 1, 1, 0, 0], report_of(ECG): [0, 1, 0, 1, 1]}


@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_an_image_is_aligned_with_its_own_report_only(name):
    embeddings, masks, scale = make_batch(presence=OWN)
    loss_fn = LOSSES.get(name)(config(name=name, anchor=REPORT)).double()
    loss, logs = loss_fn(embeddings, masks, scale)
    assert {k for k in logs if k != "siglip_bias"} == {"cxr-report", "ecg-report"}
    # The same as each image with its own reports posing as the one report of a batch of its own.
    alone = [loss_fn({image: embeddings[image], REPORT: embeddings[report_of(image)]},
                     {image: masks[image], REPORT: masks[report_of(image)]}, scale)[0] for image in (CXR, ECG)]
    assert loss.item() == pytest.approx((sum(alone) / 2).item(), rel=1e-12)


def test_all_pairs_never_pair_a_report_with_another_image():
    pairs = select_pairs(list(OWN), "all", None)
    assert pairs == [("cxr", "ecg"), ("cxr", report_of(CXR)), ("ecg", report_of(ECG))]


def test_gram_refuses_per_image_reports():
    embeddings, masks, scale = make_batch(presence=OWN)
    with pytest.raises(MedfmError, match="report.cxr.*infonce or siglip"):
        LOSSES.get("gram")(LossConfig(name="gram"))(embeddings, masks, scale)
