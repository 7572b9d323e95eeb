"""Point metrics against scikit-learn, and the stratified / paired bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
)

from services.trainer.metrics import (
    _scored,
    bootstrap_intervals,
    classification_report,
    paired_bootstrap_difference,
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
