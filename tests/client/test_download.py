"""Resumable downloads (unit, no server): a stream cut mid-body continues with
``Range: bytes=N-`` and ``If-Range``; a 206 is appended, a 200 restarts from zero, a 416
drops the partial file; the result is verified against a digest header and the zip's
manifest. The live download is in test_client_live.py."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.client import AsyncTailsynthClient, DownloadError, RetryPolicy, TailsynthClient
from services.client.download import expected_sha256

CURATED = "8e3f8a3e-4c8e-4a44-9a53-0d4c7e0f7a11"
ETAG = '"archive-v1"'


def curated_zip(with_sha: bool = True, images: int = 40) -> bytes:
    files = {
        f"DF/{i:03d}.png": bytes([i % 251]) * 997 + bytes(range(i % 200)) for i in range(images)
    }
    manifest = io.StringIO()
    writer = csv.writer(manifest)
    writer.writerow(["file", "label", *(["sha256"] if with_sha else [])])
    for name, data in files.items():
        writer.writerow([name, "DF", *([hashlib.sha256(data).hexdigest()] if with_sha else [])])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("manifest.csv", manifest.getvalue())
    return buffer.getvalue()


class CutStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends ``cut`` bytes of ``data`` and then loses the connection."""

    def __init__(self, data: bytes, cut: int | None) -> None:
        self.data = data
        self.cut = cut

    def _chunks(self) -> Iterator[bytes]:
        end = len(self.data) if self.cut is None else self.cut
        for start in range(0, end, 4096):
            yield self.data[start : min(start + 4096, end)]
        if self.cut is not None:
            raise httpx.ReadError("connection reset by peer")

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            yield chunk


def archive_server(
    data: bytes, *, cut_first_at: int | None, ranges: bool, digest: str | None = None
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"ETag": ETAG, "Content-Type": "application/zip"}
        if digest:
            headers["Repr-Digest"] = f"sha-256=:{digest}:"
        cut = cut_first_at if len(seen) == 1 else None
        wanted = request.headers.get("Range")
        if ranges and wanted and request.headers.get("If-Range") in (None, ETAG):
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return httpx.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            return httpx.Response(206, headers=headers, stream=CutStream(data[start:], cut))
        headers["Content-Length"] = str(len(data))
        return httpx.Response(200, headers=headers, stream=CutStream(data, cut))

    return handler, seen


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> TailsynthClient:
    policy = RetryPolicy(sleep=lambda _: None)
    return TailsynthClient(
        "http://ts.test", "k", retry=policy, transport=httpx.MockTransport(handler)
    )


def test_a_cut_download_resumes_with_range_and_is_verified(tmp_path: Path) -> None:
    data = curated_zip()
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    handler, seen = archive_server(data, cut_first_at=len(data) // 3, ranges=True, digest=digest)
    progress: list[tuple[int, int | None]] = []
    with client_for(handler) as client:
        result = client.curated_sets.download(
            CURATED, tmp_path / "c.zip", on_progress=lambda d, t: progress.append((d, t))
        )
    assert (tmp_path / "c.zip").read_bytes() == data
    assert result.resumed and result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.verified_by == ["digest", "manifest-sha256"]
    assert "Range" not in seen[0].headers
    assert seen[1].headers["Range"] == f"bytes={len(data) // 3}-"
    assert seen[1].headers["If-Range"] == ETAG
    assert progress[-1] == (len(data), len(data))
    assert not (tmp_path / "c.zip.part").exists() and not (tmp_path / "c.zip.part.etag").exists()


def test_a_server_answering_200_to_a_range_restarts_cleanly(tmp_path: Path) -> None:
    data = curated_zip(with_sha=False)
    handler, seen = archive_server(data, cut_first_at=len(data) // 2, ranges=False)
    with client_for(handler) as client:
        result = client.curated_sets.download(CURATED, tmp_path / "c.zip")
    assert (tmp_path / "c.zip").read_bytes() == data  # not the first half twice
    assert not result.resumed and result.verified_by == ["manifest-crc"]
    assert "Range" in seen[1].headers


def test_a_partial_file_of_an_earlier_run_is_continued(tmp_path: Path) -> None:
    data = curated_zip()
    (tmp_path / "c.zip.part").write_bytes(data[:5000])
    (tmp_path / "c.zip.part.etag").write_text(ETAG)
    handler, seen = archive_server(data, cut_first_at=None, ranges=True)
    with client_for(handler) as client:
        result = client.curated_sets.download(CURATED, tmp_path / "c.zip")
    assert result.resumed and (tmp_path / "c.zip").read_bytes() == data
    assert seen[0].headers["Range"] == "bytes=5000-" and len(seen) == 1


def test_a_416_drops_the_partial_file_and_starts_over(tmp_path: Path) -> None:
    data = curated_zip()
    (tmp_path / "c.zip.part").write_bytes(data + b"stale tail")  # longer than the archive
    handler, seen = archive_server(data, cut_first_at=None, ranges=True)
    with client_for(handler) as client:
        client.curated_sets.download(CURATED, tmp_path / "c.zip")
    assert (tmp_path / "c.zip").read_bytes() == data
    assert [r.headers.get("Range") for r in seen] == [f"bytes={len(data) + 10}-", None]


def test_a_wrong_digest_or_a_tampered_file_fails_verification(tmp_path: Path) -> None:
    data = curated_zip()
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    handler, _ = archive_server(data, cut_first_at=None, ranges=True, digest=wrong)
    with client_for(handler) as client, pytest.raises(DownloadError, match="digest"):
        client.curated_sets.download(CURATED, tmp_path / "c.zip")
    assert not (tmp_path / "c.zip").exists()

    tampered = curated_zip().replace(bytes([7]) * 997, bytes([8]) * 997)  # CRC no longer fits
    handler, _ = archive_server(tampered, cut_first_at=None, ranges=True)
    with client_for(handler) as client, pytest.raises(DownloadError, match="CRC|sha256"):
        client.curated_sets.download(CURATED, tmp_path / "d.zip")
    assert not (tmp_path / "d.zip").exists()


def test_digest_headers_of_each_scheme_are_read() -> None:
    sha = hashlib.sha256(b"x")
    b64 = base64.b64encode(sha.digest()).decode()
    for headers in (
        {"Repr-Digest": f"sha-512=:AAAA:, sha-256=:{b64}:"},
        {"Digest": f"SHA-256={b64}"},
        {"X-Checksum-SHA256": sha.hexdigest()},
    ):
        assert expected_sha256(httpx.Headers(headers)) == sha.hexdigest()
    assert expected_sha256(httpx.Headers({})) is None


def test_the_async_client_resumes_alike(tmp_path: Path) -> None:
    data = curated_zip()
    handler, seen = archive_server(data, cut_first_at=len(data) // 2, ranges=True)

    async def run() -> bool:
        policy = RetryPolicy(backoff=0.001)
        async with AsyncTailsynthClient(
            "http://ts.test", "k", retry=policy, transport=httpx.MockTransport(handler)
        ) as client:
            result = await client.curated_sets.download(CURATED, tmp_path / "c.zip")
            return result.resumed

    assert asyncio.run(run())
    assert (tmp_path / "c.zip").read_bytes() == data and seen[1].headers["Range"].startswith(
        "bytes="
    )
