"""Classification metrics for long-tailed medical tasks, with bootstrap confidence intervals.

Point estimates of one prediction per image come from scikit-learn. Confidence intervals
come from a *stratified* percentile bootstrap over test images: each resample draws, with
replacement, as many images of every true class as the test set has, so a 20-image tail
class is never resampled away. Bootstrapped metrics are computed from a stack of
confusion matrices in one vectorised pass (thousands of resamples in milliseconds); tests
check that pass against scikit-learn on the unresampled data.

Several training seeds: predictions may be (N, S), S predictions of every image from S
seeds. Each seed's prediction of an image then counts 1/S in the confusion matrix, so a
point estimate is the mean over seeds of the pooled confusion, and the bootstrap draws
*images* and carries all S predictions of a drawn image along (a cluster bootstrap: the
seeds of one image share its difficulty, so they are not S independent observations).

AUROC (one-vs-rest, from softmax probabilities) is computed for every resample at once
from ranks (the Mann-Whitney U statistic), with ties counted half as scikit-learn does.

The paired bootstrap compares two arms (e.g. real-only vs real + synthetic) scored on
the *same* test images: both arms are evaluated on the same resampled indices, so the
interval is for the gain itself, not two overlapping intervals. McNemar's exact test
compares two arms' single predictions per image on the discordant images.

Every result is a plain dataclass; ``to_dict()`` gives JSON-serialisable dicts
(no NaN: undefined ratios are 0, as scikit-learn's ``zero_division=0``; an undefined
AUROC is 0.5, chance level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest, rankdata
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
# Added when probabilities are given.
AUROC_SUMMARY_METRICS = ("macro_auroc",)
AUROC_PER_CLASS_METRICS = ("auroc",)

# AUROC of a class with no positives or no negatives is 0/0. Stratified resampling keeps
# every class at its test-set count, so that happens in a resample only when it already
# happens on the full test set; 0.5 (chance, what a constant score earns) keeps the
# reports NaN-free, and macro_auroc leaves such classes out.
UNDEFINED_AUROC = 0.5


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
    ``class_names`` order: ints for one prediction per image, and for S seeds' predictions
    (N, S) float counts averaged over seeds (each prediction weighs 1/S; rows still sum to
    the class supports). ``balanced_accuracy`` is the mean recall over classes present
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
    confusion_matrix: list[list[int]] | list[list[float]]
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
    """Intervals for summary metrics and, per class name, for precision/recall/F1.

    With probabilities, ``summary`` also holds "macro_auroc" and every class "auroc".
    """

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


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of two arms' predictions on the same images.

    ``a_only`` counts images arm A gets right and arm B wrong, ``b_only`` the reverse;
    ``p_value`` in [0, 1] is the two-sided exact binomial p of the discordant split
    (1.0 when there are no discordant images).
    """

    a_only: int
    b_only: int
    p_value: float

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
        y_pred: int predicted class indices in [0, K), shape (N,), or (N, S) for the
            predictions of S training seeds; with S > 1 the report is ``pooled_report``'s
            (float confusion averaged over seeds), with S == 1 it is that of (N,).
        class_names: K names, index order.
        positive_label: for binary tasks (K == 2), the index of the positive class
            (e.g. "pneumonia"); sensitivity is its recall, specificity the other's.
    """
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        if y_pred.shape[1] != 1:
            return pooled_report(y_true, y_pred, class_names, positive_label=positive_label)
        y_pred = y_pred[:, 0]
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
        binary=_binary_metrics(recall, class_names, positive_label),
    )


def pooled_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    positive_label: int = 1,
) -> ClassificationReport:
    """``classification_report`` pooled over S training seeds, from the weighted confusion.

    Every seed's prediction of an image weighs 1/S, so each metric is computed from the
    mean over seeds of the confusion matrices (not the mean of per-seed metrics, which
    for ratios such as MCC differs). With S == 1 it agrees with ``classification_report``.

    Args:
        y_true: int class indices in [0, K), shape (N,).
        y_pred: int predicted class indices, shape (N, S) (or (N,), read as S = 1).
        class_names: K names, index order.
        positive_label: as for ``classification_report``.

    Returns:
        A report whose ``confusion_matrix`` holds float counts averaged over seeds (ints
        when S == 1); ``support`` stays the int image count per true class.
    """
    y_true, y_pred = _check_seed_labels(y_true, y_pred, len(class_names))
    cm = _confusions(y_true, y_pred, None, len(class_names))
    # Sensitivity/specificity come from _binary_metrics, which validates positive_label;
    # any valid label serves here.
    metrics = {name: values[0] for name, values in _metrics_from_confusion(cm, 1).items()}
    support = np.bincount(y_true, minlength=len(class_names))
    per_class = [
        ClassMetrics(
            name=str(name),
            precision=float(metrics["precision"][k]),
            recall=float(metrics["recall"][k]),
            f1=float(metrics["f1"][k]),
            support=int(support[k]),
        )
        for k, name in enumerate(class_names)
    ]
    counts = cm[0].astype(np.int64).tolist() if y_pred.shape[1] == 1 else cm[0].tolist()
    return ClassificationReport(
        class_names=[str(name) for name in class_names],
        num_images=int(len(y_true)),
        accuracy=float(metrics["accuracy"]),
        balanced_accuracy=float(metrics["balanced_accuracy"]),
        macro_f1=float(metrics["macro_f1"]),
        mcc=float(metrics["mcc"]),
        cohen_kappa=float(metrics["cohen_kappa"]),
        per_class=per_class,
        confusion_matrix=counts,
        binary=_binary_metrics(metrics["recall"], class_names, positive_label),
    )


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    proba: np.ndarray | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    positive_label: int = 1,
) -> BootstrapReport:
    """Stratified percentile bootstrap intervals for every metric of one arm.

    Args:
        y_true: int class indices, shape (N,).
        y_pred: int predicted class indices, shape (N,), or (N, S) for S training seeds
            (each prediction weighs 1/S; resamples draw images with all their S seeds).
        proba: optional class probabilities, shape (N, K) or (N, S, K) (averaged over
            seeds per image); adds per-class "auroc" and summary "macro_auroc".
        n_resamples: bootstrap resamples (default 1,000).
        confidence: two-sided coverage in (0, 1), e.g. 0.95 for a 95 % interval.
        seed: seeds ``numpy.random.Generator``; same seed, same intervals.
    """
    num_classes = len(class_names)
    y_true, y_pred = _check_seed_labels(y_true, y_pred, num_classes)
    scores = None if proba is None else _check_proba(proba, len(y_true), num_classes)
    indices = stratified_resample_indices(y_true, n_resamples, seed)
    point = _scored(y_true, y_pred, None, num_classes, positive_label, scores)
    boot = _scored(y_true, y_pred, indices, num_classes, positive_label, scores)
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

    with_auroc = scores is not None
    summary = {name: interval(name) for name in _summary_names(num_classes, with_auroc)}
    per_class = {
        str(class_name): {name: interval(name, k) for name in _per_class_names(with_auroc)}
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
    proba_a: np.ndarray | None = None,
    proba_b: np.ndarray | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    positive_label: int = 1,
) -> PairedBootstrapReport:
    """Gain of arm B over arm A (B - A), both scored on the same test images.

    Each resample draws one set of image indices (stratified by true class) and scores
    both arms on it, so image difficulty cancels out of the difference. With S seeds per
    arm, a drawn image brings all S predictions of both arms.

    Args:
        y_true: int class indices, shape (N,).
        y_pred_a: baseline arm's predictions (e.g. real only), shape (N,) or (N, S).
        y_pred_b: compared arm's predictions (e.g. real + synthetic), same shape as A's.
        proba_a, proba_b: optional probabilities of each arm, (N, K) or (N, S, K); give
            both or neither. They add "auroc" / "macro_auroc" differences.
    """
    num_classes = len(class_names)
    y_true, y_pred_a = _check_seed_labels(y_true, y_pred_a, num_classes)
    _, y_pred_b = _check_seed_labels(y_true, y_pred_b, num_classes)
    if y_pred_a.shape != y_pred_b.shape:
        raise ValueError(
            f"both arms need the same number of seeds: {y_pred_a.shape} vs {y_pred_b.shape}"
        )
    if (proba_a is None) != (proba_b is None):
        raise ValueError("give proba_a and proba_b together, or neither")
    scores_a = None if proba_a is None else _check_proba(proba_a, len(y_true), num_classes)
    scores_b = None if proba_b is None else _check_proba(proba_b, len(y_true), num_classes)
    indices = stratified_resample_indices(y_true, n_resamples, seed)
    point_a = _scored(y_true, y_pred_a, None, num_classes, positive_label, scores_a)
    point_b = _scored(y_true, y_pred_b, None, num_classes, positive_label, scores_b)
    boot_a = _scored(y_true, y_pred_a, indices, num_classes, positive_label, scores_a)
    boot_b = _scored(y_true, y_pred_b, indices, num_classes, positive_label, scores_b)
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

    with_auroc = scores_a is not None
    return PairedBootstrapReport(
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        summary={name: difference(name) for name in _summary_names(num_classes, with_auroc)},
        per_class={
            str(class_name): {name: difference(name, k) for name in _per_class_names(with_auroc)}
            for k, class_name in enumerate(class_names)
        },
    )


def mcnemar_exact(y_true: np.ndarray, y_pred_a: np.ndarray, y_pred_b: np.ndarray) -> McNemarResult:
    """McNemar's exact test: do arms A and B err on different images more than by chance?

    Only discordant images (one arm right, the other wrong) carry information; under the
    null each is equally likely to favour either arm, so the smaller discordant count is
    Binomial(b + c, 1/2).

    Args:
        y_true: int class indices, shape (N,).
        y_pred_a, y_pred_b: one int prediction per image from each arm, shape (N,); for S
            seeds, pass ``ensemble_predictions`` of each arm's probabilities.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred_a = np.asarray(y_pred_a, dtype=np.int64)
    y_pred_b = np.asarray(y_pred_b, dtype=np.int64)
    if y_true.ndim != 1 or y_pred_a.shape != y_true.shape or y_pred_b.shape != y_true.shape:
        raise ValueError(
            f"y_true {y_true.shape}, y_pred_a {y_pred_a.shape} and y_pred_b "
            f"{y_pred_b.shape} must all be (N,)"
        )
    if len(y_true) == 0:
        raise ValueError("no test images")
    right_a = y_pred_a == y_true
    right_b = y_pred_b == y_true
    a_only = int(np.sum(right_a & ~right_b))
    b_only = int(np.sum(right_b & ~right_a))
    discordant = a_only + b_only
    # binomtest refuses n = 0; with no discordant image the arms are indistinguishable.
    p_value = (
        1.0 if discordant == 0 else float(binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
    )
    return McNemarResult(a_only=a_only, b_only=b_only, p_value=p_value)


def ensemble_predictions(proba: np.ndarray) -> np.ndarray:
    """One prediction per image from S seeds: argmax of the seed-averaged probabilities.

    Args:
        proba: class probabilities, shape (N, S, K) (or (N, K), read as S = 1).

    Returns:
        int64 class indices in [0, K), shape (N,); ties go to the lower class index.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim not in (2, 3) or proba.shape[0] == 0 or proba.shape[-1] == 0:
        raise ValueError(f"proba must be (N, S, K) or (N, K), got {proba.shape}")
    mean = proba.mean(axis=1) if proba.ndim == 3 else proba
    return np.argmax(mean, axis=1).astype(np.int64)


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


def _summary_names(num_classes: int, with_auroc: bool = False) -> tuple[str, ...]:
    return (
        SUMMARY_METRICS
        + (BINARY_METRICS if num_classes == 2 else ())
        + (AUROC_SUMMARY_METRICS if with_auroc else ())
    )


def _per_class_names(with_auroc: bool) -> tuple[str, ...]:
    return PER_CLASS_METRICS + (AUROC_PER_CLASS_METRICS if with_auroc else ())


def _binary_metrics(
    recall: np.ndarray, class_names: Sequence[str], positive_label: int
) -> BinaryMetrics | None:
    """Sensitivity / specificity from per-class recall (K,); None unless K == 2."""
    if len(class_names) != 2:
        return None
    if positive_label not in (0, 1):
        raise ValueError(f"positive_label must be 0 or 1, got {positive_label}")
    sensitivity = float(recall[positive_label])
    specificity = float(recall[1 - positive_label])
    return BinaryMetrics(
        positive_class=str(class_names[positive_label]),
        sensitivity=sensitivity,
        specificity=specificity,
        youden_index=sensitivity + specificity - 1.0,
    )


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


def _check_seed_labels(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validated int64 labels: y_true (N,) and y_pred as (N, S), S >= 1 ((N,) gives S = 1)."""
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    if y_pred.ndim != 2 or y_pred.shape[1] == 0:
        raise ValueError(f"y_pred must be (N,) or (N, S) with S >= 1, got {y_pred.shape}")
    y_true, _ = _check_labels(y_true, y_pred[:, 0], num_classes)
    if y_pred.min() < 0 or y_pred.max() >= num_classes:
        raise ValueError(f"y_pred holds labels outside [0, {num_classes})")
    return y_true, y_pred


def _check_proba(proba: np.ndarray, num_images: int, num_classes: int) -> np.ndarray:
    """Per-image scores (N, K) from probabilities (N, K) or (N, S, K), mean over seeds."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim not in (2, 3) or proba.shape[0] != num_images or proba.shape[-1] != num_classes:
        raise ValueError(
            f"proba must be ({num_images}, {num_classes}) or ({num_images}, S, {num_classes}),"
            f" got {proba.shape}"
        )
    if proba.ndim == 3 and proba.shape[1] == 0:
        raise ValueError("proba has no seeds")
    if not np.all(np.isfinite(proba)):
        raise ValueError("proba holds NaN or infinite values")
    return proba.mean(axis=1) if proba.ndim == 3 else proba


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
    scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every metric on the full set (``indices`` None, R = 1) or on each resample (R rows).

    ``y_pred`` is (N,) or (N, S); ``scores`` (N, K), when given, adds "auroc" (R, K) and
    "macro_auroc" (R,).
    """
    metrics = _metrics_from_confusion(
        _confusions(y_true, y_pred, indices, num_classes), positive_label
    )
    if scores is not None:
        auroc, defined = _aurocs(y_true, scores, indices, num_classes)
        macro = _ratio((auroc * defined).sum(axis=1), defined.sum(axis=1))
        metrics["auroc"] = auroc
        metrics["macro_auroc"] = np.where(defined.any(axis=1), macro, UNDEFINED_AUROC)
    return metrics


def _confusions(
    y_true: np.ndarray, y_pred: np.ndarray, indices: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """Confusion matrices, shape (R, K, K), one per resample (R = 1 without ``indices``).

    ``y_pred`` (N, S) holds S seeds' predictions: every drawn image adds 1/S per seed, so
    a matrix is the mean over seeds and its rows sum to the (resampled) class counts.
    """
    if indices is None:
        indices = np.arange(len(y_true))[None, :]
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    n_resamples = indices.shape[0]
    num_seeds = y_pred.shape[1]
    offsets = np.arange(n_resamples)[:, None] * num_classes * num_classes
    rows = y_true[indices] * num_classes + offsets
    # Every prediction weighs the same 1/S, so count in integers seed by seed and divide
    # once: exact (S identical seeds give exactly the (N,) matrix, S = 1 today's), and
    # memory stays at one (R, N) index block rather than (R, N, S).
    counts = np.zeros(n_resamples * num_classes**2, dtype=np.int64)
    for s in range(num_seeds):
        cells = rows + y_pred[indices, s]
        counts += np.bincount(cells.ravel(), minlength=n_resamples * num_classes**2)
    # Division by S = 1 is exact, so one prediction per image gives integer counts.
    return counts.reshape(n_resamples, num_classes, num_classes) / float(num_seeds)


def _aurocs(
    y_true: np.ndarray, scores: np.ndarray, indices: np.ndarray | None, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest AUROC of every class on every resample, via the Mann-Whitney U.

    AUROC_k = (sum of the positives' ranks - P (P + 1) / 2) / (P * Q) over the ranks of
    class k's scores among the resample's N images (P positives, Q = N - P negatives);
    average ranks for ties count a tied positive/negative pair as 1/2, as the trapezoidal
    ROC area of scikit-learn does. One ``rankdata`` call per class covers all resamples.

    Returns:
        AUROC in [0, 1], shape (R, K), ``UNDEFINED_AUROC`` where a class has no positives
        or no negatives; and that definedness mask, bool (R, K).
    """
    if indices is None:
        indices = np.arange(len(y_true))[None, :]
    labels = y_true[indices]
    auroc = np.full((indices.shape[0], num_classes), UNDEFINED_AUROC)
    defined = np.zeros((indices.shape[0], num_classes), dtype=bool)
    for k in range(num_classes):
        positive = labels == k
        n_pos = positive.sum(axis=1).astype(np.float64)
        n_neg = positive.shape[1] - n_pos
        defined[:, k] = (n_pos > 0) & (n_neg > 0)
        if not defined[:, k].any():
            continue  # skip the ranking: the class is absent (or alone) everywhere
        ranks = rankdata(scores[indices, k], method="average", axis=1)
        u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1.0) / 2.0
        auroc[:, k] = np.where(defined[:, k], _ratio(u, n_pos * n_neg), UNDEFINED_AUROC)
    return auroc, defined


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
