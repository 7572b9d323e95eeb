"""A live ``tailsynth api`` for the docs tests: the API process alone on SQLite in a
temporary data directory (no workers: the tests read pages, schemas and fresh rows)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.fixtures.services import ManagedProcess, free_port, start_process

CLI = [sys.executable, "-m", "services.cli"]


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    key = subprocess.run(
        [*CLI, "keys", "create", "--name", "docs", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def answers(_: ManagedProcess) -> bool:
        try:
            return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    api = start_process(
        [*CLI, "api", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)],
        data_dir / "api.log",
        env,
        answers,
        timeout=120,
    )
    try:
        yield LiveApi(url, key)
    finally:
        api.stop()
