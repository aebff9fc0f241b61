import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from medfm.evaluation import metrics, stats

# Hanley & McNeil (1982), Radiology 143:29-36, Table I: a radiologist's 5-point ratings of 109 CT images.
HM_NORMAL, HM_ABNORMAL = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]


def hanley_mcneil() -> tuple[np.ndarray, np.ndarray]:
    ratings = np.arange(1, 6)
    scores = np.r_[np.repeat(ratings, HM_NORMAL), np.repeat(ratings, HM_ABNORMAL)].astype(float)
    return np.r_[np.zeros(sum(HM_NORMAL)), np.ones(sum(HM_ABNORMAL))], scores


def tied_data(seed: int, n: int = 300, prevalence: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(float)
    return labels, np.round(rng.normal(size=n) + labels, 1)  # rounding makes many ties, within and across classes


def clustered_data(seed: int, patients: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1–3 studies per patient; a patient's studies share its label and nearly its score."""
    rng = np.random.default_rng(seed)
    per_patient = rng.integers(1, 4, patients)
    patient_label = (rng.random(patients) < 0.4).astype(float)
    patient_score = rng.normal(size=patients) + patient_label
    clusters = np.repeat(np.arange(patients), per_patient)
    scores = np.round(patient_score[clusters] + 0.1 * rng.normal(size=len(clusters)), 1)
    return patient_label[clusters], scores, np.array([f"P{c:03d}" for c in clusters])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prevalence", [0.1, 0.5, 0.9])
def test_point_estimates_equal_scikit_learn_with_ties(seed, prevalence):
    labels, scores = tied_data(seed, prevalence=prevalence)
    assert stats.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert stats.auroc(labels, scores) == metrics.auroc(labels, scores)
    assert stats.auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_weight_matrix_equals_repeating_rows():
    labels, scores = tied_data(3)
    weights = np.random.default_rng(3).integers(0, 4, (6, len(labels))).astype(float)
    by_matrix_roc, by_matrix_pr = stats.auroc(labels, scores, weights), stats.auprc(labels, scores, weights)
    for b, w in enumerate(weights.astype(int)):
        y, s = np.repeat(labels, w), np.repeat(scores, w)
        assert by_matrix_roc[b] == metrics.auroc(y, s)
        assert by_matrix_pr[b] == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_unknown_labels_are_ignored_and_a_missing_class_is_nan():
    labels, scores = tied_data(4)
    with_unknown = np.r_[labels, np.nan, np.nan]
    more_scores = np.r_[scores, 99.0, -99.0]
    assert stats.auroc(with_unknown, more_scores) == stats.auroc(labels, scores)
    assert stats.auprc(with_unknown, more_scores) == stats.auprc(labels, scores)
    one_class = np.ones(5)
    assert np.isnan(stats.auroc(one_class, np.arange(5.0)))
    assert np.isnan(stats.auprc(one_class, np.arange(5.0)))
    assert np.isnan(stats.bootstrap_ci("auroc", one_class, np.arange(5.0), n_resamples=20)["estimate"])
    assert np.isnan(stats.delong_ci(one_class, np.arange(5.0))["estimate"])
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        stats.auroc(np.array([0, 2]), np.array([0.1, 0.2]))


def slow_bootstrap(labels, scores_by_model, clusters, n_resamples, seed):
    """Resample by hand: the rows of each drawn patient, concatenated, through a plain metric per resample."""
    patients, codes = np.unique(clusters, return_inverse=True)
    rows_of = [np.flatnonzero(codes == p) for p in range(len(patients))]
    values = []
    for block in stats.patient_resamples(len(patients), n_resamples, seed):
        for drawn in block:
            rows = np.concatenate([rows_of[p] for p in drawn])
            values.append([(metrics.auroc(labels[rows], s[rows]), average_precision_score(labels[rows], s[rows]))
                           for s in scores_by_model])
    return np.array(values)  # (resamples, models, [auroc, auprc])


def test_vectorised_bootstrap_equals_a_slow_loop_over_the_same_resamples():
    labels, scores, clusters = clustered_data(5)
    other = np.round(scores + np.random.default_rng(5).normal(size=len(scores)), 1)
    slow = slow_bootstrap(labels, [scores, other], clusters, n_resamples=150, seed=11)
    q = [(1 - 0.95) / 2, (1 + 0.95) / 2]  # as the interval computes them
    roc = stats.bootstrap_ci("auroc", labels, scores, clusters, n_resamples=150, seed=11)
    assert [roc["low"], roc["high"]] == list(np.quantile(slow[:, 0, 0], q))  # integer weights: exact sums
    pr = stats.bootstrap_ci("auprc", labels, scores, clusters, n_resamples=150, seed=11)
    np.testing.assert_allclose([pr["low"], pr["high"]], np.quantile(slow[:, 0, 1], q), rtol=1e-12)
    paired = stats.paired_bootstrap_difference(labels, scores, other, clusters, n_resamples=150, seed=11)
    difference = paired["difference"]
    assert [difference["low"], difference["high"]] == list(np.quantile(slow[:, 0, 0] - slow[:, 1, 0], q))
    assert difference["estimate"] == metrics.auroc(labels, scores) - metrics.auroc(labels, other)
    assert roc["n_patients"] == 60 and "patients" in roc["method"] and "150 resamples" in roc["method"]


def test_patient_bootstrap_ignores_duplicated_studies_a_row_bootstrap_does_not():
    labels, scores, clusters = clustered_data(6)
    twice = [np.r_[x, x] for x in (labels, scores, clusters)]
    by_patient = stats.bootstrap_ci("auroc", labels, scores, clusters, n_resamples=400)
    by_patient_twice = stats.bootstrap_ci("auroc", *twice, n_resamples=400)
    assert (by_patient_twice["low"], by_patient_twice["high"]) == (by_patient["low"], by_patient["high"])
    by_row = stats.bootstrap_ci("auroc", labels, scores, n_resamples=400)
    by_row_twice = stats.bootstrap_ci("auroc", twice[0], twice[1], n_resamples=400)
    assert by_row_twice["high"] - by_row_twice["low"] < 0.85 * (by_row["high"] - by_row["low"])
    assert "rows" in by_row["method"]


def test_clustered_interval_is_wider_than_treating_studies_as_independent():
    rng = np.random.default_rng(7)
    patients, studies = 200, 5
    patient_label = (rng.random(patients) < 0.5).astype(float)
    patient_score = rng.normal(size=patients) + patient_label
    clusters = np.repeat(np.arange(patients), studies)
    labels = patient_label[clusters]
    scores = patient_score[clusters] + 0.05 * rng.normal(size=len(clusters))
    clustered = stats.bootstrap_ci("auroc", labels, scores, clusters, n_resamples=500)
    independent = stats.bootstrap_ci("auroc", labels, scores, n_resamples=500)
    assert clustered["high"] - clustered["low"] > 1.8 * (independent["high"] - independent["low"])


def test_shared_patient_difference_uses_patients_in_both_sets():
    labels, scores, clusters = clustered_data(8)
    # device b saw the patients in a different order and missed the first five
    missing = np.isin(clusters, np.unique(clusters)[:5])
    order = np.random.default_rng(8).permutation(int((~missing).sum()))
    result = stats.shared_patient_bootstrap_difference(
        labels, scores, clusters, labels[~missing][order], scores[~missing][order], clusters[~missing][order],
        n_resamples=200)
    assert result["rows_dropped_a"] == int(missing.sum()) and result["rows_dropped_b"] == 0
    assert result["a"]["estimate"] == metrics.auroc(labels[~missing], scores[~missing])
    difference = result["difference"]
    assert difference["estimate"] == difference["low"] == difference["high"] == 0.0
    assert difference["n_patients"] == 55
    with pytest.raises(ValueError, match="both"):
        stats.shared_patient_bootstrap_difference(labels, scores, clusters, labels, scores, None)


def direct_delong(labels, scores_by_model):
    """DeLong, DeLong & Clarke-Pearson (1988) structural components by the O(m·n) definition."""
    pos, neg = labels == 1, labels == 0
    v10, v01 = [], []
    for s in scores_by_model:
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    return np.cov(v10, ddof=1) / pos.sum() + np.cov(v01, ddof=1) / neg.sum()


def test_delong_on_hanley_mcneil_data():
    """Published: area 0.893, SE 0.032 by Hanley & McNeil's (1982) own formula, which approximates DeLong's.

    No published DeLong variance for these data was at hand offline, so the variance is checked against a
    direct O(m·n) implementation of DeLong's structural components instead.
    """
    labels, scores = hanley_mcneil()
    result = stats.delong_ci(labels, scores)
    assert round(result["estimate"], 3) == 0.893
    assert result["se"] ** 2 == pytest.approx(float(direct_delong(labels, [scores])), rel=1e-12)
    assert result["se"] == pytest.approx(0.032, abs=0.003)
    assert result["low"] == pytest.approx(result["estimate"] - 1.959964 * result["se"], abs=1e-6)
    assert "DeLong" in result["method"]


def test_delong_paired_against_the_direct_definition():
    labels, scores = tied_data(9, n=120, prevalence=0.4)
    other = np.round(scores + np.random.default_rng(9).normal(size=len(scores)), 1)
    result = stats.delong_paired(labels, scores, other)
    cov = direct_delong(labels, [scores, other])
    assert result["a"]["se"] ** 2 == pytest.approx(cov[0, 0], rel=1e-12)
    assert result["b"]["se"] ** 2 == pytest.approx(cov[1, 1], rel=1e-12)
    assert result["difference"]["se"] ** 2 == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], rel=1e-12)
    assert result["difference"]["estimate"] == pytest.approx(roc_auc_score(labels, scores)
                                                             - roc_auc_score(labels, other), abs=1e-12)
    z = result["difference"]["z"]
    assert result["difference"]["p_value"] == pytest.approx(2 * norm.sf(abs(z)))


def test_delong_refuses_repeated_patients():
    labels, scores, clusters = clustered_data(10)
    with pytest.raises(ValueError, match="one observation per patient"):
        stats.delong_ci(labels, scores, clusters=clusters)
    with pytest.raises(ValueError, match="one observation per patient"):
        stats.delong_paired(labels, scores, scores, clusters=clusters)
    first = np.unique(clusters, return_index=True)[1]
    assert stats.delong_ci(labels[first], scores[first], clusters=clusters[first])["estimate"] > 0.5


@pytest.mark.parametrize(("k", "n", "low", "high"), [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775),
                                                     (10, 10, 0.7225, 1.0), (1, 2, 0.0945, 0.9055)])
def test_wilson_known_values(k, n, low, high):
    result = stats.wilson_ci(k, n)
    assert (result["low"], result["high"]) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))
    assert result["method"].startswith("Wilson")
    assert np.isnan(stats.wilson_ci(0, 0)["estimate"])


def test_operating_point_counts_and_intervals():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, np.nan])
    scores = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.4, 0.3, 0.1, 0.6, 0.99])
    result = stats.operating_point(labels, scores, threshold=0.6)  # ≥ 0.6: TP 3, FN 1, FP 2, TN 3
    assert (result["tp"], result["fn"], result["fp"], result["tn"]) == (3, 1, 2, 3)
    assert result["sensitivity"]["estimate"] == 0.75 and result["specificity"]["estimate"] == 0.6
    assert result["ppv"]["estimate"] == 0.6 and result["npv"]["estimate"] == 0.75
    assert result["sensitivity"]["low"] == stats.wilson_ci(3, 4)["low"]
    clustered = stats.operating_point(*clustered_data(11)[:2], 0.5, clusters=clustered_data(11)[2], n_resamples=200)
    assert "patients" in clustered["sensitivity"]["method"]
    assert clustered["sensitivity"]["low"] <= clustered["sensitivity"]["estimate"] <= clustered["sensitivity"]["high"]


def test_thresholds_fitted_on_development_data():
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.1, 0.72, 0.5, 0.3, 0.2])
    at_90 = stats.threshold_for_sensitivity(labels, scores, target=0.9)  # 9 of 10 positives at ≥ 0.55
    assert at_90["threshold"] == 0.55 and at_90["sensitivity"] == 0.9 and at_90["specificity"] == 0.75
    youden = stats.youden_threshold(labels, scores)  # J at 0.55: 0.9 + 0.75 − 1 = 0.65, the maximum
    assert youden["threshold"] == 0.55 and youden["youden_index"] == pytest.approx(0.65)
    assert np.isnan(stats.youden_threshold(np.ones(3), np.arange(3.0))["threshold"])


def test_every_result_is_json_and_names_its_method():
    labels, scores, clusters = clustered_data(12)
    first = np.unique(clusters, return_index=True)[1]
    results = [stats.bootstrap_ci("auprc", labels, scores, clusters, n_resamples=50),
               stats.paired_bootstrap_difference(labels, scores, -scores, clusters, n_resamples=50)["difference"],
               stats.delong_ci(labels[first], scores[first]),
               stats.delong_paired(labels[first], scores[first], -scores[first])["difference"],
               stats.wilson_ci(3, 7), stats.operating_point(labels, scores, 0.5)["npv"]]
    for result in results:
        assert {"estimate", "low", "high", "level", "method"} <= set(result)
        json.loads(json.dumps(result))


def test_subset_difference_resamples_the_patients_of_both_subsets_together():
    labels, scores, clusters = clustered_data(7)
    rng = np.random.default_rng(7)
    in_a = rng.random(len(labels)) < 0.5
    in_b = ~in_a | (rng.random(len(labels)) < 0.3)  # overlapping subsets: some rows in both
    result = stats.subset_bootstrap_difference(labels, scores, clusters, in_a, in_b, n_resamples=120, seed=3)
    kept = in_a | in_b
    patients, codes = np.unique(clusters[kept], return_inverse=True)
    rows_of = [np.flatnonzero(codes == p) for p in range(len(patients))]
    y, s, a, b = labels[kept], scores[kept], in_a[kept], in_b[kept]
    slow = []
    for block in stats.patient_resamples(len(patients), 120, 3):
        for drawn in block:
            rows = np.concatenate([rows_of[p] for p in drawn])
            slow.append(metrics.auroc(y[rows][a[rows]], s[rows][a[rows]]) - metrics.auroc(y[rows][b[rows]],
                                                                                           s[rows][b[rows]]))
    q = [(1 - 0.95) / 2, (1 + 0.95) / 2]
    np.testing.assert_allclose([result["low"], result["high"]], np.quantile(slow, q), rtol=1e-12)
    assert result["estimate"] == pytest.approx(metrics.auroc(labels[in_a], scores[in_a])
                                               - metrics.auroc(labels[in_b], scores[in_b]))
    assert result["n_patients"] == len(patients) and "both groups together" in result["method"]


def test_roc_and_pr_curves_match_scikit_learn():
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels, scores, _ = clustered_data(2)
    curve = stats.roc_curve(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)
    pr = stats.pr_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(pr["recall"][1:], recall[::-1][1:])
    np.testing.assert_allclose(pr["precision"][1:], precision[::-1][1:])
    assert stats.roc_curve(np.ones(4), np.arange(4.0)) == {"fpr": [], "tpr": []}
