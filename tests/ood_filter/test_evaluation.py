"""The built-in evaluation reports AUROC, keep and rejection rates as plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.ood_filter.evaluation import LabelledImages, evaluate_ood_filter, shrink_classes
from services.ood_filter.filter import OodFilterConfig
from services.ood_filter.planted import blur, flip_or_rotate, plant_bad_candidates, shift_colour
from tests.ood_filter.conftest import BlockColourExtractor, labels_for, make_images


def test_evaluation_separates_real_images_from_planted_failures(
    extractor: BlockColourExtractor,
) -> None:
    rng = np.random.default_rng(20)
    sets = {
        name: LabelledImages(make_images(rng, labels_for(n)), labels_for(n))
        for name, n in (("train", 40), ("validation", 30), ("heldout", 30))
    }
    progress: list[tuple[int, int]] = []

    report = evaluate_ood_filter(
        extractor,
        sets["train"],
        sets["validation"],
        sets["heldout"],
        class_names=["NV", "MEL", "DF"],
        planted_per_kind=20,
        progress=lambda done, total: progress.append((done, total)),
    )

    assert json.loads(json.dumps(report)) == report  # JSON-able as is
    assert report["skipped"] == {}
    assert set(report["per_class"]) == {"NV", "MEL", "DF"}
    assert progress[-1] == (3, 3)
    df = report["per_class"]["DF"]
    assert df["n_planted"] == {
        "other_class": 20,
        "noise": 20,
        "blur": 20,
        "colour_shift": 20,
        "exact_copy": 20,
        "flipped_copy": 20,
    }
    # Block-mean features barely see blur or zero-mean noise (block means survive both);
    # the sharpness detector does, and the minimum-percentile combination lets it decide.
    for entry in report["per_class"].values():
        assert min(entry["combined_auroc_by_kind"].values()) > 0.95
        assert set(entry["auroc"]) == {*entry["thresholds"], "combined"}
    overall = report["overall"]
    assert overall["copy_rejection_rate"] == 1.0
    assert overall["real_keep_rate"] >= 0.8
    assert overall["mean_auroc"]["combined"] > 0.95
    assert overall["mean_auroc"]["combined"] > max(
        auroc for name, auroc in overall["mean_auroc"].items() if name != "combined"
    )  # the combination beats every single detector
    assert overall["rejection_rate"]["colour_shift"] == 1.0
    assert overall["rejection_rate"]["blur"] >= 0.8


def test_planted_failures_change_the_images_as_described() -> None:
    rng = np.random.default_rng(21)
    images = make_images(rng, labels_for(4))

    planted = plant_bad_candidates(
        images[:4], images[4:], images[8:], per_kind=3, rng=np.random.default_rng(0)
    )

    assert {kind: len(batch) for kind, batch in planted.items()} == dict.fromkeys(planted, 3)
    assert all(
        batch.dtype == np.uint8 and batch.shape[1:] == (16, 16, 3) for batch in planted.values()
    )
    assert np.array_equal(shift_colour(images)[..., 0], images[..., 1])
    assert blur(images).std() < images.std()
    flipped = flip_or_rotate(images[:2])
    assert np.array_equal(flipped[0], images[0, :, ::-1])
    assert np.array_equal(flipped[1], images[1, ::-1])
    noise = planted["noise"].astype(float) - images[:4][np.isin(np.arange(4), range(4))][:3]
    assert np.abs(noise).mean() > 30  # heavy noise


def test_grayscale_colour_shift_is_a_gamma_curve() -> None:
    grey = np.full((1, 8, 8, 1), 64, dtype=np.uint8)

    shifted = shift_colour(grey)

    assert shifted.shape == grey.shape
    assert int(shifted[0, 0, 0, 0]) == pytest.approx(255 * (64 / 255) ** 0.4, abs=1)


def test_evaluation_reports_the_tail_apart_and_lists_classes_it_cannot_filter(
    extractor: BlockColourExtractor,
) -> None:
    rng = np.random.default_rng(24)
    # NV and MEL have images of their own; DF only 4 (pooled); BCC none (skipped).
    train_labels = np.r_[np.zeros(20, int), np.ones(20, int), np.full(4, 2)]
    train = LabelledImages(make_images(rng, train_labels), train_labels)
    other = LabelledImages(make_images(rng, labels_for(12)), labels_for(12))

    report = evaluate_ood_filter(
        extractor,
        train,
        other,
        other,
        config=OodFilterConfig(min_validation_per_class=10),
        class_names=["NV", "MEL", "DF"],
        classes=[0, 1, 2],
        planted_per_kind=5,
    )

    assert set(report["per_class"]) == {"NV", "MEL", "DF"}
    assert report["per_class"]["DF"]["filter_mode"] == "pooled"
    assert report["per_class"]["NV"]["filter_mode"] == "per_class"
    tail = report["tail"]
    assert tail["classes"] == ["DF"] and tail["copy_rejection_rate"] == 1.0
    assert report["overall"]["classes_evaluated"] == 3


def test_evaluation_skips_a_class_without_training_images(
    extractor: BlockColourExtractor,
) -> None:
    rng = np.random.default_rng(25)
    train_labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    train = LabelledImages(make_images(rng, train_labels), train_labels)
    other = LabelledImages(make_images(rng, labels_for(12)), labels_for(12))

    report = evaluate_ood_filter(
        extractor,
        train,
        other,
        other,
        class_names=["NV", "MEL", "DF"],
        classes=[0, 1, 2],
        planted_per_kind=5,
    )

    assert set(report["per_class"]) == {"NV", "MEL"}
    assert "no real training image" in report["skipped"]["DF"]
    assert report["tail"] is None


def test_shrink_classes_cuts_the_tail_and_holds_out_what_it_drops() -> None:
    rng = np.random.default_rng(26)
    labels = labels_for(10)
    groups = np.array([f"p{i}" for i in range(len(labels))])
    groups[20:22] = "shared"  # two DF images of one patient
    sets = [
        LabelledImages(make_images(rng, labels), labels, np.char.add(groups, suffix))
        for suffix in ("", "v", "h")
    ]
    sets[0].groups[20:22] = "shared"

    train, validation, heldout = shrink_classes(*sets, {2: (2, 1)}, seed=0)

    assert np.bincount(train.labels).tolist() == [10, 10, 2]
    assert np.bincount(validation.labels).tolist() == [10, 10, 1]
    kept = set(train.groups[train.labels == 2]) | set(validation.groups[validation.labels == 2])
    moved = heldout.groups[len(sets[2].labels) :]
    assert len(moved) > 0 and not set(moved) & kept  # no sibling of a kept image
    assert np.all(heldout.labels[len(sets[2].labels) :] == 2)
