"""``tailsynth``: the server launcher and the client for CI pipelines.

Server side: ``serve`` (embedded default: API + all workers), ``api``, ``worker``,
``db upgrade``, ``keys create|list|revoke``. Client side (talks HTTP; ``--url`` and
``--api-key`` or ``TAILSYNTH_URL`` / ``TAILSYNTH_API_KEY``): ``datasets upload``,
``datasets demo``, ``jobs wait``. Client verbs exit non-zero when a job fails.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from services.demo import DemoPlan
from shared.settings import Settings

EMBEDDED_QUEUES = ("ingest", "generate", "filter", "train")


def _settings(data_dir: str | None) -> Settings:
    if data_dir is not None:
        os.environ["TAILSYNTH_DATA_DIR"] = str(Path(data_dir).resolve())
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level")
def main(verbose: bool) -> None:
    """tailsynth: fill the long tail of medical image datasets with curated synthetic images."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --------------------------------------------------------------------------- server side


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--data-dir", default=None, help="embedded data directory (SQLite lives here)")
def db_upgrade(data_dir: str | None) -> None:
    """Apply all migrations (idempotent)."""
    from shared.db import make_engine
    from shared.migrate import upgrade

    engine = make_engine(_settings(data_dir))
    upgrade(engine)
    click.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--name", required=True, help="what the key is for, e.g. 'ci'")
@click.option("--tenant", default="default", show_default=True)
@click.option("--data-dir", default=None)
def keys_create(name: str, tenant: str, data_dir: str | None) -> None:
    """Create an API key and print it (it is shown once; only its hash is stored)."""
    from services.api.auth import create_api_key
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.migrate import upgrade

    engine = make_engine(_settings(data_dir))
    upgrade(engine)
    with session_scope(make_session_factory(engine)) as session:
        issued = create_api_key(session, name=name, tenant_name=tenant)
    click.echo(issued.key)


@keys.command("list")
@click.option("--tenant", default=None, help="only this tenant's keys")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--data-dir", default=None)
def keys_list(tenant: str | None, as_json: bool, data_dir: str | None) -> None:
    """List API keys: id, prefix, name, tenant, created, last used (to the minute), revoked.
    Keys themselves are never shown again; only their hashes are stored."""
    from services.api.auth import describe_key, list_api_keys
    from shared.db import make_engine, make_session_factory
    from shared.migrate import upgrade

    engine = make_engine(_settings(data_dir))
    upgrade(engine)
    with make_session_factory(engine)() as session:
        rows = [describe_key(record) for record in list_api_keys(session, tenant_name=tenant)]
    if as_json:
        _echo_json(rows)
        return
    columns = ("id", "prefix", "name", "tenant", "created_at", "last_used_at", "revoked_at")
    widths = {c: max([len(c), *(len(str(row[c] or "-")) for row in rows)]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c] or "-").ljust(widths[c]) for c in columns).rstrip())


@keys.command("revoke")
@click.argument("key")
@click.option("--data-dir", default=None)
def keys_revoke(key: str, data_dir: str | None) -> None:
    """Revoke KEY (its id, its prefix 'ts_1a2b3c4d_' or the key itself): requests with it
    are refused (401) from the next one on."""
    from services.api.auth import revoke_api_key
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.errors import TailsynthError
    from shared.migrate import upgrade

    engine = make_engine(_settings(data_dir))
    upgrade(engine)
    try:
        with session_scope(make_session_factory(engine)) as session:
            record, changed = revoke_api_key(session, key)
            key_id, name = record.id, record.name
    except TailsynthError as exc:
        raise click.ClickException(exc.detail) from exc
    click.echo(f"{'revoked' if changed else 'already revoked'}: {key_id} ({name})")


@main.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--data-dir", default=None)
def api(host: str | None, port: int | None, data_dir: str | None) -> None:
    """Run the API gateway alone (workers run elsewhere)."""
    import uvicorn

    from services.api.app import create_app

    settings = _settings(data_dir)
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
    )


def _worker_command(queues: str, concurrency: int, name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "shared.worker", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--pool", "prefork",
        "--hostname", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
        "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


@main.command()
@click.option("--queues", default=",".join(EMBEDDED_QUEUES), show_default=True)
@click.option("--concurrency", type=int, default=1, show_default=True)
@click.option("--name", default=None, help="node name before '@host' (default: the queues)")
@click.option("--data-dir", default=None)
def worker(queues: str, concurrency: int, name: str | None, data_dir: str | None) -> None:
    """Run a Celery worker for some queues (e.g. ``--queues generate`` on a GPU host)."""
    _settings(data_dir)
    node = name or queues.replace(",", "-")
    os.execv(sys.executable, _worker_command(queues, concurrency, node))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--data-dir", default=".tailsynth", show_default=True)
def serve(host: str, port: int, data_dir: str) -> None:
    """Embedded default: the API and one real Celery worker process per queue, on SQLite,
    a local object directory and a filesystem broker. Nothing to install."""
    import uvicorn

    from services.api.app import create_app
    from shared.db import make_engine
    from shared.migrate import upgrade

    settings = _settings(data_dir)
    upgrade(make_engine(settings))
    env = {**os.environ, **settings.environ()}
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    workers = []
    for queue in EMBEDDED_QUEUES:
        log_file = (logs / f"worker-{queue}.log").open("ab")
        workers.append(
            subprocess.Popen(
                _worker_command(queue, 1, queue),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches its pool too
            )
        )
    click.echo(
        f"tailsynth: API on http://{host}:{port}, workers for {', '.join(EMBEDDED_QUEUES)} "
        f"(logs in {logs}), data in {settings.data_dir.resolve()}",
        err=True,
    )
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; with the default
    # handler that would end this process before the workers below are stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in workers:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


_DEMO = DemoPlan()  # the demo's defaults live in one place


@main.command()
@click.option("--data-dir", default=".tailsynth-demo", show_default=True)
@click.option("--total", type=int, default=_DEMO.total, show_default=True, help="demo images")
@click.option("--image-size", type=int, default=_DEMO.image_size, show_default=True)
@click.option("--train-steps", type=int, default=_DEMO.train_steps, show_default=True)
@click.option(
    "--per-class",
    type=int,
    default=_DEMO.per_class,
    show_default=True,
    help="images asked per rare class",
)
@click.option("--sampling-steps", type=int, default=_DEMO.sampling_steps, show_default=True)
@click.option("--classifier-epochs", type=int, default=_DEMO.classifier_epochs, show_default=True)
@click.option(
    "--classifier-min-steps",
    type=int,
    default=_DEMO.classifier_min_steps,
    show_default=True,
    help="floor on the filter's and the probe's classifier optimizer steps",
)
@click.option("--experiment-epochs", type=int, default=_DEMO.experiment_epochs, show_default=True)
@click.option(
    "--experiment-min-steps", type=int, default=_DEMO.experiment_min_steps, show_default=True
)
@click.option("--experiment-seeds", type=int, default=_DEMO.experiment_seeds, show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="delete --data-dir even if it is not empty and no earlier demo made it",
)
def demo(
    data_dir: str,
    total: int,
    image_size: int,
    train_steps: int,
    per_class: int,
    sampling_steps: int,
    classifier_epochs: int,
    classifier_min_steps: int,
    experiment_epochs: int,
    experiment_min_steps: int,
    experiment_seeds: int,
    port: int,
    force: bool,
) -> None:
    """The main job on the embedded default, end to end over HTTP: start ``serve``,
    ingest the long-tailed demo dataset, train a generator, synthesize the rare classes,
    filter the candidates, download the curated set, and measure with an experiment whether
    the curated images help a classifier (verdicts and an HTML report). The data directory
    is deleted first: one that is not empty and that no earlier demo made is refused
    unless --force."""
    from services.client import ApiError, JobFailed
    from services.demo import run_demo

    plan = DemoPlan(
        total=total,
        image_size=image_size,
        train_steps=train_steps,
        per_class=per_class,
        sampling_steps=sampling_steps,
        classifier_epochs=classifier_epochs,
        classifier_min_steps=classifier_min_steps,
        experiment_epochs=experiment_epochs,
        experiment_min_steps=experiment_min_steps,
        experiment_seeds=experiment_seeds,
    )
    # A plain `kill` of the demo unwinds it, so its embedded server is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        run_demo(Path(data_dir), plan, port=port, force=force)
    except (ApiError, JobFailed, TimeoutError) as exc:
        raise click.ClickException(f"demo stopped: {exc}") from exc


# --------------------------------------------------------------------------- client side


def _client(ctx: click.Context) -> Any:
    from services.client import TailsynthClient

    return TailsynthClient(ctx.obj["url"], ctx.obj["api_key"])


def _client_options(func: Any) -> Any:
    func = click.option("--api-key", envvar="TAILSYNTH_API_KEY", default=None)(func)
    func = click.option("--url", envvar="TAILSYNTH_URL", default="http://127.0.0.1:8000")(func)
    return func


def _wait_and_report(client: Any, job_id: str, timeout: float) -> dict[str, Any]:
    from services.client import JobFailed

    def show(job: dict[str, Any]) -> None:
        p = job["progress"]
        click.echo(
            f"  {job['state']:<9} {job['stage']:<12} {p['done']}/{p['total']} ({p['percent']}%)",
            err=True,
        )

    try:
        return client.wait(job_id, timeout=timeout, on_progress=show)  # type: ignore[no-any-return]
    except JobFailed as exc:
        raise click.ClickException(str(exc)) from exc
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from exc


def _api_call(func: Any) -> Any:
    """Turn :class:`ApiError` into a clean non-zero exit with the server's message."""
    import functools

    from services.client import ApiError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@main.group()
@_client_options
@click.pass_context
def datasets(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Datasets: upload an archive, ask for the demo set, make demo files locally."""
    ctx.obj = {"url": url, "api_key": api_key}


@datasets.command("upload")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--format", "fmt", type=click.Choice(["isic2019", "ham10000", "imagefolder", "csv"]))
@click.option("--classes", default=None, help="comma-separated closed list of labels")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=3600)
@click.pass_context
@_api_call
def datasets_upload(
    ctx: click.Context,
    archive: Path,
    name: str,
    fmt: str | None,
    classes: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Upload a zip or tar.gz dataset and (by default) wait for its ingest."""
    with _client(ctx) as client:
        created = client.upload_dataset(
            archive, name=name, format=fmt, classes=classes.split(",") if classes else None
        )
        if wait:
            _wait_and_report(client, created["job_id"], timeout)
        _echo_json(client.dataset(created["dataset_id"]))


@datasets.command("demo")
@click.option("--name", default="demo")
@click.option("--total", type=int, default=2400, show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", type=float, default=3600)
@click.pass_context
@_api_call
def datasets_demo(
    ctx: click.Context, name: str, total: int, image_size: int, seed: int, timeout: float
) -> None:
    """Ask the server to build and ingest the built-in demo dataset; wait for it."""
    with _client(ctx) as client:
        created = client.create_demo_dataset(
            name=name, total=total, image_size=image_size, seed=seed
        )
        _wait_and_report(client, created["job_id"], timeout)
        _echo_json(client.dataset(created["dataset_id"]))


@datasets.command("make-demo")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--total", type=int, default=2400, show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def datasets_make_demo(out_dir: Path, total: int, image_size: int, seed: int) -> None:
    """Write the demo dataset (images, masks, manifest.csv) to a local directory."""
    from shared.demo_dataset import write_demo_dataset

    manifest = write_demo_dataset(out_dir, total=total, image_size=image_size, seed=seed)
    click.echo(str(manifest))


@main.group()
@_client_options
@click.pass_context
def jobs(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Jobs: wait for one, cancel one."""
    ctx.obj = {"url": url, "api_key": api_key}


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=3600)
@click.pass_context
@_api_call
def jobs_wait(ctx: click.Context, job_id: str, timeout: float) -> None:
    """Wait for a job; exit 1 if it failed or was canceled."""
    with _client(ctx) as client:
        _echo_json(_wait_and_report(client, job_id, timeout))


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_context
@_api_call
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job; finished work is kept."""
    with _client(ctx) as client:
        _echo_json(client.cancel(job_id))


if __name__ == "__main__":
    main()
