"""The HTTP client for CI pipelines and the CLI's client verbs.

Every method raises :class:`ApiError` (with the server's problem+json detail) on a
4xx/5xx answer, so a CI step fails loudly with a message a person can act on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINAL_STATES = ("succeeded", "partial", "failed", "canceled")


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class JobFailed(RuntimeError):
    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job['id']} {job['state']}: {job.get('error') or job['stage']}")
        self.job = job


class TailsynthClient:
    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TailsynthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("detail", response.text)
            except ValueError:
                body, detail = None, response.text
            raise ApiError(response.status_code, str(detail), body)
        return response.json()

    def request(
        self, method: str, path: str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        headers = kwargs.pop("headers", {})
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        return self._json(self.http.request(method, path, headers=headers, **kwargs))

    def health(self) -> dict[str, Any]:
        return self._json(self.http.get("/v1/health"))  # type: ignore[no-any-return]

    def upload_dataset(
        self,
        archive: Path,
        *,
        name: str,
        format: str | None = None,
        classes: list[str] | None = None,
        split_seed: int = 0,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"name": name, "split_seed": str(split_seed)}
        if format:
            data["format"] = format
        if classes:
            data["classes"] = ",".join(classes)
        with archive.open("rb") as handle:
            return self.request(  # type: ignore[no-any-return]
                "POST",
                "/v1/datasets",
                idempotency_key=idempotency_key,
                data=data,
                files={"file": (archive.name, handle, "application/octet-stream")},
            )

    def create_demo_dataset(self, **fields: Any) -> dict[str, Any]:
        return self.request("POST", "/v1/datasets/demo", json=fields)  # type: ignore[no-any-return]

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/datasets/{dataset_id}")  # type: ignore[no-any-return]

    def create_experiment(self, **fields: Any) -> dict[str, Any]:
        return self.request("POST", "/v1/experiments", json=fields)  # type: ignore[no-any-return]

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/experiments/{experiment_id}")  # type: ignore[no-any-return]

    def experiment_report(self, experiment_id: str) -> str:
        """The experiment's self-contained HTML report."""
        response = self.http.get(f"/v1/experiments/{experiment_id}/report")
        if response.status_code >= 400:
            self._json(response)
        return response.text

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is final; raise :class:`JobFailed` when it failed or was
        canceled. A ``partial`` job (some classes skipped or flagged, the rest delivered) is
        returned like a succeeded one: its result says which parts fell short."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["state"] in FINAL_STATES:
                if job["state"] not in ("succeeded", "partial"):
                    raise JobFailed(job)
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            time.sleep(poll)
