"""Stratified, seed-fixed train/val/test splits, grouped by patient or lesion.

Images of one group (HAM10000 ``lesion_id``, manifest ``group``) always land in the
same split, so a lesion photographed twice cannot leak from train into test. Uses
scikit-learn's ``StratifiedGroupKFold``: one fold of 7 becomes test (~14 %), one fold
of 6 of the rest becomes val (~14 %), the remaining ~71 % train.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

TEST_FOLDS = 7
VAL_FOLDS = 6


def _hold_out_one_fold(
    labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Boolean mask of the first fold of a stratified group k-fold."""
    held = np.zeros(len(labels), dtype=bool)
    largest_class = int(np.unique(labels, return_counts=True)[1].max()) if len(labels) else 0
    n_splits = min(n_folds, len(np.unique(groups)), largest_class)
    if n_splits < 2:
        return held
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare classes have fewer members than folds; they still split as well as they can.
        warnings.simplefilter("ignore", UserWarning)
        _, fold = next(splitter.split(np.zeros(len(labels)), labels, groups))
    held[fold] = True
    return held


def assign_splits(labels: Sequence[str], groups: Sequence[str | None], seed: int) -> list[str]:
    """A split name ("train", "val", "test") per image, fixed by ``seed``.

    Images without a group are their own group.
    """
    y = np.asarray(labels)
    g = np.asarray([grp if grp else f"__image_{i}" for i, grp in enumerate(groups)])
    splits = np.full(len(y), "train", dtype=object)
    test = _hold_out_one_fold(y, g, TEST_FOLDS, seed)
    splits[test] = "test"
    rest = np.flatnonzero(~test)
    val = _hold_out_one_fold(y[rest], g[rest], VAL_FOLDS, seed + 1)
    splits[rest[val]] = "val"
    _ensure_every_class_is_evaluated(y, g, splits, seed)
    return [str(s) for s in splits]


def _ensure_every_class_is_evaluated(
    labels: np.ndarray, groups: np.ndarray, splits: np.ndarray, seed: int
) -> None:
    """Move one training group of a class into val or test when the folds left it out.

    Group k-fold can leave a rare class (5 patients, say) out of a split entirely; a
    class with no validation images cannot be calibrated and one with no test images
    cannot be reported. Only classes with at least 3 groups give one up, so training
    always keeps some.
    """
    rng = np.random.default_rng(seed)
    for split in ("test", "val"):
        for label in np.unique(labels):
            of_class = labels == label
            if (splits[of_class] == split).any():
                continue
            train_groups = np.unique(groups[of_class & (splits == "train")])
            if len(np.unique(groups[of_class])) < 3 or len(train_groups) < 2:
                continue
            chosen = rng.choice(np.sort(train_groups))
            splits[groups == chosen] = split
