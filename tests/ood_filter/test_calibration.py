"""Thresholds from real validation images keep the requested share of real images."""

from __future__ import annotations

import numpy as np
import pytest

from services.ood_filter.calibration import combined_score, joint_thresholds, percentile_scores
from services.ood_filter.filter import OodFilter, OodFilterConfig
from tests.ood_filter.conftest import GaussianWorld, labels_for


def test_percentile_scores_place_scores_in_the_real_distribution() -> None:
    reference = np.sort(np.arange(100, dtype=float))

    placed = percentile_scores(reference, np.array([0.0, 49.5, 1000.0, -49.5, -99.0]))

    bottom = 0.5 / 101
    # Below the lowest real score the percentile decays with the distance in units of
    # the lowest-to-median distance (49.5 here): one unit -> bottom / e.
    np.testing.assert_allclose(
        placed, [1.0 / 101, 0.5, 100.5 / 101, bottom / np.e, bottom / np.e**2]
    )


def test_combined_score_is_the_lowest_percentile() -> None:
    combined = combined_score({"a": np.array([0.2, 0.9]), "b": np.array([0.8, 0.01])})

    np.testing.assert_allclose(combined, [0.2, 0.01])
    # One detector that is sure (0.01) outweighs one that sees nothing unusual (0.9).
    assert combined[1] < combined[0]


def test_joint_thresholds_keep_the_target_share_of_validation_images() -> None:
    rng = np.random.default_rng(0)
    scores = {name: rng.normal(size=500) for name in ("a", "b", "c")}

    thresholds, level, expected, in_sample = joint_thresholds(scores, 0.9)

    passes = np.all([scores[name] >= thresholds[name] for name in scores], axis=0)
    assert passes.mean() == pytest.approx(in_sample)
    assert 0.9 <= expected <= in_sample < 0.92
    # Three detectors share the 10 % budget, so each cuts well under 10 % of real images.
    assert 0.02 < level < 0.05


def test_joint_thresholds_with_one_detector_is_its_quantile() -> None:
    scores = {"only": np.arange(1000, dtype=float)}

    thresholds, level, expected, _ = joint_thresholds(scores, 0.95)

    assert thresholds["only"] == pytest.approx(50.0, abs=1.0)
    assert level == pytest.approx(0.05, abs=0.002)
    assert expected == pytest.approx(0.95, abs=0.002)


def test_few_validation_images_push_thresholds_below_the_lowest_real_score() -> None:
    """With 20 real images and 4 detectors, "pass if not below the lowest real score" keeps
    all 20 in-sample but only ~80 % of new images; the leave-one-out estimate sees that
    and lowers the thresholds, so fresh real images are kept at the target rate."""
    rng = np.random.default_rng(1)
    names = ("a", "b", "c", "d")
    scores = {name: rng.normal(size=20) for name in names}

    thresholds, level, expected, _ = joint_thresholds(scores, 0.95)

    assert level < 0.0
    assert expected >= 0.95
    assert all(thresholds[name] < scores[name].min() for name in names)
    fresh = rng.normal(size=(len(names), 20_000))
    fresh_keep = np.mean(np.all([fresh[d] >= thresholds[n] for d, n in enumerate(names)], axis=0))
    assert fresh_keep > 0.9


def test_joint_thresholds_refuse_an_impossible_target() -> None:
    with pytest.raises(ValueError, match="target_keep_rate"):
        joint_thresholds({"a": np.zeros(3)}, 1.5)


@pytest.mark.parametrize("target", [0.8, 0.95])
def test_fitted_filter_keeps_about_the_target_share_of_fresh_real_images(
    world: GaussianWorld, target: float
) -> None:
    rng = np.random.default_rng(5)
    train = world.sample(rng, labels_for(150), n_hash_columns=8)
    validation = world.sample(rng, labels_for(300), n_hash_columns=1)
    ood_filter = OodFilter.fit(
        train,
        labels_for(150),
        validation,
        labels_for(300),
        OodFilterConfig(target_keep_rate=target),
    )
    fresh = world.sample(rng, np.full(1000, 2), n_hash_columns=1)

    outcome = ood_filter.decide(ood_filter.score(fresh, 2))

    calibration = outcome.calibration
    assert calibration.validation_keep_rate >= target
    assert len(outcome.kept_indices) / 1000 == pytest.approx(target, abs=0.05)
    assert set(calibration.thresholds) == set(OodFilterConfig().detectors)


def test_leave_one_patient_out_sees_what_leave_one_image_out_misses() -> None:
    """Ten patients with five near-identical images each: leaving one image out keeps its
    four siblings in, so every image looks typical; leaving its patient out shows that a
    new patient often falls outside, and the thresholds are set lower to compensate."""
    rng = np.random.default_rng(2)
    patient_effect = np.repeat(rng.normal(0.0, 1.0, (2, 10)), 5, axis=1)
    scores = {name: patient_effect[d] + rng.normal(0.0, 0.01, 50) for d, name in enumerate("ab")}
    groups = np.repeat(np.arange(10), 5)

    by_image = joint_thresholds(scores, 0.95)
    by_patient = joint_thresholds(scores, 0.95, groups)

    assert by_patient[1] < by_image[1]  # a lower level: thresholds further down
    assert all(by_patient[0][name] < by_image[0][name] for name in "ab")
    # New patients from the same population: the patient-aware thresholds keep more.
    fresh = rng.normal(0.0, 1.0, (2, 20_000))
    keep = {
        label: np.mean(np.all([fresh[d] >= result[0][n] for d, n in enumerate("ab")], axis=0))
        for label, result in (("image", by_image), ("patient", by_patient))
    }
    assert keep["patient"] > keep["image"]
    assert keep["patient"] > 0.85
