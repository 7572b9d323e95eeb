"""A curated set's manifest and archive are streamed in batches, capped, and the archive
is resumable: a size, an ETag, byte ranges — on Postgres and the S3 server."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from services.api import curated_archive
from services.client.download import expected_sha256
from shared.settings import Settings
from tests.conftest import ApiHarness
from tests.fixtures.curated import app_state, harness, ready_curated_set

PER_CLASS = {"MEL": 4, "DF": 3}


@pytest.fixture
def api(service_settings: Settings) -> Iterator[ApiHarness]:
    """The real app on Postgres and the S3 server; no worker: nothing here runs a job."""
    yield from harness(service_settings)


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 3 rows, so that 7 images take three keyset reads."""
    monkeypatch.setattr(curated_archive, "BATCH_ROWS", 3)


def test_archive_has_a_length_an_etag_and_the_same_bytes_each_time(
    api: ApiHarness, small_batches: None
) -> None:
    curated_id = ready_curated_set(api, PER_CLASS)
    first = api.client.get(f"/v1/curated-sets/{curated_id}/archive")
    again = api.client.get(f"/v1/curated-sets/{curated_id}/archive")

    assert first.status_code == 200 and first.headers["accept-ranges"] == "bytes"
    assert int(first.headers["content-length"]) == len(first.content)
    assert first.headers["etag"] == again.headers["etag"] and first.content == again.content
    # The whole archive's sha256 is known once one download ran to the end.
    assert "repr-digest" not in first.headers
    assert (
        expected_sha256(httpx.Headers(dict(again.headers)))
        == hashlib.sha256(first.content).hexdigest()
    )
    with zipfile.ZipFile(io.BytesIO(first.content)) as zipped:
        assert zipped.testzip() is None
        names = zipped.namelist()
        rows = list(csv.DictReader(io.StringIO(zipped.read("manifest.csv").decode())))
        assert names[-1] == "manifest.csv" and names[:-1] == [row["file"] for row in rows]
        for row in rows:
            assert hashlib.sha256(zipped.read(row["file"])).hexdigest() == row["sha256"]
    # Manifest order: label, then request index; every image once.
    assert [row["label"] for row in rows] == ["DF"] * 3 + ["MEL"] * 4
    assert len({row["id"] for row in rows}) == sum(PER_CLASS.values())
    print(f"archive: {len(first.content)} bytes, {len(names)} entries, {first.headers['etag']}")  # noqa: T201


def test_a_later_download_reads_no_object_sizes_again(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    curated_id = ready_curated_set(api, PER_CLASS)
    store = app_state(api).store
    looked_up: list[str] = []
    size = store.size

    def counted_size(key: str) -> int:
        looked_up.append(key)
        return size(key)

    monkeypatch.setattr(store, "size", counted_size)
    first = api.client.get(f"/v1/curated-sets/{curated_id}/archive")
    after_first = len(looked_up)
    resumed = api.client.get(
        f"/v1/curated-sets/{curated_id}/archive", headers={"Range": "bytes=100-"}
    )

    assert after_first == sum(PER_CLASS.values()) and len(looked_up) == after_first
    assert resumed.status_code == 206 and resumed.content == first.content[100:]
    print(f"object sizes looked up: {after_first} by the first download, 0 by the next")  # noqa: T201


def test_ranged_downloads_reassemble_the_archive(api: ApiHarness) -> None:
    curated_id = ready_curated_set(api, PER_CLASS)
    url = f"/v1/curated-sets/{curated_id}/archive"
    full = api.client.get(url)
    etag, size = full.headers["etag"], len(full.content)
    cut = size // 3

    head = api.client.get(url, headers={"Range": f"bytes=0-{cut - 1}"})
    tail = api.client.get(url, headers={"Range": f"bytes={cut}-", "If-Range": etag})

    assert (head.status_code, tail.status_code) == (206, 206)
    assert head.headers["content-range"] == f"bytes 0-{cut - 1}/{size}"
    assert tail.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert int(tail.headers["content-length"]) == size - cut == len(tail.content)
    assert head.content + tail.content == full.content
    # The digest names the whole archive, in a 206 too (RFC 9530's Repr-Digest).
    assert (
        expected_sha256(httpx.Headers(dict(tail.headers)))
        == hashlib.sha256(full.content).hexdigest()
    )
    with zipfile.ZipFile(io.BytesIO(head.content + tail.content)) as zipped:
        assert zipped.testzip() is None
    suffix = api.client.get(url, headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == full.content[-100:]
    print(f"ranged: {cut} + {size - cut} bytes == {size} bytes, zip opens")  # noqa: T201


def test_a_range_past_the_end_or_a_stale_if_range(api: ApiHarness) -> None:
    curated_id = ready_curated_set(api, {"MEL": 1, "DF": 1})
    url = f"/v1/curated-sets/{curated_id}/archive"
    size = len(api.client.get(url).content)

    past = api.client.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.headers["content-type"] == "application/problem+json"
    assert str(size) in past.json()["detail"]
    # An archive that changed since the client's first bytes is sent whole (200).
    stale = api.client.get(url, headers={"Range": "bytes=10-", "If-Range": '"older"'})
    assert stale.status_code == 200 and len(stale.content) == size
    # A malformed or multi-part range is ignored (RFC 9110), never a 500.
    for header in (
        "bytes=abc",
        "bytes=0-1,5-9",
        "items=0-1",
        "bytes=9-3",
        "bytes=a-5",
        "bytes=1-x",
    ):
        answer = api.client.get(url, headers={"Range": header})
        assert answer.status_code == 200 and len(answer.content) == size, header


def test_manifest_streams_every_row_once_across_batches(
    api: ApiHarness, small_batches: None
) -> None:
    curated_id = ready_curated_set(api, PER_CLASS)
    url = f"/v1/curated-sets/{curated_id}/manifest"
    with api.client.stream("GET", url) as answer:
        chunks = list(answer.iter_raw())
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    lines = api.client.get(url, params={"format": "jsonl"}).text.splitlines()

    assert [row["id"] for row in rows] == [json.loads(line)["id"] for line in lines]
    assert len({row["id"] for row in rows}) == len(rows) == sum(PER_CLASS.values())
    assert [int(row["seed"]) for row in rows] == [4, 5, 6, 0, 1, 2, 3]  # DF, then MEL
    assert all(json.loads(row["scores"]) == {"mahalanobis": float(row["seed"])} for row in rows)
    print(f"manifest: {len(rows)} rows in batches of 3, {len(chunks)} chunks streamed")  # noqa: T201


def test_manifest_and_archive_over_the_cap_answer_413(service_settings: Settings) -> None:
    capped = service_settings.model_copy(update={"max_manifest_rows": 2})
    for api in harness(capped):
        curated_id = ready_curated_set(api, {"MEL": 2, "DF": 1})
        for route in ("manifest", "archive"):
            answer = api.client.get(f"/v1/curated-sets/{curated_id}/{route}")
            assert answer.status_code == 413, route
            assert answer.headers["content-type"] == "application/problem+json"
            assert "max_manifest_rows" in answer.json()["detail"]
            assert (answer.json()["rows"], answer.json()["limit"]) == (3, 2)


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (None, None),
        ("bytes=0-", (0, 9)),
        ("bytes=4-", (4, 9)),
        ("bytes=2-4", (2, 4)),
        ("bytes=3-100", (3, 9)),
        ("bytes=-3", (7, 9)),
        ("bytes=-30", (0, 9)),
        ("Bytes = 1-2", (1, 2)),
        ("bytes=9-3", None),
        ("bytes=-", None),
        ("bytes=\u00b2-", None),
        ("bytes=0-1,4-5", None),
        ("lines=0-1", None),
    ],
)
def test_byte_range_reads_one_range_and_ignores_the_rest(
    header: str | None, span: tuple[int, int] | None
) -> None:
    assert curated_archive.byte_range(header, 10) == span


@pytest.mark.parametrize(
    "header", ["bytes=10-", "bytes=10-12", "bytes=-0", "bytes=99999999999999-"]
)
def test_byte_range_past_the_end_is_not_satisfiable(header: str) -> None:
    with pytest.raises(curated_archive.RangeNotSatisfiable):
        curated_archive.byte_range(header, 10)
