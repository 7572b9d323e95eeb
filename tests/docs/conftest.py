"""A live ``tailsynth api`` for the docs tests: the API process alone on SQLite in a
temporary data directory (no workers: the tests read pages, schemas and fresh rows)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.fixtures.cli_server import cli_env, create_key, start_cli_server


@dataclass
class LiveApi:
    url: str
    key: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )


@pytest.fixture(scope="package")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    data_dir = tmp_path_factory.mktemp("docs-api")
    env = cli_env()
    key = create_key(env, "docs", "--data-dir", str(data_dir))
    api, url = start_cli_server("api", data_dir, env, ready_path="/openapi.json")
    try:
        yield LiveApi(url, key)
    finally:
        api.stop()
