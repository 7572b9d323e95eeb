"""Offline fill-to-max and IOIS accuracy-adaptive sampling, checked with exact numbers."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.sampling import (
    aas_allocation,
    fill_to_max_counts,
    initial_class_accuracy,
    per_class_accuracy,
)

ISIC_2019_COUNTS = {
    "NV": 12875,
    "MEL": 4522,
    "BCC": 3323,
    "BKL": 2624,
    "AK": 867,
    "SCC": 628,
    "VASC": 253,
    "DF": 239,
}


def test_fill_to_max_brings_every_isic_class_to_the_head_class() -> None:
    counts = fill_to_max_counts(ISIC_2019_COUNTS)
    assert counts == {
        "NV": 0,
        "MEL": 8353,
        "BCC": 9552,
        "BKL": 10251,
        "AK": 12008,
        "SCC": 12247,
        "VASC": 12622,
        "DF": 12636,
    }
    assert all(counts[c] + ISIC_2019_COUNTS[c] == 12875 for c in counts)


def test_fill_to_target_gives_nothing_to_classes_above_it() -> None:
    assert fill_to_max_counts({"a": 500, "b": 120, "c": 20}, target=300) == {
        "a": 0,
        "b": 180,
        "c": 280,
    }
    assert fill_to_max_counts({}) == {}
    with pytest.raises(ValueError):
        fill_to_max_counts({"a": -1})


def test_aas_starts_uniform_at_half_accuracy() -> None:
    start = initial_class_accuracy(list(ISIC_2019_COUNTS))
    assert set(start.values()) == {0.5}
    # 2000 / 8 is exactly 250; floating-point rounding must not floor it to 249.
    allocation = aas_allocation(2000, start, accuracy_source="train")
    assert allocation == {name: 250 for name in ISIC_2019_COUNTS}


def test_aas_gives_more_images_to_less_accurate_classes() -> None:
    # exp(0.1) : exp(0.5) : exp(0.9), normalised, times 1000 = 211.98, 316.24, 471.78.
    allocation = aas_allocation(
        1000, {"NV": 0.9, "MEL": 0.5, "DF": 0.1}, accuracy_source="validation"
    )
    assert allocation == {"NV": 211, "MEL": 316, "DF": 471}
    # exp(1) / (1 + e) * 2000 = 1462.12 for the class never recognised.
    assert aas_allocation(2000, {"a": 1.0, "b": 0.0}, accuracy_source="train") == {
        "a": 537,
        "b": 1462,
    }
    # Floors are kept: 2.81, 2.30, 1.89 -> 2, 2, 1 (one image of the 7 is not spent).
    assert aas_allocation(7, {"a": 0.2, "b": 0.4, "c": 0.6}, accuracy_source="train") == {
        "a": 2,
        "b": 2,
        "c": 1,
    }


def test_aas_refuses_test_split_accuracies_and_bad_values() -> None:
    with pytest.raises(ValueError, match="training or validation"):
        aas_allocation(100, {"a": 0.5, "b": 0.5}, accuracy_source="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        aas_allocation(100, {"a": 1.5, "b": 0.5}, accuracy_source="train")
    with pytest.raises(ValueError):
        aas_allocation(-1, {"a": 0.5}, accuracy_source="train")


def test_per_class_accuracy_keeps_previous_value_for_absent_classes() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    accuracy = per_class_accuracy(y_true, y_pred, ["a", "b", "c"], previous={"c": 0.8})
    assert accuracy == {"a": 0.5, "b": 0.5, "c": 0.8}
    assert per_class_accuracy(y_true, y_pred, ["a", "b", "c"])["c"] == 0.5
