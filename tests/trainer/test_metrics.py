"""Point metrics against scikit-learn, the stratified / paired bootstrap intervals, several
seeds' predictions per image, AUROC and McNemar's test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from services.trainer.metrics import (
    ClassificationReport,
    _confusions,
    _scored,
    bootstrap_intervals,
    classification_report,
    ensemble_predictions,
    mcnemar_exact,
    paired_bootstrap_difference,
    pooled_report,
    stratified_resample_indices,
)


def _noisy_predictions(
    y_true: np.ndarray, accuracy: float, num_classes: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(y_true)) > accuracy
    shifted = (y_true + rng.integers(1, num_classes, len(y_true))) % num_classes
    return np.where(wrong, shifted, y_true)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_vectorised_metrics_match_scikit_learn(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    y_true = rng.integers(0, num_classes, 200)
    y_pred = _noisy_predictions(y_true, 0.7, num_classes, seed=1)
    y_pred[y_pred == num_classes - 1] = 0  # one class never predicted: 0/0 precision
    labels = list(range(num_classes))

    ours = {
        name: values[0] for name, values in _scored(y_true, y_pred, None, num_classes, 1).items()
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    np.testing.assert_allclose(ours["precision"], precision)
    np.testing.assert_allclose(ours["recall"], recall)
    np.testing.assert_allclose(ours["f1"], f1)
    assert ours["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert ours["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    )
    assert ours["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred))
    assert ours["cohen_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))

    report = classification_report(y_true, y_pred, [f"c{k}" for k in labels])
    assert report.balanced_accuracy == pytest.approx(ours["balanced_accuracy"])
    assert report.mcc == pytest.approx(ours["mcc"])
    assert [item.recall for item in report.per_class] == pytest.approx(list(recall))


def test_binary_report_has_sensitivity_specificity_and_youden() -> None:
    # 10 pneumonia (positive, index 1): 8 found; 20 normal: 15 called normal.
    y_true = np.array([1] * 10 + [0] * 20)
    y_pred = np.array([1] * 8 + [0] * 2 + [0] * 15 + [1] * 5)
    report = classification_report(y_true, y_pred, ["normal", "pneumonia"])
    assert report.binary is not None
    assert report.binary.positive_class == "pneumonia"
    assert report.binary.sensitivity == pytest.approx(0.8)
    assert report.binary.specificity == pytest.approx(0.75)
    assert report.binary.youden_index == pytest.approx(0.55)
    assert report.confusion_matrix == [[15, 5], [2, 8]]
    assert report.balanced_accuracy == pytest.approx(0.775)
    assert report.per_class[1].support == 10
    # Swapping which class is positive swaps sensitivity and specificity.
    flipped = classification_report(y_true, y_pred, ["normal", "pneumonia"], positive_label=0)
    assert flipped.binary is not None
    assert flipped.binary.sensitivity == pytest.approx(0.75)
    json.dumps(report.to_dict())  # serialisable as is


def test_stratified_resamples_keep_every_class_count() -> None:
    y_true = np.array([0] * 50 + [1] * 7 + [2] * 3)
    indices = stratified_resample_indices(y_true, n_resamples=200, seed=3)
    assert indices.shape == (200, 60)
    for row in indices[:20]:
        assert np.bincount(y_true[row], minlength=3).tolist() == [50, 7, 3]
    assert len(np.unique(indices)) > 50  # actually resampled, not the identity
    np.testing.assert_array_equal(indices, stratified_resample_indices(y_true, 200, 3))


def test_bootstrap_intervals_bracket_the_estimate_and_are_seeded() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 300)
    y_pred = _noisy_predictions(y_true, 0.75, 4, seed=2)
    report = bootstrap_intervals(y_true, y_pred, ["a", "b", "c", "d"], seed=7)
    assert report.n_resamples == 1000
    for interval in report.summary.values():
        assert interval.low <= interval.estimate <= interval.high
    balanced = report.summary["balanced_accuracy"]
    assert balanced.estimate == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    # About 300 images: a 95 % interval of a few points either side, not zero width.
    assert 0.02 < balanced.high - balanced.low < 0.2
    assert set(report.per_class["c"]) == {"precision", "recall", "f1"}
    again = bootstrap_intervals(y_true, y_pred, ["a", "b", "c", "d"], seed=7)
    assert again.to_dict() == report.to_dict()
    other = bootstrap_intervals(y_true, y_pred, ["a", "b", "c", "d"], seed=8)
    assert other.summary["balanced_accuracy"] != balanced
    json.dumps(report.to_dict())


def test_interval_narrows_with_more_test_images() -> None:
    def width(n: int) -> float:
        y_true = np.arange(n) % 2
        y_pred = _noisy_predictions(y_true, 0.8, 2, seed=n)
        interval = bootstrap_intervals(y_true, y_pred, ["neg", "pos"], seed=0).summary["mcc"]
        return interval.high - interval.low

    assert width(2000) < width(100) / 2


def test_paired_difference_of_identical_arms_is_exactly_zero() -> None:
    y_true = np.arange(90) % 3
    y_pred = _noisy_predictions(y_true, 0.6, 3, seed=4)
    report = paired_bootstrap_difference(y_true, y_pred, y_pred, ["a", "b", "c"])
    gain = report.summary["balanced_accuracy"]
    assert (gain.estimate, gain.low, gain.high, gain.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_difference_detects_a_real_gain_on_the_tail_class() -> None:
    rng = np.random.default_rng(5)
    y_true = np.array([0] * 300 + [1] * 40)
    baseline = _noisy_predictions(y_true, 0.8, 2, seed=6)
    # Arm B fixes most of the tail-class mistakes and changes nothing else.
    improved = baseline.copy()
    tail_mistakes = np.flatnonzero((y_true == 1) & (baseline != 1))
    improved[tail_mistakes[rng.random(len(tail_mistakes)) < 0.9]] = 1
    report = paired_bootstrap_difference(
        y_true, baseline, improved, ["normal", "pneumonia"], n_resamples=2000, seed=1
    )
    sensitivity_gain = report.summary["sensitivity"]
    assert sensitivity_gain.estimate > 0.1
    assert 0 < sensitivity_gain.low <= sensitivity_gain.estimate <= sensitivity_gain.high
    assert sensitivity_gain.p_value < 0.01
    # The head class's recall did not move, so its gain interval sits at zero.
    assert report.per_class["normal"]["recall"].estimate == 0.0
    assert report.per_class["pneumonia"]["recall"].estimate == pytest.approx(
        sensitivity_gain.estimate
    )
    json.dumps(report.to_dict())


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        classification_report(np.array([0, 1]), np.array([0]), ["a", "b"])
    with pytest.raises(ValueError):
        classification_report(np.array([0, 2]), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError):
        bootstrap_intervals(np.array([0, 1]), np.array([0, 1]), ["a", "b"], n_resamples=0)


# --- several seeds' predictions per image ------------------------------------------------


def _seed_predictions(
    y_true: np.ndarray, accuracy: float, num_classes: int, num_seeds: int, seed: int
) -> np.ndarray:
    """(N, S) predictions whose seeds disagree on some images."""
    return np.stack(
        [_noisy_predictions(y_true, accuracy, num_classes, seed + s) for s in range(num_seeds)],
        axis=1,
    )


def _assert_reports_close(ours: ClassificationReport, reference: ClassificationReport) -> None:
    assert ours.class_names == reference.class_names
    assert ours.num_images == reference.num_images
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "cohen_kappa"):
        assert getattr(ours, name) == pytest.approx(getattr(reference, name), abs=1e-12), name
    for mine, theirs in zip(ours.per_class, reference.per_class, strict=True):
        assert mine.name == theirs.name
        assert mine.support == theirs.support
        assert (mine.precision, mine.recall, mine.f1) == pytest.approx(
            (theirs.precision, theirs.recall, theirs.f1), abs=1e-12
        )
    assert ours.confusion_matrix == reference.confusion_matrix
    assert (ours.binary is None) == (reference.binary is None)
    if ours.binary is not None and reference.binary is not None:
        assert ours.binary.positive_class == reference.binary.positive_class
        assert ours.binary.youden_index == pytest.approx(reference.binary.youden_index)


def test_weighted_confusions_match_a_per_resample_loop() -> None:
    # The vectorised pass against the obvious loop: sklearn's confusion of every resample,
    # averaged over seeds. With S = 1 the counts are exact integers, as before seeds.
    rng = np.random.default_rng(11)
    y_true = rng.integers(0, 3, 120)
    y_pred = _seed_predictions(y_true, 0.6, 3, num_seeds=3, seed=20)
    indices = stratified_resample_indices(y_true, 25, seed=2)
    for seeds in (slice(0, 1), slice(0, 3)):
        ours = _confusions(y_true, y_pred[:, seeds], indices, 3)
        for r, row in enumerate(indices):
            expected = np.mean(
                [
                    confusion_matrix(y_true[row], column[row], labels=[0, 1, 2])
                    for column in y_pred[:, seeds].T
                ],
                axis=0,
            )
            np.testing.assert_allclose(ours[r], expected, rtol=0, atol=1e-12)
    single = _confusions(y_true, y_pred[:, 0], indices, 3)
    np.testing.assert_array_equal(single, _confusions(y_true, y_pred[:, :1], indices, 3))
    np.testing.assert_array_equal(single, np.round(single))


def test_one_seed_column_gives_exactly_the_one_prediction_results() -> None:
    rng = np.random.default_rng(12)
    y_true = rng.integers(0, 2, 150)
    y_pred = _noisy_predictions(y_true, 0.8, 2, seed=3)
    other = _noisy_predictions(y_true, 0.7, 2, seed=4)
    names = ["normal", "pneumonia"]
    flat = bootstrap_intervals(y_true, y_pred, names, seed=5)
    one_column = bootstrap_intervals(y_true, y_pred[:, None], names, seed=5)
    assert one_column.to_dict() == flat.to_dict()
    paired = paired_bootstrap_difference(y_true, other, y_pred, names, seed=5)
    paired_one_column = paired_bootstrap_difference(
        y_true, other[:, None], y_pred[:, None], names, seed=5
    )
    assert paired_one_column.to_dict() == paired.to_dict()
    report = classification_report(y_true, y_pred, names)
    assert classification_report(y_true, y_pred[:, None], names).to_dict() == report.to_dict()
    assert all(isinstance(count, int) for row in report.confusion_matrix for count in row)


def test_identical_seed_columns_equal_one_prediction_per_image() -> None:
    rng = np.random.default_rng(13)
    y_true = rng.integers(0, 4, 200)
    y_pred = _noisy_predictions(y_true, 0.65, 4, seed=6)
    other = _noisy_predictions(y_true, 0.75, 4, seed=7)
    names = ["a", "b", "c", "d"]
    repeated = np.repeat(y_pred[:, None], 3, axis=1)
    # Counting each prediction 3 times and dividing by 3 is exact, so the bootstrap
    # (same image draws, same matrices) matches to the last bit.
    assert bootstrap_intervals(y_true, repeated, names, seed=1).to_dict() == (
        bootstrap_intervals(y_true, y_pred, names, seed=1).to_dict()
    )
    assert paired_bootstrap_difference(
        y_true, np.repeat(other[:, None], 3, axis=1), repeated, names, seed=1
    ).to_dict() == (paired_bootstrap_difference(y_true, other, y_pred, names, seed=1).to_dict())
    pooled = classification_report(y_true, repeated, names)
    _assert_reports_close(pooled, classification_report(y_true, y_pred, names))
    assert all(isinstance(count, float) for row in pooled.confusion_matrix for count in row)


def test_pooled_report_agrees_with_classification_report_for_one_seed() -> None:
    for num_classes in (2, 3, 5):
        rng = np.random.default_rng(num_classes + 30)
        y_true = rng.integers(0, num_classes, 250)
        y_pred = _noisy_predictions(y_true, 0.6, num_classes, seed=8)
        y_pred[y_pred == num_classes - 1] = 0  # a never-predicted class: 0/0 precision
        names = [f"c{k}" for k in range(num_classes)]
        reference = classification_report(y_true, y_pred, names, positive_label=0)
        _assert_reports_close(pooled_report(y_true, y_pred, names, positive_label=0), reference)
        _assert_reports_close(
            pooled_report(y_true, y_pred[:, None], names, positive_label=0), reference
        )


def test_pooled_report_averages_the_confusion_over_seeds() -> None:
    # Image 0 (normal) is called normal by one seed of two; image 1 (pneumonia) by none.
    report = pooled_report(np.array([0, 1]), np.array([[0, 1], [1, 1]]), ["normal", "pneumonia"])
    assert report.confusion_matrix == [[0.5, 0.5], [0.0, 1.0]]
    assert report.per_class[0].recall == 0.5
    assert report.per_class[0].support == 1
    assert report.binary is not None and report.binary.specificity == 0.5
    # Accuracy and recall are linear in the confusion: pooled = mean over seeds.
    rng = np.random.default_rng(14)
    y_true = rng.integers(0, 3, 300)
    y_pred = _seed_predictions(y_true, 0.7, 3, num_seeds=4, seed=40)
    pooled = classification_report(y_true, y_pred, ["a", "b", "c"])
    per_seed = [classification_report(y_true, column, ["a", "b", "c"]) for column in y_pred.T]
    assert pooled.accuracy == pytest.approx(np.mean([r.accuracy for r in per_seed]))
    assert pooled.balanced_accuracy == pytest.approx(
        np.mean([r.balanced_accuracy for r in per_seed])
    )
    np.testing.assert_allclose(
        pooled.confusion_matrix, np.mean([r.confusion_matrix for r in per_seed], axis=0)
    )
    json.dumps(pooled.to_dict())


def test_seed_bootstrap_draws_images_with_all_their_seeds() -> None:
    rng = np.random.default_rng(15)
    y_true = rng.integers(0, 2, 400)
    y_pred = _seed_predictions(y_true, 0.75, 2, num_seeds=3, seed=50)
    report = bootstrap_intervals(y_true, y_pred, ["neg", "pos"], seed=3, n_resamples=500)
    for interval in report.summary.values():
        assert interval.low <= interval.estimate <= interval.high
    assert report.summary["accuracy"].estimate == pytest.approx(np.mean(y_pred == y_true[:, None]))
    # Resample r is the pooled report of the images drawn in row r, seeds kept together.
    indices = stratified_resample_indices(y_true, 500, seed=3)
    boot = _scored(y_true, y_pred, indices, 2, 1)
    for r in (0, 7, 499):
        drawn = pooled_report(y_true[indices[r]], y_pred[indices[r]], ["neg", "pos"])
        assert drawn.binary is not None
        assert boot["mcc"][r] == pytest.approx(drawn.mcc)
        assert boot["sensitivity"][r] == pytest.approx(drawn.binary.sensitivity)


# --- AUROC --------------------------------------------------------------------------------


def _scores(y_true: np.ndarray, num_classes: int, signal: float, seed: int) -> np.ndarray:
    """Softmax probabilities (N, K) that favour the true class by ``signal`` logits."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y_true), num_classes))
    logits[np.arange(len(y_true)), y_true] += signal
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_auroc_point_estimate_matches_scikit_learn_with_ties(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes + 60)
    y_true = rng.integers(0, num_classes, 300)
    y_pred = _noisy_predictions(y_true, 0.7, num_classes, seed=9)
    # One decimal: hundreds of tied scores, whose pairs count 1/2 in both definitions.
    proba = np.round(_scores(y_true, num_classes, 1.0, seed=10), 1)
    names = [f"c{k}" for k in range(num_classes)]
    report = bootstrap_intervals(y_true, y_pred, names, proba=proba, n_resamples=200)
    expected = [roc_auc_score(y_true == k, proba[:, k]) for k in range(num_classes)]
    ours = [report.per_class[name]["auroc"].estimate for name in names]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert report.summary["macro_auroc"].estimate == pytest.approx(np.mean(expected), abs=1e-12)
    assert set(report.per_class["c1"]) == {"precision", "recall", "f1", "auroc"}
    # The other metrics do not depend on the probabilities.
    plain = bootstrap_intervals(y_true, y_pred, names, n_resamples=200)
    assert report.summary["mcc"] == plain.summary["mcc"]


def test_auroc_averages_seed_probabilities_per_image() -> None:
    rng = np.random.default_rng(16)
    y_true = rng.integers(0, 3, 150)
    proba = np.stack([_scores(y_true, 3, 0.8, seed=70 + s) for s in range(4)], axis=1)
    y_pred = proba.argmax(axis=2)
    report = bootstrap_intervals(y_true, y_pred, ["a", "b", "c"], proba=proba, n_resamples=50)
    mean = proba.mean(axis=1)
    for k, name in enumerate(["a", "b", "c"]):
        assert report.per_class[name]["auroc"].estimate == pytest.approx(
            roc_auc_score(y_true == k, mean[:, k])
        )


def test_auroc_of_a_class_absent_from_the_test_set_is_chance_and_left_out_of_macro() -> None:
    y_true = np.array([0] * 30 + [1] * 20)  # class 2 has no test image
    proba = _scores(y_true, 3, 1.5, seed=11)
    report = bootstrap_intervals(
        y_true, proba.argmax(axis=1), ["a", "b", "c"], proba=proba, n_resamples=100
    )
    absent = report.per_class["c"]["auroc"]
    assert (absent.estimate, absent.low, absent.high) == (0.5, 0.5, 0.5)
    present = [roc_auc_score(y_true == k, proba[:, k]) for k in (0, 1)]
    assert report.summary["macro_auroc"].estimate == pytest.approx(np.mean(present))
    json.dumps(report.to_dict(), allow_nan=False)


def test_bootstrap_auroc_interval_brackets_the_estimate_and_narrows_with_more_images() -> None:
    def interval(n: int) -> tuple[float, float, float]:
        y_true = np.arange(n) % 2
        proba = _scores(y_true, 2, 1.0, seed=n)
        report = bootstrap_intervals(
            y_true, proba.argmax(axis=1), ["neg", "pos"], proba=proba, seed=0
        )
        auroc = report.per_class["pos"]["auroc"]
        assert report.summary["macro_auroc"] == auroc  # binary: both classes' AUROC agree
        return auroc.low, auroc.estimate, auroc.high

    small, large = interval(100), interval(2000)
    for low, estimate, high in (small, large):
        assert 0.5 < low < estimate < high <= 1.0
    assert large[2] - large[0] < (small[2] - small[0]) / 2


# --- paired comparisons with seeds ---------------------------------------------------------


def test_paired_difference_of_a_three_seed_arm_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(17)
    y_true = rng.integers(0, 3, 120)
    proba = np.stack([_scores(y_true, 3, 0.7, seed=80 + s) for s in range(3)], axis=1)
    y_pred = proba.argmax(axis=2)
    assert np.any(y_pred[:, 0] != y_pred[:, 1])  # the seeds really disagree
    report = paired_bootstrap_difference(
        y_true, y_pred, y_pred.copy(), ["a", "b", "c"], proba_a=proba, proba_b=proba.copy()
    )
    assert "macro_auroc" in report.summary
    assert "auroc" in report.per_class["b"]
    for gain in [*report.summary.values()] + [
        item for metrics in report.per_class.values() for item in metrics.values()
    ]:
        assert (gain.estimate, gain.low, gain.high, gain.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_auroc_difference_detects_better_probabilities() -> None:
    y_true = np.array([0] * 200 + [1] * 40)
    weak = _scores(y_true, 2, 0.3, seed=12)
    strong = _scores(y_true, 2, 2.0, seed=13)
    report = paired_bootstrap_difference(
        y_true,
        weak.argmax(axis=1),
        strong.argmax(axis=1),
        ["normal", "pneumonia"],
        proba_a=weak,
        proba_b=strong,
        seed=2,
    )
    gain = report.summary["macro_auroc"]
    assert 0 < gain.low <= gain.estimate <= gain.high
    assert gain.p_value < 0.01
    json.dumps(report.to_dict(), allow_nan=False)


# --- McNemar and the seed ensemble ---------------------------------------------------------


def test_mcnemar_exact_against_a_hand_computed_binomial() -> None:
    # 20 images: both right on 7, both wrong on 3, only A right on 2, only B right on 8.
    y_true = np.zeros(20, dtype=int)
    a = np.array([0] * 7 + [1] * 3 + [0] * 2 + [1] * 8)
    b = np.array([0] * 7 + [1] * 3 + [1] * 2 + [0] * 8)
    result = mcnemar_exact(y_true, a, b)
    assert (result.a_only, result.b_only) == (2, 8)
    # Two-sided: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024.
    assert result.p_value == pytest.approx(112 / 1024)
    assert result.p_value == pytest.approx(2 * binom.cdf(2, 10, 0.5))
    swapped = mcnemar_exact(y_true, b, a)
    assert (swapped.a_only, swapped.b_only, swapped.p_value) == (8, 2, result.p_value)
    assert mcnemar_exact(y_true, a, a).to_dict() == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    json.dumps(result.to_dict())


def test_ensemble_predictions_take_the_argmax_of_the_seed_mean() -> None:
    # Seeds 1 and 2 narrowly prefer class 0, seed 3 strongly prefers class 1: a majority
    # vote says 0, the averaged probabilities say 1.
    proba = np.array(
        [
            [[0.55, 0.45, 0.0], [0.55, 0.45, 0.0], [0.0, 1.0, 0.0]],
            [[0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]],
        ]
    )
    np.testing.assert_array_equal(ensemble_predictions(proba), [1, 2])
    np.testing.assert_array_equal(ensemble_predictions(proba[:, 0]), [0, 2])
    assert ensemble_predictions(proba).dtype == np.int64


def test_bad_seed_and_probability_inputs_are_refused() -> None:
    y_true = np.array([0, 1, 0, 1])
    two_seeds = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])
    three_seeds = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1]])
    proba = np.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="same number of seeds"):
        paired_bootstrap_difference(y_true, two_seeds, three_seeds, ["a", "b"])
    with pytest.raises(ValueError, match="together"):
        paired_bootstrap_difference(y_true, two_seeds, two_seeds, ["a", "b"], proba_a=proba)
    with pytest.raises(ValueError):
        bootstrap_intervals(y_true, two_seeds, ["a", "b"], proba=np.full((4, 3), 0.3))
    with pytest.raises(ValueError):
        bootstrap_intervals(y_true, two_seeds, ["a", "b"], proba=np.full((4, 2), np.nan))
    with pytest.raises(ValueError):
        bootstrap_intervals(y_true, np.zeros((4, 0), dtype=int), ["a", "b"])
    with pytest.raises(ValueError):
        bootstrap_intervals(y_true, two_seeds + 1, ["a", "b"])
    with pytest.raises(ValueError):
        pooled_report(y_true, np.zeros((3, 2), dtype=int), ["a", "b"])
    with pytest.raises(ValueError):
        mcnemar_exact(y_true, two_seeds, two_seeds)
