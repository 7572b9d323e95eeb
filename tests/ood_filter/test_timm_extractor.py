"""The filter works end to end with the trainer's real timm classifier (tiny, 16 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.ood_filter.features import FeatureExtractor, embed_images, iter_image_batches
from services.ood_filter.filter import CandidateScores, OodFilter
from services.ood_filter.records import Reason
from tests.ood_filter.conftest import labels_for, make_images

classifier_lib = pytest.importorskip("services.trainer.classifier")


def test_filter_fits_and_scores_with_a_tiny_timm_classifier(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    train_images, validation_images = (
        make_images(rng, labels_for(24)),
        make_images(rng, labels_for(12)),
    )
    config = classifier_lib.ClassifierConfig(
        backbone="test_resnet",
        image_size=16,
        epochs=2,
        batch_size=24,
        lr=3e-3,
        device="cpu",
        augment=False,
        inference_batch_size=32,
    )
    trained = classifier_lib.train_classifier(train_images, labels_for(24), ["a", "b", "c"], config)
    trained.save(tmp_path / "classifier.safetensors")
    # Load through the same path the worker uses.
    classifier = classifier_lib.ImageClassifier.load(tmp_path / "classifier.safetensors")
    assert isinstance(classifier, FeatureExtractor)

    ood_filter = OodFilter.fit(
        embed_images(classifier, iter_image_batches(train_images, 32)),
        labels_for(24),
        embed_images(classifier, iter_image_batches(validation_images, 32)),
        labels_for(12),
        class_names=classifier.class_names,
    )
    copies = np.ascontiguousarray(train_images[:4, :, ::-1])
    scored = CandidateScores.concatenate(
        list(
            ood_filter.score_batches(classifier, [copies, make_images(rng, np.zeros(4, int))], "a")
        )
    )
    outcome = ood_filter.decide(scored)

    assert scored.scores["mahalanobis"].shape == (8,)
    assert all(np.isfinite(values).all() for values in scored.scores.values())
    assert [record.reason for record in outcome.records[:4]] == [Reason.NEAR_COPY] * 4
    assert all(record.reason != Reason.NEAR_COPY for record in outcome.records[4:])
