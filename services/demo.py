"""``tailsynth demo``: the whole service on the embedded default, driven over HTTP.

It starts ``tailsynth serve`` as a child process (API + one Celery worker process per
queue), issues an API key, and runs the campaign a user would run, printing each
result. Everything lands in ``data_dir``; run it again to start over.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx

from services.client import TailsynthClient


@contextmanager
def embedded_server(data_dir: Path, port: int) -> Iterator[tuple[str, str]]:
    """Start ``tailsynth serve`` on ``port``; yield (url, api key); stop it afterwards."""
    cli = [sys.executable, "-m", "services.cli"]
    key = subprocess.run(
        [*cli, "keys", "create", "--name", "demo", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = (data_dir / "serve.log").open("ab")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise click.ClickException(f"tailsynth serve exited; see {data_dir / 'serve.log'}")
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise click.ClickException("tailsynth serve did not become healthy in 120 s")
            time.sleep(0.5)
        yield url, key
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _progress(job: dict[str, Any]) -> None:
    p = job["progress"]
    click.echo(
        f"\r  {job['kind']:<10} {job['stage']:<14} {p['done']:>6}/{p['total']:<6} "
        f"{p['percent']:5.1f}%",
        nl=False,
        err=True,
    )


def _table(title: str, rows: dict[str, Any]) -> None:
    click.echo(f"\n{title}")
    for name, value in rows.items():
        click.echo(f"  {name:<8} {value}")


def run_demo(data_dir: Path, *, total: int, image_size: int, port: int) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    with embedded_server(data_dir, port) as (url, key), TailsynthClient(url, key) as client:
        click.echo(f"tailsynth demo: embedded server at {url}, data in {data_dir.resolve()}")
        click.echo(f"1. building and ingesting the demo dataset ({total} images, {image_size} px)")
        created = client.create_demo_dataset(
            name="demo", total=total, image_size=image_size, seed=0
        )
        client.wait(created["job_id"], on_progress=_progress)
        dataset = client.dataset(created["dataset_id"])
        _table("class counts (long-tailed, ISIC 2019 proportions):", dataset["class_counts"])
        click.echo(f"  imbalance ratio {dataset['imbalance_ratio']:.1f}")
        _table(
            "split sizes (grouped by patient, seed-fixed):",
            {split: sum(c.values()) for split, c in dataset["split_counts"].items()},
        )
        click.echo(
            f"\ndataset {dataset['id']} is ready; the API is documented at {url}/docs while serving"
        )
