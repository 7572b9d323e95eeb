"""The typed client's ``webhooks`` group against the embedded API (SQLite, no worker):
every ``/v1/webhooks`` route, answers parsed into the API's own schemas, and a refused
target raised as :class:`InvalidRequest` naming the field. The async client talks to the
harness's app in process (httpx's ASGI transport; the harness already ran its start-up)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.client import AsyncTailsynthClient, InvalidRequest, NotFound
from tests.conftest import ApiHarness

#: A public address written as one: no DNS lookup needed offline.
PUBLIC_URL = "https://93.184.215.14/hooks/tailsynth"


def _client(api: ApiHarness) -> AsyncTailsynthClient:
    transport = httpx.ASGITransport(app=api.client.app)
    return AsyncTailsynthClient("http://testserver", api.api_key, transport=transport)


def test_every_webhook_route_through_the_typed_client(local_api: ApiHarness) -> None:
    async def routes() -> None:
        async with _client(local_api) as client:
            created = await client.webhooks.create(
                url=PUBLIC_URL, events=["job.succeeded", "job.failed"]
            )
            assert created.secret.startswith("whsec_")
            shown = await client.webhooks.get(created.id)
            assert shown.events == ["job.succeeded", "job.failed"]
            assert [hook.id for hook in (await client.webhooks.list()).items] == [created.id]
            assert (await client.webhooks.deliveries(created.id)).total == 0
            await client.webhooks.delete(created.id)
            with pytest.raises(NotFound):
                await client.webhooks.get(created.id)

    asyncio.run(routes())


def test_a_refused_target_is_an_invalid_request_naming_the_field(local_api: ApiHarness) -> None:
    async def refused() -> InvalidRequest:
        async with _client(local_api) as client:
            with pytest.raises(InvalidRequest) as error:
                await client.webhooks.create(url="http://127.0.0.1:9/hook")
            return error.value

    error = asyncio.run(refused())
    assert error.field == "url" and error.status == 422
