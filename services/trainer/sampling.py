"""Synthetic images per class: offline fill-to-max and IOIS accuracy-adaptive sampling (AAS).

Offline campaigns (Jiang et al., 2026) fill every class towards the head class:
``n_syn(c) = max(0, n_max - n_c)``.

Online campaigns (IOIS, Li et al., MICCAI 2024) split each round's budget N across
classes by the classifier's current per-class accuracy a_c (Accuracy-Adaptive
Sampling, AAS):

    n_c = floor(N * exp(1 - a_c) / sum_k exp(1 - a_k)),   a_c = 0.5 before the first round.

Classes the classifier gets wrong more often receive more images. The accuracies must
be measured on *training or validation* images — never the test split, which would
leak test labels into what the classifier is trained on. :func:`aas_allocation` makes
the caller name the source and refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

AAS_INITIAL_ACCURACY = 0.5
AccuracySource = Literal["train", "validation"]


def fill_to_max_counts(
    class_counts: Mapping[str, int], *, target: int | None = None
) -> dict[str, int]:
    """Synthetic images per class to bring every class up to the head class.

    Args:
        class_counts: real training images per class name (n_c >= 0).
        target: fill to this count instead of n_max (the largest class), e.g. to cap a
            campaign; classes already at or above it get 0.

    Returns:
        ``{class name: max(0, target - n_c)}`` in the order of ``class_counts``.
    """
    if not class_counts:
        return {}
    if any(count < 0 for count in class_counts.values()):
        raise ValueError("class counts must be non-negative")
    fill_to = max(class_counts.values()) if target is None else target
    if fill_to < 0:
        raise ValueError(f"target must be non-negative, got {fill_to}")
    return {name: max(0, fill_to - count) for name, count in class_counts.items()}


def initial_class_accuracy(class_names: Sequence[str]) -> dict[str, float]:
    """AAS's starting point before any accuracy has been measured: 0.5 for every class."""
    return {name: AAS_INITIAL_ACCURACY for name in class_names}


def aas_allocation(
    budget: int,
    class_accuracy: Mapping[str, float],
    *,
    accuracy_source: AccuracySource,
) -> dict[str, int]:
    """Split one round's synthesis budget across classes by accuracy (IOIS AAS).

    Args:
        budget: N, images to synthesise this round (IOIS's public code uses 2,000 per epoch).
        class_accuracy: a_c in [0, 1] per class name — the fraction of that class's
            training (or validation) images the current classifier gets right, e.g.
            ``TrainingHistory.epochs[-1].val_per_class_recall``. Use
            :func:`initial_class_accuracy` for the first round.
        accuracy_source: where the accuracies were measured, "train" or "validation";
            stated by the caller so a test-split accuracy cannot slip in unnoticed.

    Returns:
        ``{class name: n_c}``. Floors are kept as the paper writes them, so the counts
        may sum to up to K - 1 less than ``budget``.
    """
    if accuracy_source not in ("train", "validation"):
        raise ValueError(
            f"AAS accuracies must come from training or validation data, not {accuracy_source!r}"
        )
    if budget < 0:
        raise ValueError(f"budget must be non-negative, got {budget}")
    if not class_accuracy:
        raise ValueError("class_accuracy is empty")
    accuracy = np.array(list(class_accuracy.values()), dtype=np.float64)
    if not np.all((accuracy >= 0.0) & (accuracy <= 1.0)):
        raise ValueError("class accuracies must lie in [0, 1]")
    share = np.exp(1.0 - accuracy)
    share /= share.sum()
    # math.floor on Python floats, with a tiny tolerance so that an exact share such as
    # 1000 * 0.5 is not floored to 499 by rounding in the last bit.
    counts = [math.floor(budget * float(s) + 1e-9) for s in share]
    return dict(zip(class_accuracy.keys(), counts, strict=True))


def per_class_accuracy(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    previous: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """a_c: fraction of class c's images predicted as c, from train or validation predictions.

    Args:
        y_true, y_pred: int class indices, shape (N,).
        previous: accuracies to keep for classes with no images in this evaluation
            (default 0.5, the AAS start value).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    accuracy: dict[str, float] = {}
    for index, name in enumerate(class_names):
        members = y_true == index
        if members.any():
            accuracy[name] = float(np.mean(y_pred[members] == index))
        else:
            accuracy[name] = (previous or {}).get(name, AAS_INITIAL_ACCURACY)
    return accuracy
