"""End to end over HTTP against ``tailsynth serve`` (embedded: SQLite, filesystem broker,
local objects, one real Celery worker process per queue), driven by the CLI as CI would."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.fixtures.archives import build, samples
from tests.fixtures.cli_server import CLI, cli_env, create_key, start_cli_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    data_dir = tmp_path_factory.mktemp("serve")
    key = create_key(cli_env(), "e2e", "--data-dir", str(data_dir))
    serve, url = start_cli_server("serve", data_dir, cli_env())
    try:
        yield url, key, data_dir
    finally:
        serve.stop()  # stops its workers too (test_stopping_serve_stops_its_workers...)


def test_stopping_serve_stops_its_workers_and_their_pools(tmp_path: Path) -> None:
    serve, _ = start_cli_server("serve", tmp_path, cli_env())
    try:
        spawned = psutil.Process(serve.process.pid).children(recursive=True)
        assert len([p for p in spawned if "celery" in " ".join(p.cmdline())]) >= 4
    finally:
        serve.stop(timeout=60)
    _, alive = psutil.wait_procs(spawned, timeout=30)
    assert serve.process.returncode == 128 + 15  # exited through its own shutdown path
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


def _cli(url: str, key: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAILSYNTH_URL": url, "TAILSYNTH_API_KEY": key}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_demo_dataset_over_http_ends_ready(server: tuple[str, str, Path]) -> None:
    url, key, _ = server
    done = _cli(url, key, "datasets", "demo", "--total", "120", "--image-size", "32", "--json")
    assert done.returncode == 0, done.stderr
    dataset = json.loads(done.stdout)
    assert dataset["state"] == "ready" and sum(dataset["class_counts"].values()) == 120
    assert len(dataset["class_counts"]) == 8 and dataset["imbalance_ratio"] > 1


def test_upload_with_the_cli_and_wait(server: tuple[str, str, Path], tmp_path: Path) -> None:
    url, key, _ = server
    archive = build("isic2019", tmp_path, samples(total=48, image_size=24, seed=2), tar=True)
    done = _cli(url, key, "datasets", "upload", str(archive.path), "--name", "isic", "--json")
    assert done.returncode == 0, done.stderr
    dataset = json.loads(done.stdout)
    assert dataset["format"] == "isic2019" and dataset["class_counts"] == archive.expected_counts


def test_cli_exits_non_zero_on_bad_input_and_failed_jobs(
    server: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, key, _ = server
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not an archive")
    refused = _cli(url, key, "datasets", "upload", str(bad), "--name", "bad")
    assert refused.returncode != 0 and "HTTP 422" in refused.stderr
    queued = httpx.post(
        f"{url}/v1/datasets/demo",
        json={"total": 40000, "image_size": 256},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    canceled = httpx.post(
        f"{url}/v1/jobs/{queued['job_id']}/cancel", headers={"Authorization": f"Bearer {key}"}
    )
    assert canceled.status_code == 202
    waited = _cli(url, key, "jobs", "wait", queued["job_id"], "--timeout", "120")
    assert waited.returncode != 0 and "canceled" in waited.stderr
    unauthorized = _cli(url, "ts_wrong_key", "jobs", "wait", queued["job_id"])
    assert unauthorized.returncode != 0 and "HTTP 401" in unauthorized.stderr
