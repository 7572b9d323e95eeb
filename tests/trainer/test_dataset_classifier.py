"""The dataset classifier's local cache holds only complete, verified downloads."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from services.trainer import dataset_classifier as module
from services.trainer.classifier import ClassifierConfig
from shared.dataset_arrays import SplitArrays
from shared.settings import Settings
from shared.storage import SHA256_SUFFIX, LocalObjectStore
from tests.trainer.images import CLASS_NAMES, coloured_squares

CONFIG = ClassifierConfig(backbone="test_resnet", image_size=16, epochs=1, batch_size=16,
                          seed=0, device="cpu")


def _split(count: int, seed: int) -> SplitArrays:
    images, labels = coloured_squares(count, seed=seed, size=16)
    ids = [uuid.uuid4() for _ in range(count)]
    return SplitArrays(images, None, labels, ids, list(CLASS_NAMES), [str(i) for i in ids])


def _classifier(settings: Settings, store: LocalObjectStore, dataset_id: uuid.UUID,
                trained: list[int]) -> str:
    module._CACHE.clear()
    _, key = module.dataset_classifier(
        None, store, settings, dataset_id, CONFIG,  # type: ignore[arg-type]
        train=_split(32, 0), val=_split(16, 1),
        progress=lambda done, total: trained.append(done),
    )
    return key


def test_a_stored_classifier_is_downloaded_verified_and_a_bad_copy_retrained(
    tmp_path: Path,
) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    dataset_id = uuid.uuid4()
    trained: list[int] = []
    key = _classifier(Settings(data_dir=tmp_path / "host-a"), store, dataset_id, trained)
    assert trained and store.exists(key + SHA256_SUFFIX)

    host_b = Settings(data_dir=tmp_path / "host-b")  # a fresh cache: download, no training
    trained.clear()
    _classifier(host_b, store, dataset_id, trained)
    cached = module.local_path(host_b, key)
    assert not trained and cached.read_bytes() == store.get_bytes(key)

    host_c = Settings(data_dir=tmp_path / "host-c")
    stored = tmp_path / "objects" / key
    stored.write_bytes(stored.read_bytes()[:-10] + bytes(10))  # out of step with its sha256
    _classifier(host_c, store, dataset_id, trained)
    assert trained  # the bad copy was not trusted: trained again and stored again
    data = store.get_bytes(key)
    assert store.get_bytes(key + SHA256_SUFFIX).decode() == hashlib.sha256(data).hexdigest()
    assert module.local_path(host_c, key).read_bytes() == data
