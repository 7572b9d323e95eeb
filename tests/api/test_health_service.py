"""``GET /v1/health`` on the service tier: the real worker process (every queue, Redis)
answers the API's broadcast, so health is ``up`` and counts it on each queue."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import ApiHarness
from tests.fixtures.services import wait_for


def test_health_is_up_when_each_queue_has_a_live_worker(service_api: ApiHarness) -> None:
    anonymous = TestClient(service_api.client.app)
    bodies: list[dict[str, object]] = []

    def up() -> bool:  # the worker may still be subscribing to its broadcasts
        bodies.append(anonymous.get("/v1/health").json())
        return bodies[-1]["status"] == "up"

    wait_for(up, 30, "health up", interval=1)
    body = bodies[-1]
    assert body["detail"] is None
    queues = body["queues"]
    assert isinstance(queues, dict)
    assert set(queues) == {"ingest", "generate", "filter", "train"}
    assert all(queue["status"] == "up" and queue["workers"] >= 1 for queue in queues.values())
