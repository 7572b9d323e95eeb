"""Classifier files carry a ``.sha256`` sidecar like every other cached artifact: written
by ``save``, checked by ``load`` (and by a later round that starts from the file), stored
beside the object by the experiment's adaptive rounds and checked on the way back."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch

from services.generator.service import _guidance_classifier
from services.trainer.classifier import (
    ClassifierConfig,
    ImageClassifier,
    build_model,
    sha256_sidecar,
    train_classifier,
)
from shared.models import Generator
from shared.runtime import Runtime
from shared.storage import SHA256_SUFFIX, LocalObjectStore, put_file_with_sha256
from tests.trainer.images import CLASS_NAMES, coloured_squares


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    images, labels = coloured_squares(24, seed=0)
    config = ClassifierConfig(
        backbone="test_resnet", image_size=16, epochs=1, batch_size=8, seed=0, device="cpu"
    )
    return train_classifier(images, labels, CLASS_NAMES, config)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one weight byte: the header (and metadata) still parse
    path.write_bytes(bytes(data))


def test_save_writes_the_sidecar_and_load_refuses_a_file_that_differs(
    classifier: ImageClassifier, tmp_path: Path
) -> None:
    path = tmp_path / "round1.safetensors"
    digest = classifier.save(path)
    assert sha256_sidecar(path).read_text() == digest
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    ImageClassifier.load(path)

    _corrupt(path)
    with pytest.raises(ValueError, match="corrupt"):
        ImageClassifier.load(path)
    # The next adaptive round starts from this file: it refuses it too.
    config = ClassifierConfig(backbone="test_resnet", image_size=16, pretrained_path=str(path))
    with pytest.raises(ValueError, match="corrupt"):
        build_model(config, len(CLASS_NAMES))

    sha256_sidecar(path).unlink()  # written before sidecars existed: loaded as it is
    ImageClassifier.load(path)
    assert classifier.save(path) == digest  # saved again over it: the sidecar is back
    ImageClassifier.load(path)


def test_a_guidance_classifier_is_checked_from_storage_and_in_the_cache(
    classifier: ImageClassifier, tmp_path: Path
) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    key = "experiments/e1/adaptive/seed0-round1.safetensors"
    saved = tmp_path / "scratch" / "round1.safetensors"
    put_file_with_sha256(store, key, saved, classifier.save(saved))  # as experiment_job does
    assert store.exists(key + SHA256_SUFFIX)
    runtime = cast(
        Runtime,
        SimpleNamespace(store=store, settings=SimpleNamespace(data_dir=tmp_path / "data")),
    )
    generator = Generator(id=uuid.uuid4(), kind="trained")
    settings = {"checkpoint_key": key, "scale": 1.0}

    guidance = _guidance_classifier(runtime, generator, settings)
    cached = (tmp_path / "data" / "cache" / key).resolve()
    assert sha256_sidecar(cached).read_text() == store.get_bytes(key + SHA256_SUFFIX).decode()
    images = np.zeros((1, 3, 16, 16), dtype=np.float32)
    expected = guidance["classifier"](torch.from_numpy(images))

    _corrupt(cached)  # the cached copy rots: it is replaced, not trusted
    again = _guidance_classifier(runtime, generator, settings)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256_sidecar(cached).read_text()
    np.testing.assert_allclose(
        again["classifier"](torch.from_numpy(images)).detach().numpy(),
        expected.detach().numpy(),
    )

    _corrupt(tmp_path / "objects" / key)  # a stored copy that fails its sidecar
    cached.unlink()
    with pytest.raises(ValueError, match="corrupt"):
        _guidance_classifier(runtime, generator, settings)
    assert not cached.exists()
