"""The same contract for the local-directory store and the S3 store (moto's server)."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import pytest
from minio import Minio

from shared.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    download_verified,
    put_file_with_sha256,
)


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


def test_verified_download_checks_the_sha256_sidecar(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "classifier.safetensors"
    source.write_bytes(b"weights" * 1000)
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    put_file_with_sha256(store, "c/model.safetensors", source, sha256)
    cached = tmp_path / "cache" / "model.safetensors"
    assert download_verified(store, "c/model.safetensors", cached) == sha256
    assert cached.read_bytes() == source.read_bytes()

    store.put_bytes("c/model.safetensors", b"weights" * 999)  # out of step with its sidecar
    cached.unlink()
    with pytest.raises(ValueError, match="corrupt"):
        download_verified(store, "c/model.safetensors", cached)
    assert list(cached.parent.iterdir()) == []  # no partial file, hidden or not


def test_a_short_or_killed_download_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("c/old.safetensors", b"x" * 4096)  # stored before sidecars existed
    cached = tmp_path / "cache" / "old.safetensors"

    def short(key: str, path: Path) -> None:
        path.write_bytes(b"x" * 100)  # the connection dropped

    monkeypatch.setattr(store, "download_to", short)
    with pytest.raises(ValueError, match="short"):
        download_verified(store, "c/old.safetensors", cached)

    def killed(key: str, path: Path) -> None:
        path.write_bytes(b"x" * 100)
        raise KeyboardInterrupt  # as far as the process gets before SIGKILL

    monkeypatch.setattr(store, "download_to", killed)
    with pytest.raises(KeyboardInterrupt):
        download_verified(store, "c/old.safetensors", cached)
    assert list(cached.parent.iterdir()) == []
    monkeypatch.undo()
    download_verified(store, "c/old.safetensors", cached)
    assert cached.read_bytes() == b"x" * 4096
