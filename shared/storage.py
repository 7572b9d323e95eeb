"""Object storage: MinIO / any S3 endpoint through the ``minio`` client, or a local
directory for the embedded default. Both implement :class:`ObjectStore` and pass the
same tests (tests/shared/test_storage.py).

Writes are streamed (``put_stream``) so an upload never has to sit whole in memory,
and every write is all-or-nothing: S3 makes an object visible only when the upload
completes; the local backend writes a temporary file and renames it into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import urllib3
from minio import Minio
from minio.error import S3Error

from shared.integrity import SHA256_SUFFIX as SHA256_SUFFIX  # re-exported
from shared.settings import Settings

CHUNK = 1024 * 1024
S3_PART_SIZE = 16 * 1024 * 1024


class ObjectNotFound(KeyError):
    """No object at that key."""


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None: ...
    def put_stream(
        self, key: str, stream: BinaryIO, length: int = -1, content_type: str = ...
    ) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...
    def download_to(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def ping(self) -> None: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalObjectStore:
    """Objects as files under ``root``; keys are relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._write_atomically(key, lambda handle: handle.write(data))

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> None:
        self._write_atomically(key, lambda handle: shutil.copyfileobj(stream, handle, CHUNK))

    def _write_atomically(self, key: str, write) -> None:  # type: ignore[no-untyped-def]
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def download_to(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root
        return sorted(
            path.relative_to(base).as_posix()
            for path in base.rglob("*")
            if path.is_file()
            and not path.name.startswith(".tmp-")
            and path.relative_to(base).as_posix().startswith(prefix)
        )

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"storage directory {self.root} is missing")


class S3ObjectStore:
    """Objects in one bucket of MinIO or any S3-compatible server."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # another process made it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        import io

        self.client.put_object(
            self.bucket, _check_key(key), io.BytesIO(data), len(data), content_type=content_type
        )

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> None:
        # Unknown length: multipart upload in fixed parts, never the whole body in memory.
        self.client.put_object(
            self.bucket,
            _check_key(key),
            stream,
            length,
            content_type=content_type,
            part_size=S3_PART_SIZE if length < 0 else 0,
        )

    def _get(self, key: str):  # type: ignore[no-untyped-def]
        try:
            return self.client.get_object(self.bucket, _check_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(key) from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        response = self._get(key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        response = self._get(key)
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def download_to(self, key: str, path: Path) -> None:
        with path.open("wb") as handle:
            for chunk in self.iter_chunks(key):
                handle.write(chunk)

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, _check_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        try:
            return int(self.client.stat_object(self.bucket, _check_key(key)).size or 0)
        except S3Error as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, _check_key(key))

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(
            obj.object_name
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if obj.object_name
        )

    def ping(self) -> None:
        self.client.bucket_exists(self.bucket)


def put_file_with_sha256(store: ObjectStore, key: str, path: Path, sha256: str) -> None:
    """Upload ``path`` to ``key``, then its sha256 to the sidecar ``key + ".sha256"``."""
    with path.open("rb") as handle:
        store.put_stream(key, handle, path.stat().st_size)
    store.put_bytes(key + SHA256_SUFFIX, sha256.encode())


def download_verified(store: ObjectStore, key: str, path: Path) -> str:
    """Download ``key`` to ``path`` so that ``path`` is complete and checked, or absent.

    The object goes to a temporary file beside ``path``, is checked against its sha256
    sidecar (:func:`put_file_with_sha256`) or, for an object stored without one, against
    its stored size, and only then renamed into place: a worker killed mid-download
    leaves no file that a later task would trust. Returns the file's sha256 (hex).

    Raises:
        ValueError: the download does not match the sidecar's sha256 or the size.
        ObjectNotFound: no object at ``key``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        store.download_to(key, partial)
        digest = hashlib.sha256()
        with partial.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        actual = digest.hexdigest()
        if store.exists(key + SHA256_SUFFIX):
            expected = store.get_bytes(key + SHA256_SUFFIX).decode().strip()
            if actual != expected:
                raise ValueError(f"download of {key} is corrupt: sha256 {actual} != {expected}")
        elif partial.stat().st_size != store.size(key):
            raise ValueError(
                f"download of {key} is short: {partial.stat().st_size} bytes of {store.size(key)}"
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return actual


def s3_http_client(settings: Settings) -> urllib3.PoolManager:
    """The minio client's HTTP pool, as minio makes it but with the settings' timeouts and
    tries: minio's own waits 5 minutes to connect and 5 more for each read, 6 tries, so an
    S3 server that stops answering would hang a request or a task for half an hour."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(
            connect=settings.s3_connect_timeout_s, read=settings.s3_read_timeout_s
        ),
        maxsize=10,  # TLS verified against the system's CAs (or $SSL_CERT_FILE)
        retries=urllib3.Retry(
            total=settings.s3_tries - 1,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
        ),
    )


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage_backend == "s3":
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=s3_http_client(settings),
        )
        store = S3ObjectStore(client, settings.s3_bucket)
        store.ensure_bucket()
        return store
    return LocalObjectStore(settings.resolved_storage_dir)
