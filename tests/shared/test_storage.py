"""The same contract for the local-directory store and the S3 store (moto's server)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from minio import Minio

from shared.storage import LocalObjectStore, ObjectNotFound, ObjectStore, S3ObjectStore


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.service)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    client = Minio(
        endpoint, access_key="testing", secret_key="testing", secure=False, region="us-east-1"
    )
    s3 = S3ObjectStore(client, f"store-test-{uuid.uuid4().hex[:10]}")  # a bucket per test
    s3.ensure_bucket()
    return s3


def test_round_trip_bytes_and_stream(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("a/b/one.bin", b"hello")
    payload = bytes(range(256)) * 20_000  # 5 MB, streamed with unknown length
    store.put_stream("a/two.bin", io.BytesIO(payload))
    assert store.get_bytes("a/b/one.bin") == b"hello"
    assert b"".join(store.iter_chunks("a/two.bin", 1 << 16)) == payload
    assert store.size("a/two.bin") == len(payload)
    target = tmp_path / "copy.bin"
    store.download_to("a/two.bin", target)
    assert target.read_bytes() == payload


def test_list_exists_delete(store: ObjectStore) -> None:
    for key in ("p/1", "p/2", "q/3"):
        store.put_bytes(key, key.encode())
    assert store.list_keys("p/") == ["p/1", "p/2"]
    assert store.exists("q/3") and not store.exists("q/4")
    store.delete("q/3")
    assert not store.exists("q/3")
    store.ping()


def test_missing_object_and_bad_keys(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope")
    with pytest.raises(ValueError, match="invalid object key"):
        store.put_bytes("../escape", b"x")


def test_overwrite_is_atomic_for_readers(store: ObjectStore) -> None:
    store.put_bytes("k", b"old")
    store.put_bytes("k", b"new")
    assert store.get_bytes("k") == b"new"
    assert store.list_keys("").count("k") == 1
