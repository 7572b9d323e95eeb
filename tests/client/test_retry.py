"""Retries (unit, no server): which answers are retried, how long the client waits,
that a POST keeps one Idempotency-Key across its attempts, and what is raised when the
budget is spent. httpx's MockTransport stands in for the server."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable

import httpx
import pytest

from services.client import (
    AsyncTailsynthClient,
    AuthError,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    ServerError,
    ServerUnreachable,
    TailsynthClient,
)
from services.client.retry import retry_after_seconds

JOB = {
    "id": "5b0f8a3e-4c8e-4a44-9a53-0d4c7e0f7a11",
    "kind": "ingest",
    "state": "queued",
    "stage": "queued",
    "progress": {"done": 0, "total": 10, "percent": 0.0, "stage_percent": 0.0},
    "error": None,
    "result": {},
    "params": {},
    "attempts": 0,
    "cancel_requested": False,
    "created_at": "2026-11-26T10:00:00+00:00",
    "started_at": None,
    "finished_at": None,
    "updated_at": "2026-11-26T10:00:00+00:00",
}
CREATED = {
    "synthesis_id": "6c1f8a3e-4c8e-4a44-9a53-0d4c7e0f7a11",
    "job_id": JOB["id"],
    "curated_set_id": "7d2f8a3e-4c8e-4a44-9a53-0d4c7e0f7a11",
    "counts": {"DF": 5},
}
BODY = {"dataset_id": JOB["id"], "generator_id": JOB["id"], "counts": {"DF": 5}}


def problem(status: int, detail: str, **extra: object) -> httpx.Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


def scripted(
    *answers: httpx.Response | Exception,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """A handler answering each request with the next answer (an exception is raised)."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


def client_for(handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float],
               retries: int = 5) -> TailsynthClient:  # fmt: skip
    policy = RetryPolicy(max_retries=retries, sleep=sleeps.append)
    return TailsynthClient(
        "http://ts.test", "k", retry=policy, transport=httpx.MockTransport(handler)
    )


def test_a_post_is_retried_on_503_with_one_idempotency_key_and_retry_after() -> None:
    handler, seen = scripted(
        httpx.Response(503, headers={"Retry-After": "3"}, json={"detail": "busy"}),
        httpx.Response(502),
        httpx.Response(202, json=CREATED),
    )
    seen_sleeps: list[float] = []
    with client_for(handler, seen_sleeps) as client:
        created = client.synthesis.create(BODY)
    assert str(created.curated_set_id) == CREATED["curated_set_id"]
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1, keys
    assert seen_sleeps[0] == 3.0  # Retry-After honoured
    assert 0 <= seen_sleeps[1] <= 1.0  # then exponential backoff with jitter (0.5 * 2**1)


def test_each_logical_call_gets_its_own_key_and_a_given_key_is_sent() -> None:
    handler, seen = scripted(*(httpx.Response(202, json=CREATED) for _ in range(3)))
    with client_for(handler, []) as client:
        client.synthesis.create(BODY)
        client.synthesis.create(BODY)
        client.synthesis.create(BODY, idempotency_key="ci-run-42")
    keys = [request.headers["Idempotency-Key"] for request in seen]
    assert keys[0] != keys[1] and keys[2] == "ci-run-42"


def test_retry_after_as_an_http_date_and_capped() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_seconds(httpx.Response(429, headers={"Retry-After": date})) <= 31
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "7200"}), httpx.Response(200, json=JOB)
    )
    sleeps: list[float] = []
    with client_for(handler, sleeps) as client:
        client.jobs.get(JOB["id"])
    assert sleeps == [RetryPolicy().max_retry_after]


def test_connection_errors_are_retried_then_reported_as_unreachable() -> None:
    handler, seen = scripted(*(httpx.ConnectError("refused") for _ in range(3)))
    sleeps: list[float] = []
    with client_for(handler, sleeps, retries=2) as client, pytest.raises(ServerUnreachable) as info:
        client.jobs.get(JOB["id"])
    assert len(seen) == 3 and len(sleeps) == 2
    assert "unreachable after 3 attempt(s)" in str(info.value)
    assert all(0 <= s <= RetryPolicy().max_backoff for s in sleeps)


def test_budget_spent_on_503_raises_the_servers_problem() -> None:
    handler, seen = scripted(*(problem(503, "storage is down") for _ in range(2)))
    with client_for(handler, [], retries=1) as client, pytest.raises(ServerError) as info:
        client.jobs.get(JOB["id"])
    assert len(seen) == 2 and info.value.status == 503 and info.value.detail == "storage is down"


@pytest.mark.parametrize(
    ("answer", "kind", "field"),
    [
        (problem(422, "counts.DF: must be > 0", field="counts.DF"), InvalidRequest, "counts.DF"),
        (
            problem(422, "x", errors=[{"field": "sampling.guidance_scale", "message": "le 30"}]),
            InvalidRequest,
            "sampling.guidance_scale",
        ),
        (problem(401, "unknown or revoked API key"), AuthError, None),
        (problem(404, "job x not found"), NotFound, None),
    ],
)
def test_client_errors_are_typed_carry_the_problem_and_are_not_retried(
    answer: httpx.Response, kind: type[Exception], field: str | None
) -> None:
    handler, seen = scripted(answer)
    with client_for(handler, []) as client, pytest.raises(kind) as info:
        client.synthesis.create(BODY)
    assert len(seen) == 1
    error = info.value
    assert error.field == field and error.body is not None  # type: ignore[attr-defined]
    assert f"HTTP {answer.status_code}" in str(error)


def test_health_returns_a_degraded_503_without_retrying() -> None:
    body = {"status": "degraded", "components": {"db": {"status": "down"}}, "detail": "db down"}
    handler, seen = scripted(httpx.Response(503, json=body))
    with client_for(handler, []) as client:
        health = client.health()
    assert health.status == "degraded" and len(seen) == 1


def test_the_async_client_retries_alike() -> None:
    answers = [
        httpx.ReadError("reset"),
        httpx.Response(503, headers={"Retry-After": "0"}),
        httpx.Response(202, json=CREATED),
    ]
    handler, seen = scripted(*answers)

    async def run() -> str:
        policy = RetryPolicy(backoff=0.01)
        async with AsyncTailsynthClient(
            "http://ts.test", "k", retry=policy, transport=httpx.MockTransport(handler)
        ) as client:
            created = await client.synthesis.create(BODY)
            return str(created.job_id)

    assert asyncio.run(run()) == JOB["id"]
    assert len({request.headers["Idempotency-Key"] for request in seen}) == 1 and len(seen) == 3
