"""The webhook tests' stack: the session's Postgres schema and S3 server, a Redis key
prefix of their own, one real worker process for the ``ingest`` and ``webhooks`` queues
(tests.webhooks.worker_app), an API on the same settings, and a loopback receiver.

The settings allow loopback targets (127.0.0.0/8) explicitly, retry after 0.5 s (four
attempts in all) and let a job.progress event through every 0.5 s at most.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import ApiHarness, issue_key
from tests.fixtures.services import ManagedProcess, start_worker
from tests.webhooks.receiver import Receiver, running_receiver

RETRY_SCHEDULE_S = (0.5, 0.5, 0.5)
PROGRESS_INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def webhook_settings(service_settings: Settings, redis_prefix: str) -> Settings:
    return service_settings.model_copy(
        update={
            "broker_key_prefix": f"{redis_prefix}webhooks-{uuid.uuid4().hex[:6]}:",
            "webhook_allowed_networks": ("127.0.0.0/8",),
            "webhook_retry_schedule_s": RETRY_SCHEDULE_S,
            "webhook_progress_interval_s": PROGRESS_INTERVAL_S,
            "webhook_timeout_s": 5.0,
        }
    )


@pytest.fixture(scope="module")
def webhook_worker(
    webhook_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    env = {**os.environ, **webhook_settings.environ(), "OMP_NUM_THREADS": "1"}
    worker = start_worker(
        tmp_path_factory.mktemp("webhook-worker"),
        env,
        queues="ingest,webhooks",
        app="tests.webhooks.worker_app",
        concurrency=2,
    )
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    yield from running_receiver()


@pytest.fixture
def webhook_api(webhook_settings: Settings, webhook_worker: ManagedProcess) -> Iterator[ApiHarness]:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    key = issue_key(webhook_settings, tenant)
    with TestClient(create_app(webhook_settings, run_reaper=False)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield ApiHarness(client, webhook_settings, key, tenant)


@pytest.fixture
def token() -> str:
    """A path segment of this test's own on the receiver."""
    return uuid.uuid4().hex[:10]
