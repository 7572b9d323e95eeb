"""The extreme tail: classes with 2 and 5 training images are filtered (pooled mode),
keep their real images, reject far-OOD and other-class candidates, and every copy of
their few images, flipped or rotated, is a near copy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.ood_filter.calibration import shrunken_class_offsets
from services.ood_filter.detectors import build_detector
from services.ood_filter.features import embed_images, iter_image_batches
from services.ood_filter.filter import CandidateScores, OodFilter, OodFilterConfig, plan_class
from services.ood_filter.hashing import orientations
from services.ood_filter.memorisation import MemorisationGuard
from services.ood_filter.planted import add_noise, plant_bad_candidates, shift_colour
from services.ood_filter.records import FilterMode, Reason
from shared.synthesis import filter_mode
from tests.ood_filter.conftest import (
    FEATURE_DIM,
    BlockColourExtractor,
    GaussianWorld,
    as_embeddings,
    make_images,
)

NAMES = ["NV", "MEL", "DF"]
# NV is the head; MEL has 5 training images and DF 2, with 2 and 1 validation images.
TRAIN_LABELS = np.r_[np.zeros(40, int), np.ones(5, int), np.full(2, 2)]
VALIDATION_LABELS = np.r_[np.zeros(60, int), np.ones(2, int), np.full(1, 2)]


@pytest.fixture
def tail_filter(world: GaussianWorld) -> OodFilter:
    rng = np.random.default_rng(30)
    return OodFilter.fit(
        world.sample(rng, TRAIN_LABELS, n_hash_columns=8),
        TRAIN_LABELS,
        world.sample(rng, VALIDATION_LABELS, n_hash_columns=1),
        VALIDATION_LABELS,
        class_names=NAMES,
    )


@pytest.fixture
def tail_images(
    extractor: BlockColourExtractor,
) -> tuple[OodFilter, np.ndarray, np.random.Generator]:
    """A filter fitted on images (40 NV, 5 MEL, 2 DF), its training images, and an rng."""
    rng = np.random.default_rng(31)
    train = make_images(rng, TRAIN_LABELS)
    validation = make_images(rng, VALIDATION_LABELS)
    ood_filter = OodFilter.fit(
        embed_images(extractor, iter_image_batches(train, 32)),
        TRAIN_LABELS,
        embed_images(extractor, iter_image_batches(validation, 32)),
        VALIDATION_LABELS,
        class_names=NAMES,
    )
    return ood_filter, train, rng


def _reasons(
    ood_filter: OodFilter, extractor: BlockColourExtractor, images: np.ndarray, name: str
) -> list[Reason]:
    chunks = list(ood_filter.score_batches(extractor, iter_image_batches(images, 32), name))
    return [
        record.reason for record in ood_filter.decide(CandidateScores.concatenate(chunks)).records
    ]


def test_fit_serves_every_class_in_the_best_mode_it_can_have(tail_filter: OodFilter) -> None:
    modes = {NAMES[c]: plan.filter_mode for c, plan in tail_filter.plans.items()}

    assert modes == {"NV": FilterMode.PER_CLASS, "MEL": FilterMode.POOLED, "DF": FilterMode.POOLED}
    df = tail_filter.plan("DF")
    assert (df.n_train, df.n_validation) == (2, 1)
    assert "2 real training image(s) (its own statistics need 10)" in df.reason
    assert "thresholds from 63 validation images of all classes" in df.reason
    calibration = tail_filter.calibration("DF")
    assert calibration.filter_mode == "pooled" and calibration.n_reference == 63
    assert set(calibration.class_offsets) == set(calibration.thresholds)
    assert tail_filter.calibration("NV").filter_mode == "per_class"


def test_a_class_without_training_images_is_skipped_and_the_others_still_work(
    world: GaussianWorld,
) -> None:
    rng = np.random.default_rng(32)
    train_labels = np.r_[np.zeros(40, int), np.ones(3, int)]
    ood_filter = OodFilter.fit(
        world.sample(rng, train_labels, n_hash_columns=8),
        train_labels,
        world.sample(rng, VALIDATION_LABELS, n_hash_columns=1),
        VALIDATION_LABELS,
        class_names=NAMES,
    )

    assert ood_filter.plan("DF").filter_mode == FilterMode.SKIPPED
    with pytest.raises(ValueError, match=r"'DF' \(index 2\) cannot be filtered: no real training"):
        ood_filter.score(world.sample(rng, np.full(3, 2), n_hash_columns=1), "DF")
    mel = ood_filter.decide(
        ood_filter.score(world.sample(rng, np.ones(50, int), n_hash_columns=1), "MEL")
    )
    assert mel.calibration.filter_mode == "pooled" and mel.counts["kept"] >= 42


def test_tail_classes_keep_real_images_and_reject_far_and_other_class_candidates(
    tail_filter: OodFilter, world: GaussianWorld
) -> None:
    rng = np.random.default_rng(33)
    for name, class_index in (("MEL", 1), ("DF", 2)):
        real = world.sample(rng, np.full(300, class_index), n_hash_columns=1)
        far = world.embed(real.features[:100] + 4.0 * rng.normal(size=(100, FEATURE_DIM)))
        other = world.sample(rng, np.zeros(100, int), n_hash_columns=1)

        kept_real = tail_filter.decide(tail_filter.score(real, name)).counts["kept"]
        far_outcome = tail_filter.decide(tail_filter.score(far, name))
        other_outcome = tail_filter.decide(tail_filter.score(other, name))

        assert kept_real >= 0.8 * 300, name
        assert far_outcome.counts["kept"] == 0, name
        assert other_outcome.counts["kept"] == 0, name
        assert other_outcome.counts["off_class"] >= 95, name


def test_every_copy_of_a_two_or_five_image_class_is_a_near_copy(
    tail_images: tuple[OodFilter, np.ndarray, np.random.Generator],
    extractor: BlockColourExtractor,
) -> None:
    ood_filter, train, rng = tail_images
    for name, class_index in (("DF", 2), ("MEL", 1)):
        sources = train[TRAIN_LABELS == class_index]
        # Each training image as is and in its 7 other flips / rotations, plus a noisy copy.
        copies = [np.ascontiguousarray(view) for image in sources for view in orientations(image)]
        noisy = np.clip(sources + rng.normal(0, 3, sources.shape), 0, 255).round()
        batch = np.concatenate([np.stack(copies), noisy.astype(np.uint8)])

        reasons = _reasons(ood_filter, extractor, batch, name)

        assert reasons == [Reason.NEAR_COPY] * len(batch), name


def test_tail_classes_reject_planted_failures_and_keep_held_out_real_images(
    tail_images: tuple[OodFilter, np.ndarray, np.random.Generator],
    extractor: BlockColourExtractor,
) -> None:
    ood_filter, train, rng = tail_images
    for name, class_index in (("DF", 2), ("MEL", 1)):
        real = make_images(rng, np.full(100, class_index))
        planted = plant_bad_candidates(
            real[:30],
            make_images(rng, np.zeros(30, int)),
            train[TRAIN_LABELS == class_index],
            per_kind=30,
            rng=rng,
        )

        real_reasons = _reasons(ood_filter, extractor, real, name)

        assert real_reasons.count(Reason.KEPT) >= 85, name
        for kind in ("other_class", "noise", "colour_shift", "exact_copy", "flipped_copy"):
            reasons = _reasons(ood_filter, extractor, planted[kind], name)
            assert Reason.KEPT not in reasons, (name, kind)
        assert (
            _reasons(ood_filter, extractor, shift_colour(add_noise(real[:10], rng)), name).count(
                Reason.KEPT
            )
            == 0
        )


def test_pooled_reference_is_scored_as_if_every_class_had_the_tail_s_size(
    world: GaussianWorld,
) -> None:
    """Real images of a 2-image class sit farther from their 2 neighbours and their
    2-image mean than the head's images from 40; head images scored against random
    2-image subsets of the head show the same spread, unmatched ones do not."""
    rng = np.random.default_rng(34)
    train = world.sample(rng, TRAIN_LABELS, n_hash_columns=8)
    head = world.sample(rng, np.zeros(400, int), n_hash_columns=1)
    tail = world.sample(rng, np.full(400, 2), n_hash_columns=1)
    for name in ("knn", "mahalanobis", "sharpness"):
        detector = build_detector(name).fit(train, TRAIN_LABELS)
        tail_scores = detector.score(tail, 2)
        matched = detector.reference_scores(
            head, np.zeros(400, int), reference_size=2, rng=np.random.default_rng(0)
        )
        unmatched = detector.reference_scores(head, np.zeros(400, int))

        spread = np.subtract(*np.percentile(matched, [75, 25]))
        assert abs(np.median(matched) - np.median(tail_scores)) < 0.5 * spread, name
        if name == "knn":  # the others adjust for the count inside score() already
            assert np.median(unmatched) - np.median(tail_scores) > 0.5 * spread


def test_shrunken_offsets_trust_a_class_as_far_as_its_images_warrant() -> None:
    rng = np.random.default_rng(35)
    # Four classes whose real scores sit at different places; class 3 has 1 image.
    centres = {0: 0.0, 1: 3.0, 2: -3.0, 3: 3.0}
    sizes = {0: 200, 1: 200, 2: 200, 3: 1}
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    scores = np.array([centres[int(c)] for c in labels]) + rng.normal(0, 1.0, len(labels))

    offsets = shrunken_class_offsets(scores, labels)

    pooled_median = float(np.median(scores))
    assert offsets[1] == pytest.approx(3.0 - pooled_median, abs=0.3)  # its own, nearly
    assert offsets[2] == pytest.approx(-3.0 - pooled_median, abs=0.3)
    raw_3 = float(scores[labels == 3][0]) - pooled_median
    assert 0 < offsets[3] / raw_3 < 1  # shrunk towards the pool
    identical = shrunken_class_offsets(rng.normal(0, 1, 400), np.repeat([0, 1], 200))
    assert all(abs(v) < 0.2 for v in identical.values())


def test_memorisation_guard_borrows_the_copy_statistic_for_tiny_classes() -> None:
    rng = np.random.default_rng(36)
    features = rng.normal(0, 1, (43, 8)) + np.repeat(np.eye(8)[[0, 1, 2]] * 3, [40, 1, 2], axis=0)
    labels = np.repeat([0, 1, 2], [40, 1, 2])
    hashes = rng.integers(0, 2**63, (43, 8), dtype=np.uint64)

    guard = MemorisationGuard().fit(features, labels, hashes)

    assert guard.similarity_thresholds[1] < 1.0 and guard.similarity_thresholds[2] < 1.0
    copies = guard.check(features[40:], hashes[40:, 3:4])  # features as is, a rotated hash
    assert copies.is_copy.all()
    assert (copies.phash_distance == 0).all()
    single = MemorisationGuard().fit(features[:1], labels[:1], hashes[:1])
    assert single.check(features[:1], hashes[:1, :1]).is_copy.all()


def test_post_time_plan_states_the_rule_the_filter_applies() -> None:
    config = OodFilterConfig(min_train_per_class=10, min_validation_per_class=5)
    for n_train, n_validation, n_pooled in itertools.product(
        (0, 1, 2, 9, 10, 50), (0, 1, 4, 5, 30), (0, 4, 5, 100)
    ):
        mode, _ = plan_class(n_train, n_validation, max(n_pooled, n_validation), config)
        stated = filter_mode(
            n_train, n_validation, max(n_pooled, n_validation), min_train=10, min_validation=5
        )
        assert stated == mode.value, (n_train, n_validation, n_pooled)


def test_prior_correction_lets_the_class_check_recognise_a_tail_class() -> None:
    """A classifier trained on 1,000 NV and 3 DF: its logits carry log(1000/3) against
    DF, so a real DF image gets a small DF probability; corrected, it gets a large one,
    while an NV image stays unlikely to be DF."""
    labels = np.r_[np.zeros(1000, int), np.full(3, 1)]
    prior_bias = np.log([1000 / 1003, 3 / 1003])
    evidence = np.array([[-2.0, 2.0], [2.0, -2.0]])  # likelihoods of a DF and an NV image
    train = as_embeddings(np.zeros((len(labels), 2)), np.zeros((len(labels), 2)))
    candidates = as_embeddings(np.zeros((2, 2)), evidence + prior_bias)

    plain = build_detector("class_probability").fit(train, labels).score(candidates, 1)
    corrected = (
        build_detector("class_probability", prior_correction=True)
        .fit(train, labels)
        .score(candidates, 1)
    )

    assert plain[0] < 0.2 and corrected[0] > 0.95
    assert corrected[1] < 0.05
