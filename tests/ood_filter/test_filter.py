"""The filter streams candidates in batches, reports progress, cancels, and refuses bad
input with messages that say what is wrong."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from services.ood_filter.features import (
    ImageEmbeddings,
    OodFilterCanceled,
    embed_images,
    iter_image_batches,
)
from services.ood_filter.filter import CandidateScores, OodFilter, OodFilterConfig
from services.ood_filter.records import FilterMode, Reason
from tests.ood_filter.conftest import (
    BlockColourExtractor,
    GaussianWorld,
    labels_for,
    make_images,
)

NAMES = ["NV", "MEL", "DF"]


@pytest.fixture
def gaussian_filter(world: GaussianWorld) -> OodFilter:
    rng = np.random.default_rng(10)
    return OodFilter.fit(
        world.sample(rng, labels_for(30), n_hash_columns=8),
        labels_for(30),
        world.sample(rng, labels_for(20), n_hash_columns=1),
        labels_for(20),
        class_names=NAMES,
    )


@pytest.fixture
def image_filter(extractor: BlockColourExtractor) -> OodFilter:
    rng = np.random.default_rng(11)
    train = make_images(rng, labels_for(20))
    validation = make_images(rng, labels_for(15))
    return OodFilter.fit(
        embed_images(extractor, iter_image_batches(train, 32)),
        labels_for(20),
        embed_images(extractor, iter_image_batches(validation, 32)),
        labels_for(15),
        class_names=NAMES,
    )


def test_scoring_streams_lazily_with_progress_and_stream_indices(
    image_filter: OodFilter, extractor: BlockColourExtractor
) -> None:
    produced: list[int] = []

    def lazy_batches() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(12)
        for _ in range(4):
            produced.append(1)
            yield make_images(rng, np.full(8, 2))

    progress: list[tuple[int, int]] = []
    stream = image_filter.score_batches(
        extractor, lazy_batches(), "DF", total=32, progress=lambda d, t: progress.append((d, t))
    )
    first = next(stream)

    assert len(produced) == 1  # nothing generated ahead of need
    rest = list(stream)
    assert [chunk.start_index for chunk in [first, *rest]] == [0, 8, 16, 24]
    assert progress == [(8, 32), (16, 32), (24, 32), (32, 32)]
    outcome = image_filter.decide(CandidateScores.concatenate([first, *rest]))
    assert [record.index for record in outcome.records] == list(range(32))
    assert outcome.counts[Reason.KEPT] >= 26  # real-like images of DF


def test_cancel_stops_between_batches_keeping_finished_chunks(
    image_filter: OodFilter, extractor: BlockColourExtractor
) -> None:
    rng = np.random.default_rng(13)
    batches = [make_images(rng, np.full(4, 0)) for _ in range(5)]
    finished: list[CandidateScores] = []

    with pytest.raises(OodFilterCanceled, match="after scoring 8"):
        for chunk in image_filter.score_batches(
            extractor, batches, 0, should_cancel=lambda: len(finished) >= 2
        ):
            finished.append(chunk)

    assert len(finished) == 2


def test_unknown_class_is_refused(gaussian_filter: OodFilter) -> None:
    with pytest.raises(ValueError, match="never seen by the feature model, which has 3"):
        gaussian_filter.calibration(7)
    with pytest.raises(ValueError, match="'SCC' is unknown to the feature model"):
        gaussian_filter.calibration("SCC")


def test_class_with_too_few_training_images_is_filtered_pooled_not_refused(
    world: GaussianWorld,
) -> None:
    rng = np.random.default_rng(14)
    train_labels = np.r_[np.zeros(30, int), np.ones(30, int), np.full(4, 2)]
    ood_filter = OodFilter.fit(
        world.sample(rng, train_labels, n_hash_columns=8),
        train_labels,
        world.sample(rng, labels_for(20), n_hash_columns=1),
        labels_for(20),
        class_names=NAMES,
    )
    candidates = world.sample(rng, np.full(5, 2), n_hash_columns=1)

    plan = ood_filter.plan("DF")
    assert plan.filter_mode == FilterMode.POOLED
    assert "4 real training image(s) (its own statistics need 10)" in plan.reason
    assert ood_filter.score(candidates, "DF").class_index == 2
    calibration = ood_filter.calibration("DF")
    assert calibration.filter_mode == "pooled" and calibration.n_reference == 60
    assert ood_filter.calibration("NV").n_train == 30  # other classes still per class
    assert ood_filter.calibration("NV").filter_mode == "per_class"


def test_class_with_too_few_validation_images_is_calibrated_on_the_pool(
    world: GaussianWorld,
) -> None:
    rng = np.random.default_rng(15)
    validation_labels = np.r_[np.zeros(20, int), np.ones(20, int), np.full(3, 2)]
    ood_filter = OodFilter.fit(
        world.sample(rng, labels_for(30), n_hash_columns=8),
        labels_for(30),
        world.sample(rng, validation_labels, n_hash_columns=1),
        validation_labels,
    )

    plan = ood_filter.plan(2)
    assert plan.filter_mode == FilterMode.POOLED
    assert "3 real validation image(s) (its own thresholds need 10)" in plan.reason
    assert ood_filter.calibration(2).n_validation == 3
    assert ood_filter.calibration(2).n_reference == 43


def test_classes_too_small_even_pooled_are_skipped_with_the_reason(world: GaussianWorld) -> None:
    rng = np.random.default_rng(16)
    ood_filter = OodFilter.fit(
        world.sample(rng, labels_for(3), n_hash_columns=8),
        labels_for(3),
        world.sample(rng, labels_for(3), n_hash_columns=1),
        labels_for(3),
        class_names=NAMES,
    )

    assert {plan.filter_mode for plan in ood_filter.plans.values()} == {FilterMode.SKIPPED}
    with pytest.raises(
        ValueError, match=r"'DF' \(index 2\) cannot be filtered: .*only 9 validation image"
    ):
        ood_filter.calibration("DF")


def test_candidates_of_another_size_or_channel_count_are_refused(
    image_filter: OodFilter, extractor: BlockColourExtractor
) -> None:
    rng = np.random.default_rng(17)
    images = make_images(rng, np.zeros(4, int))
    wrong_size = np.ascontiguousarray(np.kron(images, np.ones((1, 2, 2, 1), np.uint8)))
    grayscale = np.ascontiguousarray(images[..., :1])

    with pytest.raises(ValueError, match=r"\(32, 32, 3\).*fitted on \(16, 16, 3\)"):
        list(image_filter.score_batches(extractor, [wrong_size], 0))
    with pytest.raises(ValueError, match=r"\(16, 16, 1\).*fitted on \(16, 16, 3\)"):
        list(image_filter.score_batches(extractor, [grayscale], 0))
    with pytest.raises(ValueError, match="uint8"):
        list(image_filter.score_batches(extractor, [images.astype(np.float32)], 0))


def test_labels_outside_the_classifier_outputs_are_refused(world: GaussianWorld) -> None:
    rng = np.random.default_rng(18)
    train = world.sample(rng, labels_for(20), n_hash_columns=8)
    with pytest.raises(ValueError, match=r"train labels must lie in \[0, 3\)"):
        OodFilter.fit(train, labels_for(20) + 1, train, labels_for(20))


def test_validation_images_of_another_shape_are_refused(world: GaussianWorld) -> None:
    rng = np.random.default_rng(19)
    train = world.sample(rng, labels_for(20), n_hash_columns=8)
    other = ImageEmbeddings(
        train.features, train.logits, train.phashes, (32, 32, 3), train.sharpness
    )
    with pytest.raises(ValueError, match="same size and channels"):
        OodFilter.fit(train, labels_for(20), other, labels_for(20))


def test_config_refuses_duplicate_detectors() -> None:
    with pytest.raises(ValueError, match="repeat"):
        OodFilterConfig(detectors=("knn", "knn"))


def test_validation_groups_lower_thresholds_when_patients_cluster(world: GaussianWorld) -> None:
    rng = np.random.default_rng(20)
    train = world.sample(rng, labels_for(30), n_hash_columns=8)
    validation = world.sample(rng, labels_for(20), n_hash_columns=1)
    # Five images per patient that share the patient's features almost exactly.
    patient_of = np.arange(len(validation)) // 5
    shared = validation.features[patient_of * 5]
    clustered = ImageEmbeddings(
        shared + rng.normal(0, 0.01, shared.shape).astype(np.float32),
        validation.logits[patient_of * 5],
        validation.phashes,
        validation.image_shape,
        validation.sharpness[patient_of * 5],
    )

    by_image = OodFilter.fit(train, labels_for(30), clustered, labels_for(20))
    by_patient = OodFilter.fit(
        train, labels_for(30), clustered, labels_for(20), validation_groups=patient_of
    )

    assert by_patient.calibration(0).level < by_image.calibration(0).level
    with pytest.raises(ValueError, match="validation_groups must have shape"):
        OodFilter.fit(train, labels_for(30), clustered, labels_for(20), validation_groups=[1])
