"""Classification metrics for long-tailed medical tasks, with bootstrap confidence intervals.

Point estimates come from scikit-learn. Confidence intervals come from a *stratified*
percentile bootstrap over test images: each resample draws, with replacement, as many
images of every true class as the test set has, so a 20-image tail class is never
resampled away. Bootstrapped metrics are computed from a stack of confusion matrices in
one vectorised pass (thousands of resamples in milliseconds); tests check that pass
against scikit-learn on the unresampled data.

The paired bootstrap compares two arms (e.g. real-only vs real + synthetic) scored on
the *same* test images: both arms are evaluated on the same resampled indices, so the
interval is for the gain itself, not two overlapping intervals.

Every result is a plain dataclass; ``to_dict()`` gives JSON-serialisable dicts
(no NaN: undefined ratios are 0, as scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
)

DEFAULT_RESAMPLES = 1_000
DEFAULT_CONFIDENCE = 0.95

# Summary metrics reported for every task; binary tasks add BINARY_METRICS.
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "cohen_kappa")
BINARY_METRICS = ("sensitivity", "specificity", "youden_index")
PER_CLASS_METRICS = ("precision", "recall", "f1")


@dataclass(frozen=True)
class ClassMetrics:
    """One class: precision, recall (= per-class accuracy) and F1 in [0, 1]; support in images."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class BinaryMetrics:
    """Binary-task figures as the chest X-ray literature reports them (all in [0, 1] except
    Youden's index J = sensitivity + specificity - 1, in [-1, 1])."""

    positive_class: str
    sensitivity: float
    specificity: float
    youden_index: float


@dataclass(frozen=True)
class ClassificationReport:
    """Point estimates on one test set.

    ``confusion_matrix[i][j]`` counts images of true class i predicted as class j, in
    ``class_names`` order. ``balanced_accuracy`` is the mean recall over classes present
    in the test set; ``macro_f1`` averages F1 over all classes. ``mcc`` is in [-1, 1]
    (multiclass Matthews correlation); ``cohen_kappa`` in [-1, 1].
    """

    class_names: list[str]
    num_images: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    mcc: float
    cohen_kappa: float
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]
    binary: BinaryMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval: ``estimate`` is the value on the full test set."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class DifferenceInterval:
    """Gain of arm B over arm A (B - A) with its paired bootstrap interval.

    ``p_value`` is the two-sided bootstrap p-value 2 * min(P(d* <= 0), P(d* >= 0)) over
    resampled differences d*, capped at 1: small when the interval keeps clear of zero.
    """

    estimate: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True)
class BootstrapReport:
    """Intervals for summary metrics and, per class name, for precision/recall/F1."""

    confidence: float
    n_resamples: int
    seed: int
    summary: dict[str, Interval]
    per_class: dict[str, dict[str, Interval]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedBootstrapReport:
    """Paired differences (arm B - arm A) on the same test images."""

    confidence: float
    n_resamples: int
    seed: int
    summary: dict[str, DifferenceInterval]
    per_class: dict[str, dict[str, DifferenceInterval]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    positive_label: int = 1,
) -> ClassificationReport:
    """Per-class and summary metrics of predictions on one test set.

    Args:
        y_true: int class indices in [0, K), shape (N,).
        y_pred: int predicted class indices in [0, K), shape (N,).
        class_names: K names, index order.
        positive_label: for binary tasks (K == 2), the index of the positive class
            (e.g. "pneumonia"); sensitivity is its recall, specificity the other's.
    """
    y_true, y_pred = _check_labels(y_true, y_pred, len(class_names))
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        ClassMetrics(
            name=str(name),
            precision=float(precision[k]),
            recall=float(recall[k]),
            f1=float(f1[k]),
            support=int(support[k]),
        )
        for k, name in enumerate(class_names)
    ]
    binary = None
    if len(class_names) == 2:
        if positive_label not in (0, 1):
            raise ValueError(f"positive_label must be 0 or 1, got {positive_label}")
        sensitivity = float(recall[positive_label])
        specificity = float(recall[1 - positive_label])
        binary = BinaryMetrics(
            positive_class=str(class_names[positive_label]),
            sensitivity=sensitivity,
            specificity=specificity,
            youden_index=sensitivity + specificity - 1.0,
        )
    return ClassificationReport(
        class_names=[str(name) for name in class_names],
        num_images=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=_sklearn_balanced_accuracy(y_true, y_pred),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        mcc=float(matthews_corrcoef(y_true, y_pred)),
        cohen_kappa=_sklearn_kappa(y_true, y_pred, labels),
        per_class=per_class,
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        binary=binary,
    )


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    positive_label: int = 1,
) -> BootstrapReport:
    """Stratified percentile bootstrap intervals for every metric of one arm.

    Args:
        y_true, y_pred: int class indices, shape (N,).
        n_resamples: bootstrap resamples (default 1,000).
        confidence: two-sided coverage in (0, 1), e.g. 0.95 for a 95 % interval.
        seed: seeds ``numpy.random.Generator``; same seed, same intervals.
    """
    y_true, y_pred = _check_labels(y_true, y_pred, len(class_names))
    num_classes = len(class_names)
    indices = stratified_resample_indices(y_true, n_resamples, seed)
    point = _scored(y_true, y_pred, None, num_classes, positive_label)
    boot = _scored(y_true, y_pred, indices, num_classes, positive_label)
    alpha = (1.0 - confidence) / 2.0

    def interval(name: str, k: int | None = None) -> Interval:
        estimate, draws = (
            (point[name][0], boot[name])
            if k is None
            else (
                point[name][0, k],
                boot[name][:, k],
            )
        )
        low, high = np.quantile(draws, [alpha, 1.0 - alpha])
        return Interval(estimate=float(estimate), low=float(low), high=float(high))

    summary = {name: interval(name) for name in _summary_names(num_classes)}
    per_class = {
        str(class_name): {name: interval(name, k) for name in PER_CLASS_METRICS}
        for k, class_name in enumerate(class_names)
    }
    return BootstrapReport(
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        summary=summary,
        per_class=per_class,
    )


def paired_bootstrap_difference(
    y_true: np.ndarray,
    y_pred_a: np.ndarray,
    y_pred_b: np.ndarray,
    class_names: Sequence[str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    positive_label: int = 1,
) -> PairedBootstrapReport:
    """Gain of arm B over arm A (B - A), both scored on the same test images.

    Each resample draws one set of image indices (stratified by true class) and scores
    both arms on it, so image difficulty cancels out of the difference.

    Args:
        y_true: int class indices, shape (N,).
        y_pred_a: baseline arm's predictions (e.g. real only), shape (N,).
        y_pred_b: compared arm's predictions (e.g. real + synthetic), shape (N,).
    """
    y_true, y_pred_a = _check_labels(y_true, y_pred_a, len(class_names))
    _, y_pred_b = _check_labels(y_true, y_pred_b, len(class_names))
    num_classes = len(class_names)
    indices = stratified_resample_indices(y_true, n_resamples, seed)
    point_a = _scored(y_true, y_pred_a, None, num_classes, positive_label)
    point_b = _scored(y_true, y_pred_b, None, num_classes, positive_label)
    boot_a = _scored(y_true, y_pred_a, indices, num_classes, positive_label)
    boot_b = _scored(y_true, y_pred_b, indices, num_classes, positive_label)
    alpha = (1.0 - confidence) / 2.0

    def difference(name: str, k: int | None = None) -> DifferenceInterval:
        if k is None:
            estimate = point_b[name][0] - point_a[name][0]
            draws = boot_b[name] - boot_a[name]
        else:
            estimate = point_b[name][0, k] - point_a[name][0, k]
            draws = boot_b[name][:, k] - boot_a[name][:, k]
        low, high = np.quantile(draws, [alpha, 1.0 - alpha])
        p_value = min(1.0, 2.0 * min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0))))
        return DifferenceInterval(
            estimate=float(estimate), low=float(low), high=float(high), p_value=p_value
        )

    return PairedBootstrapReport(
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        summary={name: difference(name) for name in _summary_names(num_classes)},
        per_class={
            str(class_name): {name: difference(name, k) for name in PER_CLASS_METRICS}
            for k, class_name in enumerate(class_names)
        },
    )


def stratified_resample_indices(y_true: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap index sets that keep every true class at its test-set count.

    Returns int64 indices into ``y_true``, shape (n_resamples, N); row r is resample r,
    grouped by class (order within a row does not matter for any metric here).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    blocks = []
    for label in np.unique(y_true):
        members = np.flatnonzero(y_true == label)
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
        blocks.append(members[draws])
    return np.concatenate(blocks, axis=1)


def _summary_names(num_classes: int) -> tuple[str, ...]:
    return SUMMARY_METRICS + (BINARY_METRICS if num_classes == 2 else ())


def _check_labels(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal (N,)")
    if len(y_true) == 0:
        raise ValueError("no test images")
    if num_classes < 2:
        raise ValueError("a classification task needs at least two classes")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    return y_true, y_pred


def _sklearn_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # scikit-learn averages recall over classes present in y_true; a class only ever
    # predicted (never true) makes it warn, so score on the true classes directly.
    present = np.unique(y_true)
    if set(np.unique(y_pred)) <= set(present):
        return float(balanced_accuracy_score(y_true, y_pred))
    recalls = [float(np.mean(y_pred[y_true == label] == label)) for label in present]
    return float(np.mean(recalls))


def _sklearn_kappa(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> float:
    # Kappa is 0/0 when both raters use one single class; report 0 (no agreement beyond
    # chance) instead of scikit-learn's NaN, which JSON cannot carry.
    kappa = float(cohen_kappa_score(y_true, y_pred, labels=labels))
    return 0.0 if np.isnan(kappa) else kappa


def _scored(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    indices: np.ndarray | None,
    num_classes: int,
    positive_label: int,
) -> dict[str, np.ndarray]:
    """Every metric on the full set (``indices`` None, R = 1) or on each resample (R rows)."""
    return _metrics_from_confusion(
        _confusions(y_true, y_pred, indices, num_classes), positive_label
    )


def _confusions(
    y_true: np.ndarray, y_pred: np.ndarray, indices: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """Confusion matrices, shape (R, K, K), one per resample (R = 1 without ``indices``)."""
    if indices is None:
        indices = np.arange(len(y_true))[None, :]
    n_resamples = indices.shape[0]
    cells = y_true[indices] * num_classes + y_pred[indices]
    offsets = np.arange(n_resamples)[:, None] * num_classes * num_classes
    counts = np.bincount((cells + offsets).ravel(), minlength=n_resamples * num_classes**2)
    return counts.reshape(n_resamples, num_classes, num_classes).astype(np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (zero_division=0)."""
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _metrics_from_confusion(cm: np.ndarray, positive_label: int) -> dict[str, np.ndarray]:
    """All reported metrics from confusion matrices (R, K, K).

    Summary metrics have shape (R,), per-class metrics (R, K). Definitions follow
    scikit-learn (checked in tests): multiclass MCC is Gorodkin's R_K statistic.
    """
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true_per_class = cm.sum(axis=2)  # support
    pred_per_class = cm.sum(axis=1)
    total = cm.sum(axis=(1, 2))
    correct = tp.sum(axis=1)

    precision = _ratio(tp, pred_per_class)
    recall = _ratio(tp, true_per_class)
    f1 = _ratio(2.0 * tp, true_per_class + pred_per_class)
    present = true_per_class > 0
    balanced_accuracy = _ratio((recall * present).sum(axis=1), present.sum(axis=1))

    agreement_by_chance = (true_per_class * pred_per_class).sum(axis=1)
    mcc = _ratio(
        correct * total - agreement_by_chance,
        np.sqrt(total**2 - (pred_per_class**2).sum(axis=1))
        * np.sqrt(total**2 - (true_per_class**2).sum(axis=1)),
    )
    observed = _ratio(correct, total)
    expected = _ratio(agreement_by_chance, total**2)
    kappa = _ratio(observed - expected, 1.0 - expected)

    metrics = {
        "accuracy": observed,
        "balanced_accuracy": balanced_accuracy,
        "macro_f1": f1.mean(axis=1),
        "mcc": mcc,
        "cohen_kappa": kappa,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }
    if cm.shape[1] == 2:
        sensitivity = recall[:, positive_label]
        specificity = recall[:, 1 - positive_label]
        metrics |= {
            "sensitivity": sensitivity,
            "specificity": specificity,
            "youden_index": sensitivity + specificity - 1.0,
        }
    return metrics
