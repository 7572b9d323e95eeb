"""The blocking client: one method per v1 endpoint, grouped as the API groups them.

    with TailsynthClient("http://127.0.0.1:8000", api_key) as client:
        created = client.datasets.upload(Path("isic.zip"), name="isic")
        client.jobs.wait(created.job_id, on_progress=print)
        client.curated_sets.download(curated_set_id, Path("curated.zip"))

Answers are the API's own schemas (``services.api.schemas``). Every call retries
connection errors and 429/502/503/504 per :class:`RetryPolicy`, and a POST sends one
``Idempotency-Key`` across all its attempts, so a retried POST makes one job.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Literal, cast

import httpx
from tenacity import Retrying

from services.api.schemas import (
    CuratedSetRead,
    DatasetCreated,
    DatasetRead,
    ExperimentCreated,
    ExperimentRead,
    GeneratorCreated,
    GeneratorRead,
    Health,
    JobRead,
    Page,
    SynthesisCreated,
    SyntheticImageRead,
)
from services.client._common import (
    ID,
    Body,
    BytesCallback,
    JobCallback,
    ProgressReader,
    WaitLoop,
    default_headers,
    json_body,
    new_idempotency_key,
    parse,
    raise_for_problem,
    resolve_connection,
)
from services.client.download import DownloadResult, PartialFile, RestartDownload
from services.client.errors import Conflict, ServerError, ServerUnreachable
from services.client.retry import RetryPolicy
from services.webhooks.schemas import WebhookAttemptRead, WebhookCreated, WebhookRead


class TailsynthClient:
    """Blocking client. ``base_url`` and ``api_key`` default to ``TAILSYNTH_URL`` and
    ``TAILSYNTH_API_KEY``; ``timeout`` is per HTTP request in seconds; ``transport``
    replaces httpx's (tests, proxies)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, api_key = resolve_connection(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )
        self.datasets = Datasets(self)
        self.generators = Generators(self)
        self.synthesis = Synthesis(self)
        self.jobs = Jobs(self)
        self.curated_sets = CuratedSets(self)
        self.synthetic_images = SyntheticImages(self)
        self.experiments = Experiments(self)
        self.webhooks = Webhooks(self)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TailsynthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- transport

    def _retrying(self, accept: frozenset[int] = frozenset()) -> Retrying:
        return Retrying(sleep=self.retry.sleep, **self.retry.tenacity_kwargs(accept))

    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: dict[str, Any] | None = None,
        upload: tuple[str, Path, BytesCallback | None] | None = None,
        idempotency_key: str | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """One logical call, retried per the policy; raises :class:`ApiError` on 4xx/5xx
        (except the statuses in ``accept``) and :class:`ServerUnreachable` when no answer
        came within the retry budget. ``upload`` is (form field, file, progress)."""
        headers = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or new_idempotency_key()
        params = {k: v for k, v in (params or {}).items() if v is not None}

        def attempt() -> httpx.Response:
            if upload is None:
                return self.http.request(
                    method, path, params=params, json=json, data=data, headers=headers
                )
            field, file, progress = upload
            with file.open("rb") as handle:
                reader = ProgressReader(handle, file.stat().st_size, progress)
                # Duck-typed: httpx only reads, seeks and asks the size of a file.
                files = {field: (file.name, cast(IO[bytes], reader), "application/octet-stream")}
                return self.http.request(
                    method, path, params=params, data=data, files=files, headers=headers
                )

        try:
            response: httpx.Response = self._retrying(accept)(attempt)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, self.retry.max_retries + 1, exc) from exc
        if response.status_code in accept:
            return response
        return raise_for_problem(response)

    # ----------------------------------------------------------------- endpoints

    def health(self) -> Health:
        """``GET /v1/health`` (no key needed); a 503 (a component down) is returned too."""
        return parse(Health, self.send("GET", "/v1/health", accept=frozenset({503})))

    # Untyped methods of the first client, kept for scripts written against it
    # (benchmarks/): JSON in, JSON dicts out. New code uses the typed groups above.

    def request(
        self, method: str, path: str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        """Any endpoint, with the same retries and errors; returns the decoded JSON."""
        response = self.send(method, path, idempotency_key=idempotency_key, **kwargs)
        return response.json()

    def dataset(self, dataset_id: ID) -> dict[str, Any]:
        return self.datasets.get(dataset_id).model_dump(mode="json")

    def wait(
        self,
        job_id: ID,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: JobCallback | None = None,
    ) -> dict[str, Any]:
        """:meth:`Jobs.wait`, returning the job as a JSON dict."""
        job = self.jobs.wait(job_id, timeout=timeout, poll_interval=poll, on_progress=on_progress)
        return job.model_dump(mode="json")


class _Group:
    def __init__(self, client: TailsynthClient) -> None:
        self._client = client


class Datasets(_Group):
    def upload(
        self,
        archive: Path,
        *,
        name: str,
        format: str | None = None,
        classes: list[str] | None = None,
        split_seed: int = 0,
        idempotency_key: str | None = None,
        on_progress: BytesCallback | None = None,
    ) -> DatasetCreated:
        """``POST /v1/datasets``: stream a zip or tar.gz up; the ingest is a job.
        ``on_progress(bytes_sent, total_bytes)`` follows the upload."""
        data: dict[str, Any] = {"name": name, "split_seed": str(split_seed)}
        if format:
            data["format"] = format
        if classes:
            data["classes"] = ",".join(classes)
        response = self._client.send(
            "POST",
            "/v1/datasets",
            data=data,
            upload=("file", Path(archive), on_progress),
            idempotency_key=idempotency_key,
        )
        return parse(DatasetCreated, response)

    def create_demo(
        self, body: Body = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> DatasetCreated:
        """``POST /v1/datasets/demo`` (fields of ``DemoDatasetCreate``)."""
        response = self._client.send(
            "POST",
            "/v1/datasets/demo",
            json=json_body(body, fields),
            idempotency_key=idempotency_key,
        )
        return parse(DatasetCreated, response)

    def list(self, *, limit: int = 50, offset: int = 0) -> Page[DatasetRead]:
        """``GET /v1/datasets``, newest first."""
        params = {"limit": limit, "offset": offset}
        return parse(Page[DatasetRead], self._client.send("GET", "/v1/datasets", params=params))

    def get(self, dataset_id: ID) -> DatasetRead:
        """``GET /v1/datasets/{id}``."""
        return parse(DatasetRead, self._client.send("GET", f"/v1/datasets/{dataset_id}"))


class Generators(_Group):
    def create(
        self, body: Body = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> GeneratorCreated:
        """``POST /v1/generators`` (fields of ``GeneratorCreate``): ``kind="trained"`` with
        ``training``, or ``kind="pretrained"`` with ``source``."""
        response = self._client.send(
            "POST", "/v1/generators", json=json_body(body, fields), idempotency_key=idempotency_key
        )
        return parse(GeneratorCreated, response)

    def get(self, generator_id: ID) -> GeneratorRead:
        """``GET /v1/generators/{id}``."""
        return parse(GeneratorRead, self._client.send("GET", f"/v1/generators/{generator_id}"))


class Synthesis(_Group):
    def create(
        self, body: Body = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> SynthesisCreated:
        """``POST /v1/synthesis`` (fields of ``SynthesisCreate``): ``counts`` per class or
        ``target="fill_to_max"``."""
        response = self._client.send(
            "POST", "/v1/synthesis", json=json_body(body, fields), idempotency_key=idempotency_key
        )
        return parse(SynthesisCreated, response)


class Jobs(_Group):
    def list(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[JobRead]:
        """``GET /v1/jobs``, newest first, optionally of one state or kind."""
        params = {"state": state, "kind": kind, "limit": limit, "offset": offset}
        return parse(Page[JobRead], self._client.send("GET", "/v1/jobs", params=params))

    def get(self, job_id: ID) -> JobRead:
        """``GET /v1/jobs/{id}``."""
        return parse(JobRead, self._client.send("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: ID) -> JobRead:
        """``POST /v1/jobs/{id}/cancel``. Canceling a canceled job returns it (a retried
        cancel whose first answer was lost is not an error); a job that ended otherwise
        raises :class:`Conflict`."""
        try:
            return parse(JobRead, self._client.send("POST", f"/v1/jobs/{job_id}/cancel"))
        except Conflict:
            job = self.get(job_id)
            if job.state == "canceled":
                return job
            raise

    def wait(
        self,
        job_id: ID,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        on_progress: JobCallback | None = None,
        outage_tolerance: float = 600.0,
    ) -> JobRead:
        """Poll until the job ends; return it when it succeeded or ended ``partial``.

        ``timeout`` in seconds, ``None`` (the default) waits as long as the job runs:
        generator training takes hours on a busy CPU. Raises :class:`JobFailed`,
        :class:`JobCanceled` or :class:`WaitTimeout`. ``on_progress(job)`` is called
        when the job changed since the last call, never twice for the same view. Polls
        every ``poll_interval`` s while the job moves, backing off to
        ``max_poll_interval`` while it does not. A server that stops answering (after
        each poll's own retries) or answers 5xx is polled on for ``outage_tolerance``
        seconds before :class:`ServerUnreachable` / :class:`ServerError` is raised."""
        loop = WaitLoop(timeout, poll_interval, max_poll_interval, on_progress, outage_tolerance)
        pause: float | None
        while True:
            try:
                job = self.get(job_id)
            except (ServerUnreachable, ServerError) as exc:
                pause = loop.outage(exc)
            else:
                pause = loop.observe(job)
            if pause is None:
                return job
            self._client.retry.sleep(pause)


class CuratedSets(_Group):
    def get(self, curated_set_id: ID) -> CuratedSetRead:
        """``GET /v1/curated-sets/{id}``: per class generated, kept, rejected by reason."""
        response = self._client.send("GET", f"/v1/curated-sets/{curated_set_id}")
        return parse(CuratedSetRead, response)

    def manifest(self, curated_set_id: ID, *, format: Literal["csv", "jsonl"] = "csv") -> str:
        """``GET /v1/curated-sets/{id}/manifest``: one row per kept image."""
        path = f"/v1/curated-sets/{curated_set_id}/manifest"
        return self._client.send("GET", path, params={"format": format}).text

    def download(
        self, curated_set_id: ID, dest: Path, *, on_progress: BytesCallback | None = None
    ) -> DownloadResult:
        """``GET /v1/curated-sets/{id}/archive`` streamed to ``dest`` (a zip), resumable.

        Bytes land in ``dest.part`` first; a dropped connection (or a later call after
        a crash) continues it with ``Range`` when the server answers 206, and starts
        over when it answers 200. The finished file is verified (a digest header, the
        zip's manifest) before it is moved to ``dest``. ``on_progress(done, total)``."""
        client = self._client
        partial = PartialFile(Path(dest))
        path = f"/v1/curated-sets/{curated_set_id}/archive"
        done_headers: list[httpx.Headers] = []

        def attempt() -> httpx.Response:
            with client.http.stream("GET", path, headers=partial.request_headers()) as response:
                if response.status_code == 416 and partial.offset:
                    partial.discard()
                    raise RestartDownload("the server refused the range; starting over")
                if response.status_code >= 400:
                    response.read()
                    return response
                with partial.open_for(response) as out:
                    start = partial.offset
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        start += len(chunk)
                        if on_progress is not None:
                            on_progress(start, partial.total)
                done_headers.append(response.headers)
                return response

        try:
            response: httpx.Response = client._retrying()(attempt)
        except httpx.TransportError as exc:
            raise ServerUnreachable(client.base_url, client.retry.max_retries + 1, exc) from exc
        raise_for_problem(response)
        return partial.finish(done_headers[-1])


class SyntheticImages(_Group):
    def get(self, image_id: ID) -> SyntheticImageRead:
        """``GET /v1/synthetic-images/{id}``: one image's full provenance."""
        response = self._client.send("GET", f"/v1/synthetic-images/{image_id}")
        return parse(SyntheticImageRead, response)


class Experiments(_Group):
    def create(
        self, body: Body = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> ExperimentCreated:
        """``POST /v1/experiments`` (fields of ``ExperimentCreate``)."""
        response = self._client.send(
            "POST", "/v1/experiments", json=json_body(body, fields), idempotency_key=idempotency_key
        )
        return parse(ExperimentCreated, response)

    def list(
        self,
        *,
        state: str | None = None,
        dataset_id: ID | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[ExperimentRead]:
        """``GET /v1/experiments``, newest first."""
        params = {
            "state": state,
            "dataset_id": None if dataset_id is None else str(dataset_id),
            "limit": limit,
            "offset": offset,
        }
        response = self._client.send("GET", "/v1/experiments", params=params)
        return parse(Page[ExperimentRead], response)

    def get(self, experiment_id: ID) -> ExperimentRead:
        """``GET /v1/experiments/{id}``: per-arm metrics with intervals, verdicts."""
        return parse(ExperimentRead, self._client.send("GET", f"/v1/experiments/{experiment_id}"))

    def report(self, experiment_id: ID) -> str:
        """``GET /v1/experiments/{id}/report``: the self-contained HTML report."""
        return self._client.send("GET", f"/v1/experiments/{experiment_id}/report").text


class Webhooks(_Group):
    def create(self, body: Body = None, **fields: Any) -> WebhookCreated:
        """``POST /v1/webhooks`` (fields of ``WebhookCreate``: ``url``, ``events``): an
        endpoint for every job of the tenant; the answer's ``secret``, shown only here,
        verifies the signatures (:func:`services.client.verify_webhook`)."""
        response = self._client.send("POST", "/v1/webhooks", json=json_body(body, fields))
        return parse(WebhookCreated, response)

    def list(self, *, limit: int = 50, offset: int = 0) -> Page[WebhookRead]:
        """``GET /v1/webhooks``, newest first."""
        params = {"limit": limit, "offset": offset}
        response = self._client.send("GET", "/v1/webhooks", params=params)
        return parse(Page[WebhookRead], response)

    def get(self, webhook_id: ID) -> WebhookRead:
        """``GET /v1/webhooks/{id}`` (the secret is not shown again)."""
        return parse(WebhookRead, self._client.send("GET", f"/v1/webhooks/{webhook_id}"))

    def delete(self, webhook_id: ID) -> None:
        """``DELETE /v1/webhooks/{id}``: its pending deliveries are dropped."""
        self._client.send("DELETE", f"/v1/webhooks/{webhook_id}")

    def deliveries(
        self, webhook_id: ID, *, limit: int = 50, offset: int = 0
    ) -> Page[WebhookAttemptRead]:
        """``GET /v1/webhooks/{id}/deliveries``: every attempt, newest first."""
        params = {"limit": limit, "offset": offset}
        path = f"/v1/webhooks/{webhook_id}/deliveries"
        return parse(Page[WebhookAttemptRead], self._client.send("GET", path, params=params))
