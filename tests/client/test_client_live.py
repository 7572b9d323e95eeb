"""The typed client against a live ``tailsynth serve``: a POST whose answer is lost is
retried and makes one job; a download cut mid-body resumes and verifies; a wait reports
each change once; the async client reads the same schemas."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.api.schemas import DatasetRead, JobRead
from services.client import AsyncTailsynthClient, RetryPolicy, TailsynthClient
from tests.client.conftest import FAST_POLL, Campaign, Live
from tests.fixtures.archives import build, samples


class DropFirstPostAnswer(httpx.BaseTransport):
    """Sends every request to the server, then loses the first POST's answer, as a proxy
    that drops a connection after forwarding would: the server did the work."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.posts: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts.append(request)
            if len(self.posts) == 1:
                response.read()
                response.close()
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                )
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_post_whose_answer_is_lost_is_retried_and_makes_one_job(live: Live) -> None:
    key = live.new_key("retried-post")
    transport = DropFirstPostAnswer()
    policy = RetryPolicy(backoff=0.05)
    with TailsynthClient(live.url, key, retry=policy, transport=transport) as client:
        created = client.datasets.create_demo(name="retried", total=40, image_size=16)
        jobs = client.jobs.list(kind="ingest")
        datasets = client.datasets.list()
        client.jobs.wait(created.job_id, timeout=120, **FAST_POLL)
    assert len(transport.posts) == 2
    assert (
        transport.posts[0].headers["Idempotency-Key"]
        == transport.posts[1].headers["Idempotency-Key"]
    )
    assert [job.id for job in jobs.items] == [created.job_id]  # one job, not two
    assert [d.id for d in datasets.items] == [created.dataset_id]


class _CutBody(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, after: int) -> None:
        self.inner = inner
        self.after = after

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.after:
                yield chunk[: self.after - sent]
                break
            sent += len(chunk)
            yield chunk
        self.inner.close()
        raise httpx.ReadError("connection reset by peer")


class CutFirstArchive(httpx.BaseTransport):
    """Cuts the first archive download after ``after`` bytes; records every archive
    request and its status."""

    def __init__(self, after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after = after
        self.archive: list[tuple[httpx.Request, httpx.Response]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/archive"):
            self.archive.append((request, response))
            if len(self.archive) == 1:
                assert isinstance(response.stream, httpx.SyncByteStream)
                return httpx.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_CutBody(response.stream, self.after),
                    request=request,
                )
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_cut_download_resumes_and_verifies(
    live: Live, campaign: Campaign, tmp_path: Path
) -> None:
    with live.client() as client:
        whole = client.curated_sets.download(campaign.curated_set_id, tmp_path / "whole.zip")
    assert whole.size > 0 and whole.verified_by
    transport = CutFirstArchive(after=whole.size // 2)
    policy = RetryPolicy(backoff=0.05)
    with TailsynthClient(live.url, live.key, retry=policy, transport=transport) as client:
        cut = client.curated_sets.download(campaign.curated_set_id, tmp_path / "cut.zip")
    (first, first_answer), (second, second_answer) = transport.archive
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={whole.size // 2}-"
    # The archive route takes ranges: the second request continues from the cut (the
    # restart a server without ranges causes is tested in test_download.py).
    assert first_answer.headers["Accept-Ranges"] == "bytes" and first_answer.headers["ETag"]
    assert second.headers["If-Range"] == first_answer.headers["ETag"]
    assert second_answer.status_code == 206 and cut.resumed
    assert cut.sha256 == whole.sha256
    assert hashlib.sha256((tmp_path / "cut.zip").read_bytes()).hexdigest() == whole.sha256
    with zipfile.ZipFile(tmp_path / "cut.zip") as archive:
        assert "manifest.csv" in archive.namelist() and archive.testzip() is None
    assert not (tmp_path / "cut.zip.part").exists()


def test_wait_reports_each_change_once_and_returns_the_typed_job(live: Live) -> None:
    seen: list[JobRead] = []
    with live.client() as client:
        created = client.datasets.create_demo(name="waited", total=60, image_size=16)
        job = client.jobs.wait(
            created.job_id, timeout=120, poll_interval=0.1, on_progress=seen.append
        )
        dataset = client.datasets.get(created.dataset_id)
    assert isinstance(job, JobRead) and job.state == "succeeded"
    assert isinstance(dataset, DatasetRead) and sum(dataset.class_counts.values()) == 60
    views = [
        (j.state, j.stage, j.progress.done, j.progress.total, j.progress.percent) for j in seen
    ]
    assert views and all(a != b for a, b in zip(views, views[1:], strict=False)), views
    assert views[-1][0] == "succeeded"


def test_the_async_client_reads_the_same_schemas(
    live: Live, campaign: Campaign, tmp_path: Path
) -> None:
    archive = build("isic2019", tmp_path, samples(total=48, image_size=16, seed=3))
    sent: list[int] = []

    async def run() -> tuple[str, str, int]:
        async with AsyncTailsynthClient(live.url, live.key) as client:
            uploaded = await client.datasets.upload(
                archive.path, name="async", on_progress=lambda done, _: sent.append(done)
            )
            await client.jobs.wait(uploaded.job_id, timeout=120, **FAST_POLL)
            ingested = await client.datasets.get(uploaded.dataset_id)
            assert ingested.class_counts == archive.expected_counts
            health = await client.health()
            dataset = await client.datasets.get(campaign.dataset_id)
            curated = await client.curated_sets.get(campaign.curated_set_id)
            manifest = await client.curated_sets.manifest(campaign.curated_set_id, format="jsonl")
            assert str(curated.dataset_id) == campaign.dataset_id
            return health.status, dataset.state, len(manifest.splitlines())

    status, state, rows = asyncio.run(run())
    assert status in ("up", "degraded") and state == "ready" and rows > 0
    assert sent[-1] == archive.path.stat().st_size
