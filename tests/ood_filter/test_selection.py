"""Selection rules keep the right candidates and name the right reason for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from services.ood_filter.filter import CandidateScores
from services.ood_filter.records import Reason
from services.ood_filter.selection import SelectionRule, decide
from tests.ood_filter.conftest import GaussianWorld, filter_and_chunks, fit_filter


def test_reason_precedence_is_near_copy_then_off_class_then_ood() -> None:
    # Candidates:      copy+off+ood  off+ood  ood    clean
    is_copy = np.array([True, False, False, False])
    off_class = np.array([True, True, False, False])
    ood = np.array([True, True, True, False])

    kept, reasons = decide(
        SelectionRule.calibrated(),
        combined=np.full(4, 0.5),
        is_copy=is_copy,
        off_class=off_class,
        ood=ood,
    )

    assert reasons == [Reason.NEAR_COPY, Reason.OFF_CLASS, Reason.OOD, Reason.KEPT]
    assert kept.tolist() == [False, False, False, True]


@pytest.mark.parametrize(("gamma", "expected"), [(0.2, 4), (0.5, 10), (0.6, 12)])
def test_keep_fraction_keeps_the_best_gamma(gamma: float, expected: int) -> None:
    combined = np.linspace(0.0, 1.0, 20)
    nothing = np.zeros(20, dtype=bool)

    kept, reasons = decide(
        SelectionRule.best_fraction(gamma),
        combined=combined,
        is_copy=nothing,
        off_class=nothing,
        ood=nothing,
    )

    assert kept.sum() == expected
    assert np.flatnonzero(kept).tolist() == list(range(20 - expected, 20))  # the best ones
    assert reasons.count(Reason.OOD) == 20 - expected  # below the cut


def test_keep_fraction_never_keeps_a_near_copy_even_if_it_ranks_first() -> None:
    combined = np.array([0.99, 0.5, 0.4, 0.3])
    is_copy = np.array([True, False, False, False])
    nothing = np.zeros(4, dtype=bool)

    kept, reasons = decide(
        SelectionRule.best_fraction(0.5),
        combined=combined,
        is_copy=is_copy,
        off_class=nothing,
        ood=nothing,
    )

    assert np.flatnonzero(kept).tolist() == [1, 2]
    assert reasons[0] == Reason.NEAR_COPY


def test_target_count_within_thresholds_keeps_only_passing_candidates() -> None:
    combined = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    ood = np.array([True, False, False, False, False])
    off_class = np.array([False, True, False, False, False])
    is_copy = np.zeros(5, dtype=bool)

    kept, reasons = decide(
        SelectionRule.best_count(2),
        combined=combined,
        is_copy=is_copy,
        off_class=off_class,
        ood=ood,
    )

    assert np.flatnonzero(kept).tolist() == [2, 3]
    assert reasons[:2] == [Reason.OOD, Reason.OFF_CLASS]


def test_target_count_larger_than_the_eligible_pool_keeps_all_eligible() -> None:
    nothing = np.zeros(3, dtype=bool)

    kept, _ = decide(
        SelectionRule.best_count(10),
        combined=np.array([0.1, 0.2, 0.3]),
        is_copy=np.array([False, True, False]),
        off_class=nothing,
        ood=nothing,
    )

    assert kept.tolist() == [True, False, True]


def test_contradictory_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        SelectionRule(keep_fraction=0.5, target_count=3)
    with pytest.raises(ValueError, match="keep_fraction"):
        SelectionRule.best_fraction(1.5)


def test_filter_records_every_candidate_with_scores_thresholds_and_reason(
    world: GaussianWorld,
) -> None:
    rng = np.random.default_rng(6)
    ood_filter = fit_filter(world, rng)
    good = world.sample(rng, np.zeros(20, dtype=int), n_hash_columns=1)
    wrong_class = world.sample(rng, np.ones(10, dtype=int), n_hash_columns=1)
    candidates = type(good)(
        np.concatenate([good.features, wrong_class.features]),
        np.concatenate([good.logits, wrong_class.logits]),
        np.concatenate([good.phashes, wrong_class.phashes]),
        good.image_shape,
        np.concatenate([good.sharpness, wrong_class.sharpness]),
    )

    outcome = ood_filter.decide(ood_filter.score(candidates, 0), SelectionRule.best_fraction(0.5))

    assert len(outcome.records) == 30
    assert outcome.counts[Reason.KEPT] == 15
    assert sum(outcome.counts.values()) == 30
    assert all(record.index < 20 for record in outcome.records if record.kept)
    assert all(
        record.reason == Reason.OFF_CLASS for record in outcome.records[20:]
    )  # the other class's images fail the class-probability check
    record = outcome.records[0]
    assert set(record.scores) == set(record.thresholds) == set(record.percentiles)
    assert 0.0 <= record.combined_score <= 1.0
    assert outcome.rule == "keep_fraction=0.5"


def test_decide_chunks_ranks_across_chunks_but_yields_records_per_chunk(
    world: GaussianWorld,
) -> None:
    ood_filter, chunks = filter_and_chunks(world, 23)
    rule = SelectionRule.best_fraction(0.3)

    outcomes = list(ood_filter.decide_chunks(chunks, rule))
    whole = ood_filter.decide(CandidateScores.concatenate(chunks), rule)

    assert [len(outcome.records) for outcome in outcomes] == [10, 10, 10]
    per_chunk = [index for outcome in outcomes for index in outcome.kept_indices]
    assert per_chunk == whole.kept_indices
    assert len(per_chunk) == 9
