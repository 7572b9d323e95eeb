"""The classifier fine-tuned on a dataset's real training split, trained once and shared.

The OOD filter takes its features and logits from it; the generator's quality probe
asks it whether generated images look like their class. It is trained on the real
**train** split only, model-selected on the real **val** split, and cached in storage
under a key derived from its config, so every worker on every host reuses one copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.trainer.classifier import ClassifierConfig, ImageClassifier, train_classifier
from services.trainer.health import classifier_health
from shared.dataset_arrays import SplitArrays, load_split
from shared.models import Split
from shared.settings import Settings
from shared.storage import ObjectStore, download_verified, put_file_with_sha256

log = logging.getLogger(__name__)
_CACHE: OrderedDict[str, ImageClassifier] = OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.Lock()


DEFAULT_MIN_TRAIN_STEPS = 300


def classifier_config_from(params: dict[str, Any], channels: int) -> ClassifierConfig:
    """The dataset classifier a request asks for (``classifier_backbone``,
    ``classifier_image_size``, ``classifier_epochs``, ``classifier_min_steps``,
    ``classifier_balanced_sampling``); the same request → the same cache key, so a
    generator's quality probe and the filter of its candidates, asking alike, share one
    model (and agree on what looks like which class). The step floor keeps a small
    dataset (a few hundred images: a handful of batches per epoch) from being "trained"
    for thirty steps."""
    return ClassifierConfig(
        backbone=params.get("classifier_backbone", "resnet18"),
        image_size=int(params.get("classifier_image_size") or 64),
        in_chans=channels,
        epochs=int(params.get("classifier_epochs", 8)),
        min_train_steps=int(params.get("classifier_min_steps", DEFAULT_MIN_TRAIN_STEPS)),
        balanced_sampling=bool(params.get("classifier_balanced_sampling", False)),
        seed=0,
    )


def health_of(classifier: ImageClassifier) -> dict[str, Any]:
    """The classifier's own balanced accuracy on the real **val** split (its kept epoch),
    against :func:`services.trainer.health.health_bar`."""
    history = classifier.history
    best = history.epochs[history.best_epoch - 1] if history.best_epoch else None
    value = best.val_balanced_accuracy if best is not None else None
    return classifier_health(value, classifier.num_classes, "real validation images")


def classifier_key(dataset_id: uuid.UUID, config: ClassifierConfig) -> str:
    digest = hashlib.sha256(
        json.dumps(asdict(config), sort_keys=True, default=str).encode()
    ).hexdigest()
    return f"datasets/{dataset_id}/classifiers/{digest[:16]}.safetensors"


def dataset_classifier(
    factory: sessionmaker[Session],
    store: ObjectStore,
    settings: Settings,
    dataset_id: uuid.UUID,
    config: ClassifierConfig,
    *,
    train: SplitArrays | None = None,
    val: SplitArrays | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> tuple[ImageClassifier, str]:
    """The dataset's classifier for ``config`` and its storage key: from this process's
    cache, from storage, or trained now (then stored). ``train``/``val`` may be passed
    when the caller already loaded them at ``config.image_size``."""
    key = classifier_key(dataset_id, config)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key], key
    local = local_path(settings, key)
    if not local.is_file() and store.exists(key):
        try:  # checked and renamed into place: a file in the cache is complete
            download_verified(store, key, local)
        except ValueError as exc:  # a bad stored copy is trained again and replaced
            log.warning("stored classifier %s is unusable: %s", key, exc)
    if local.is_file():
        classifier = ImageClassifier.load(local)
    else:
        train = train or load_split(
            factory, store, dataset_id, Split.TRAIN, config.image_size, channels=config.in_chans
        )
        val = val or load_split(
            factory, store, dataset_id, Split.VAL, config.image_size, channels=config.in_chans
        )
        classifier = train_classifier(
            train.images,
            train.labels,
            train.class_names,
            config,
            val_images=val.images if len(val) else None,
            val_labels=val.labels if len(val) else None,
            progress=progress,
            should_cancel=should_cancel,
        )
        local.parent.mkdir(parents=True, exist_ok=True)
        sha256 = classifier.save(local)
        put_file_with_sha256(store, key, local, sha256)
    with _LOCK:
        _CACHE[key] = classifier
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return classifier, key


def local_path(settings: Settings, key: str) -> Path:
    return (settings.data_dir / "cache" / key).resolve()
