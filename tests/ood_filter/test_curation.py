"""A curated set is what was asked: at most the count, best first, no near-duplicates, no
background over its share; kept candidates that look off-class are said so."""

from __future__ import annotations

import numpy as np
import pytest

from services.ood_filter.filter import OodFilterConfig
from services.ood_filter.records import Reason
from services.ood_filter.selection import SelectionRule, decide
from tests.ood_filter.conftest import GaussianWorld, filter_and_chunks, fit_filter

NOTHING = np.zeros(6, dtype=bool)


def _distinct_hashes(n: int) -> np.ndarray:
    """Random 63-bit pHashes: about 31 bits apart, never duplicates at a few bits."""
    return np.random.default_rng(3).integers(0, 2**63, n, dtype=np.uint64)


def test_capped_rule_keeps_the_best_asked_and_calls_the_rest_surplus() -> None:
    combined = np.array([0.2, 0.9, 0.5, 0.7, 0.3, 0.8])
    ood = np.array([False, False, False, False, True, False])

    kept, reasons = decide(
        SelectionRule.calibrated().capped(3),
        combined=combined,
        is_copy=NOTHING,
        off_class=NOTHING,
        ood=ood,
    )

    assert np.flatnonzero(kept).tolist() == [1, 3, 5]  # 0.9, 0.7, 0.8
    assert reasons == [
        Reason.SURPLUS,
        Reason.KEPT,
        Reason.SURPLUS,
        Reason.KEPT,
        Reason.OOD,  # failed a detector: ood, not surplus
        Reason.KEPT,
    ]


def test_fewer_passing_than_asked_keeps_every_passing_one() -> None:
    kept, reasons = decide(
        SelectionRule.calibrated().capped(10),
        combined=np.linspace(0.1, 0.6, 6),
        is_copy=np.array([True, False, False, False, False, False]),
        off_class=np.array([False, True, False, False, False, False]),
        ood=NOTHING,
    )

    assert kept.tolist() == [False, False, True, True, True, True]
    assert reasons[:2] == [Reason.NEAR_COPY, Reason.OFF_CLASS]


def test_the_asked_cap_is_surplus_but_a_rules_own_cut_stays_ood() -> None:
    combined = np.linspace(0.9, 0.4, 6)

    _, own_cut = decide(
        SelectionRule.best_count(2),
        combined=combined,
        is_copy=NOTHING,
        off_class=NOTHING,
        ood=NOTHING,
    )
    _, asked_cut = decide(
        SelectionRule.best_count(2).capped(2),
        combined=combined,
        is_copy=NOTHING,
        off_class=NOTHING,
        ood=NOTHING,
    )

    assert own_cut[2:] == [Reason.OOD] * 4
    assert asked_cut[2:] == [Reason.SURPLUS] * 4


def test_a_near_duplicate_of_a_better_kept_candidate_makes_room_for_the_next() -> None:
    hashes = _distinct_hashes(6)
    hashes[1] = hashes[0] ^ np.uint64(0b101)  # 2 bits from candidate 0
    combined = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])

    kept, reasons = decide(
        SelectionRule.calibrated().capped(3, duplicate_bits=4),
        combined=combined,
        is_copy=NOTHING,
        off_class=NOTHING,
        ood=NOTHING,
        phashes=hashes,
    )

    assert np.flatnonzero(kept).tolist() == [0, 2, 3]
    assert reasons[1] == Reason.DUPLICATE and reasons[4:] == [Reason.SURPLUS] * 2


def test_one_background_cannot_fill_a_class() -> None:
    # Four candidates on background 0 rank first; three backgrounds in all, four asked:
    # at most ceil(4 / 3) + 1 = 3 per background.
    backgrounds = np.array([0, 0, 0, 0, 1, 2])

    kept, reasons = decide(
        SelectionRule.calibrated().capped(4, background_share=True),
        combined=np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.6]),
        is_copy=NOTHING,
        off_class=NOTHING,
        ood=NOTHING,
        backgrounds=backgrounds,
    )

    assert np.flatnonzero(kept).tolist() == [0, 1, 2, 4]
    assert reasons[3] == Reason.BACKGROUND and reasons[5] == Reason.SURPLUS


def test_candidates_without_a_background_are_never_capped() -> None:
    kept, _ = decide(
        SelectionRule.calibrated().capped(6, background_share=True),
        combined=np.linspace(0.9, 0.4, 6),
        is_copy=NOTHING,
        off_class=NOTHING,
        ood=NOTHING,
        backgrounds=np.full(6, -1),
    )

    assert kept.all()


def test_diversity_guards_need_their_inputs_and_sane_settings() -> None:
    with pytest.raises(ValueError, match="pHash"):
        decide(
            SelectionRule.calibrated().capped(2, duplicate_bits=4),
            combined=np.ones(6),
            is_copy=NOTHING,
            off_class=NOTHING,
            ood=NOTHING,
        )
    with pytest.raises(ValueError, match="background"):
        decide(
            SelectionRule.calibrated().capped(2, background_share=True),
            combined=np.ones(6),
            is_copy=NOTHING,
            off_class=NOTHING,
            ood=NOTHING,
        )
    with pytest.raises(ValueError, match="duplicate_bits"):
        SelectionRule.calibrated().capped(2, duplicate_bits=65)
    with pytest.raises(ValueError, match="max_kept"):
        SelectionRule.calibrated().capped(-1)
    described = SelectionRule.calibrated().capped(24, duplicate_bits=4, background_share=True)
    assert described.describe() == (
        "calibrated, at most 24, no duplicates within 4 pHash bits, background share"
    )


def test_the_filter_caps_across_chunks_and_says_which_kept_ones_look_off_class(
    world: GaussianWorld,
) -> None:
    ood_filter, chunks = filter_and_chunks(world, 31)

    outcomes = list(ood_filter.decide_chunks(chunks, SelectionRule.calibrated().capped(12)))

    records = [record for outcome in outcomes for record in outcome.records]
    kept = [record for record in records if record.kept]
    assert len(kept) == 12
    surplus = [record for record in records if record.reason == Reason.SURPLUS]
    assert surplus and min(r.combined_score for r in kept) >= max(r.combined_score for r in surplus)
    for record in records:
        assert 0.0 <= record.class_probability <= 1.0
        assert record.below_chance == (record.class_probability < 1 / 3)
    # Another class's images score under chance for class 0 (without the detector too).
    rng = np.random.default_rng(32)
    no_probability = fit_filter(
        world,
        rng,
        config=OodFilterConfig(detectors=("mahalanobis", "knn")),
    )
    wrong = no_probability.decide(
        no_probability.score(world.sample(rng, np.ones(10, dtype=int), n_hash_columns=1), 0),
        SelectionRule.best_fraction(1.0),
    )
    assert all(record.kept and record.below_chance for record in wrong.records)
