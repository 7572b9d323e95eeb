"""``tailsynth``: the server launcher and the client for CI pipelines.

Server side: ``serve`` (embedded default: API + all workers), ``api``, ``worker``,
``db upgrade``, ``keys create|list|revoke`` (local, on the server's database). Client
side, on :mod:`services.client` (``--url`` / ``--api-key`` anywhere on the line, or
``TAILSYNTH_URL`` / ``TAILSYNTH_API_KEY``): ``datasets upload|list|show|demo``,
``generators train|register|show``, ``synthesize``, ``jobs list|show|wait|cancel``,
``curated show|download|manifest``, ``experiments run|list|show|report``. Read verbs
take ``--json``; exit codes are documented in ``EXIT_CODES_EPILOG`` (``--help``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from services.demo import DemoPlan
from shared.settings import Settings

if TYPE_CHECKING:
    from services.api.schemas import (
        CuratedSetRead,
        DatasetRead,
        ExperimentRead,
        GeneratorRead,
        JobRead,
    )
    from services.client import TailsynthClient

EMBEDDED_QUEUES = ("ingest", "generate", "filter", "train", "webhooks")


def _settings(data_dir: str | None) -> Settings:
    if data_dir is not None:
        os.environ["TAILSYNTH_DATA_DIR"] = str(Path(data_dir).resolve())
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# ------------------------------------------------------------- connection and exit codes
#
# Every client verb takes --url / --api-key / --max-retries anywhere on the command line
# (before the group, after it, or after the verb); the last one given wins, and unset
# ones come from TAILSYNTH_URL / TAILSYNTH_API_KEY / TAILSYNTH_MAX_RETRIES.

_CONNECTION = "tailsynth.connection"


def _remember(name: str) -> Any:
    def callback(ctx: click.Context, _: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.find_root().meta.setdefault(_CONNECTION, {})[name] = value

    return callback


def _connection_options(func: Any) -> Any:
    """--url, --api-key and --max-retries on a group or a verb (not passed to it)."""
    func = click.option(
        "--max-retries",
        type=click.IntRange(0, 100),
        default=None,
        expose_value=False,
        callback=_remember("max_retries"),
        help="retries on connection errors and 429/502/503/504 [env TAILSYNTH_MAX_RETRIES; 5]",
    )(func)
    func = click.option(
        "--api-key",
        default=None,
        expose_value=False,
        callback=_remember("api_key"),
        help="API key [env TAILSYNTH_API_KEY]",
    )(func)
    func = click.option(
        "--url",
        default=None,
        expose_value=False,
        callback=_remember("url"),
        help="server URL [env TAILSYNTH_URL; http://127.0.0.1:8000]",
    )(func)
    return func


class ExitCode(IntEnum):
    """What a client verb's exit status means (also in ``tailsynth --help``)."""

    OK = 0
    ERROR = 1  # anything else, e.g. a local file that cannot be read
    USAGE = 2  # click: a wrong flag or argument
    JOB_FAILED = 3
    JOB_CANCELED = 4
    TIMEOUT = 5
    AUTH = 6
    NOT_FOUND = 7
    INVALID = 8
    UNREACHABLE = 9
    CONFLICT = 10
    SERVER_ERROR = 11
    NO_GAIN = 12
    VERIFY_FAILED = 13


EXIT_CODES_EPILOG = """\b
Exit codes of the client verbs:
   0  success (a job that ended partial too; its result says what fell short)
   1  other error
   2  usage error (a wrong flag or argument)
   3  job failed (the server's reason is printed)
   4  job canceled
   5  timed out waiting (--timeout; the job goes on)
   6  auth error (no key, a wrong or revoked key)
   7  not found (an unknown id, or another tenant's)
   8  invalid request (the field at fault is named)
   9  server unreachable (after the retry budget)
  10  conflict (not ready yet, or already finished)
  11  server error (5xx after the retry budget)
  12  no gain: experiments run|show --require-gain found no better synthetic arm
  13  download failed verification
"""


def _fail(message: str, code: ExitCode) -> NoReturn:
    """End the command: ``Error: message`` on stderr and a documented exit code."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(int(code))


def _exit_code_for(exc: Exception) -> ExitCode:
    from services.client import errors

    kinds: list[tuple[type[Exception], ExitCode]] = [
        (errors.JobCanceled, ExitCode.JOB_CANCELED),
        (errors.JobFailed, ExitCode.JOB_FAILED),
        (errors.WaitTimeout, ExitCode.TIMEOUT),
        (errors.AuthError, ExitCode.AUTH),
        (errors.NotFound, ExitCode.NOT_FOUND),
        (errors.InvalidRequest, ExitCode.INVALID),
        (errors.ServerUnreachable, ExitCode.UNREACHABLE),
        (errors.Conflict, ExitCode.CONFLICT),
        (errors.ServerError, ExitCode.SERVER_ERROR),
        (errors.RateLimited, ExitCode.SERVER_ERROR),
        (errors.DownloadError, ExitCode.VERIFY_FAILED),
    ]
    return next((code for kind, code in kinds if isinstance(exc, kind)), ExitCode.ERROR)


def _message(exc: Exception) -> str:
    from services.client import ApiError

    if isinstance(exc, ApiError) and len(exc.errors) > 1:
        fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in exc.errors)
        return f"HTTP {exc.status} {exc.title}: {fields}"
    return str(exc)


@click.group(epilog=EXIT_CODES_EPILOG)
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level")
@_connection_options
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
    from services.client import TailsynthClientError
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
    except TailsynthClientError as exc:
        _fail(f"demo stopped: {_message(exc)}", _exit_code_for(exc))


# --------------------------------------------------------------------------- client side


def _client(ctx: click.Context) -> TailsynthClient:
    from services.client import RetryPolicy, TailsynthClient

    given = ctx.find_root().meta.get(_CONNECTION, {})
    retries = given.get("max_retries")
    if retries is None:
        try:
            retries = int(os.environ.get("TAILSYNTH_MAX_RETRIES", "5"))
        except ValueError:
            _fail("TAILSYNTH_MAX_RETRIES must be a whole number", ExitCode.USAGE)
    return TailsynthClient(
        given.get("url"), given.get("api_key"), retry=RetryPolicy(max_retries=retries)
    )


def _client_call(func: Any) -> Any:
    """Turn the client's errors into a message on stderr and their exit code."""
    import functools

    from services.client import TailsynthClientError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TailsynthClientError as exc:
            _fail(_message(exc), _exit_code_for(exc))
        except OSError as exc:  # a local file: the archive, --out, --config
            _fail(str(exc), ExitCode.ERROR)

    return _connection_options(wrapper)


def _echo_model(value: Any, as_json: bool, human: Any = None) -> None:
    """A result on stdout: JSON with --json (or when there is no human form)."""
    from pydantic import BaseModel

    if as_json or human is None:
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        _echo_json(data)
    else:
        human(value)


def _json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="print JSON on stdout")(func)


def _quiet_option(func: Any) -> Any:
    return click.option(
        "-q", "--quiet", is_flag=True, help="print only the new id (for shell scripts)"
    )(func)


def _idempotency_option(func: Any) -> Any:
    """--idempotency-key: the same key (e.g. the CI run's id and a step name) makes a rerun
    of the step answer the job the first run made instead of starting another."""

    def remember(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
        ctx.meta["tailsynth.idempotency_key"] = value

    return click.option(
        "--idempotency-key",
        default=None,
        expose_value=False,
        callback=remember,
        help="reuse the job a request with this key and the same body made [default: a new key]",
    )(func)


def _idempotency_key(ctx: click.Context) -> str | None:
    value = ctx.meta.get("tailsynth.idempotency_key")
    return str(value) if value else None


def _timeout_option(func: Any) -> Any:
    return click.option(
        "--timeout",
        type=float,
        default=None,
        help="give up waiting after this many seconds (exit 5; the job goes on) "
        "[default: wait as long as the job runs]",
    )(func)


def _wait_for(client: TailsynthClient, job_id: Any, timeout: float | None) -> JobRead:
    """Wait with progress on stderr; a partial job is reported and counts as success."""
    from services.client.progress import JobProgress

    with JobProgress() as progress:
        job = client.jobs.wait(job_id, timeout=timeout, on_progress=progress)
    if job.state == "partial":
        click.echo(f"note: job {job.id} ended partial: {job.error or job.result}", err=True)
    return job


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    widths = {c: max([len(c), *(len(str(row.get(c) or "-")) for row in rows)]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row.get(c) or "-").ljust(widths[c]) for c in columns).rstrip())


def _pairs(title: str, pairs: dict[str, Any]) -> None:
    click.echo(title)
    width = max([1, *(len(str(k)) for k in pairs)])
    for key, value in pairs.items():
        click.echo(f"  {key:<{width}}  {value}")


def _show_dataset(dataset: DatasetRead) -> None:
    ratio = "-" if dataset.imbalance_ratio is None else f"{dataset.imbalance_ratio:.1f}"
    click.echo(
        f"dataset {dataset.id} {dataset.name!r}: {dataset.state}, format {dataset.format}, "
        f"imbalance ratio {ratio}"
    )
    if dataset.class_counts:
        _pairs("class counts:", dataset.class_counts)
    rejected = dataset.ingest_report.get("rejected")
    if rejected:
        click.echo(f"ingest rejected: {rejected}")


def _show_generator(generator: GeneratorRead) -> None:
    sha = (generator.checkpoint_sha256 or "-")[:16]
    click.echo(
        f"generator {generator.id}: {generator.kind}, {generator.state}, dataset "
        f"{generator.dataset_id}, checkpoint sha256 {sha}"
    )
    if generator.loss_curve:
        first, last = generator.loss_curve[0], generator.loss_curve[-1]
        click.echo(f"loss {first[1]:.4f} (step {first[0]}) -> {last[1]:.4f} (step {last[0]})")


def _show_job(job: JobRead) -> None:
    p = job.progress
    line = f"job {job.id}: {job.kind} {job.state} {job.stage} {p.done}/{p.total} ({p.percent}%)"
    click.echo(line + (f" - {job.error}" if job.error else ""))


def _show_curated(curated: CuratedSetRead) -> None:
    click.echo(f"curated set {curated.id}: {curated.state}, dataset {curated.dataset_id}")
    if curated.summary:
        _pairs(
            "per class (generated -> kept; rejected by reason):",
            {
                name: f"{entry.get('generated', 0)} -> {entry.get('kept', 0)}; "
                f"{entry.get('rejected', {})}"
                for name, entry in curated.summary.items()
                if isinstance(entry, dict)
            },
        )


def _show_experiment(experiment: ExperimentRead) -> None:
    click.echo(f"experiment {experiment.id}: {experiment.state}, dataset {experiment.dataset_id}")
    results = experiment.results
    if results.get("best_baseline"):
        click.echo(f"best non-generative arm: {results['best_baseline']}")
    for line in results.get("verdicts") or []:
        click.echo(f"  {line}")
    if experiment.report_url:
        click.echo(f"report: tailsynth experiments report {experiment.id} --out report.html")


def _load_json_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"--config {path}: {exc}", ExitCode.USAGE)
    if not isinstance(loaded, dict):
        _fail(f"--config {path}: expected a JSON object", ExitCode.USAGE)
    return loaded


def _config_option(func: Any) -> Any:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="JSON file with more request fields (the flags override it)",
    )(func)


# ----------------------------------------------------------------- datasets


@main.group()
@_connection_options
def datasets() -> None:
    """Datasets: upload an archive, ask for the demo set, list, show; make demo files."""


@datasets.command("upload")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--format", "fmt", type=click.Choice(["isic2019", "ham10000", "imagefolder", "csv"]))
@click.option("--classes", default=None, help="comma-separated closed list of labels")
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the ingest")
@_timeout_option
@_idempotency_option
@_json_option
@_quiet_option
@click.pass_context
@_client_call
def datasets_upload(
    ctx: click.Context,
    archive: Path,
    name: str,
    fmt: str | None,
    classes: str | None,
    split_seed: int,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Upload a zip or tar.gz dataset (streamed, with progress) and wait for its ingest."""
    from services.client.progress import ByteProgress

    with _client(ctx) as client:
        with ByteProgress(f"upload {archive.name}") as progress:
            created = client.datasets.upload(
                archive,
                idempotency_key=_idempotency_key(ctx),
                name=name,
                format=fmt,
                classes=classes.split(",") if classes else None,
                split_seed=split_seed,
                on_progress=progress,
            )
        if wait:
            _wait_for(client, created.job_id, timeout)
        dataset = client.datasets.get(created.dataset_id)
    if quiet:
        click.echo(str(dataset.id))
    else:
        _echo_model(dataset, as_json, _show_dataset)


@datasets.command("demo")
@click.option("--name", default="demo")
@click.option("--total", type=int, default=2400, show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--variant", type=click.Choice(["dermoscopy", "chest_xray"]), default=None)
@click.option("--imbalance", type=float, default=None, help="dermoscopy: head/rarest ratio")
@click.option("--min-per-class", type=int, default=None)
@click.option("--wait/--no-wait", default=True, show_default=True)
@_timeout_option
@_idempotency_option
@_json_option
@_quiet_option
@click.pass_context
@_client_call
def datasets_demo(
    ctx: click.Context,
    name: str,
    total: int,
    image_size: int,
    seed: int,
    variant: str | None,
    imbalance: float | None,
    min_per_class: int | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Ask the server to build and ingest the built-in long-tailed demo dataset."""
    optional = {"variant": variant, "imbalance": imbalance, "min_per_class": min_per_class}
    with _client(ctx) as client:
        body = {"name": name, "total": total, "image_size": image_size, "seed": seed}
        created = client.datasets.create_demo(
            body | {k: v for k, v in optional.items() if v is not None},
            idempotency_key=_idempotency_key(ctx),
        )
        if wait:
            _wait_for(client, created.job_id, timeout)
        dataset = client.datasets.get(created.dataset_id)
    if quiet:
        click.echo(str(dataset.id))
    else:
        _echo_model(dataset, as_json, _show_dataset)


@datasets.command("list")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@_json_option
@click.pass_context
@_client_call
def datasets_list(ctx: click.Context, limit: int, offset: int, as_json: bool) -> None:
    """Your datasets, newest first."""
    with _client(ctx) as client:
        page = client.datasets.list(limit=limit, offset=offset)

    def human(_: Any) -> None:
        rows = [
            {**d.model_dump(mode="json"), "images": sum(d.class_counts.values())}
            for d in page.items
        ]
        _table(rows, ("id", "name", "state", "format", "images", "imbalance_ratio"))
        click.echo(f"{len(page.items)} of {page.total}")

    _echo_model(page, as_json, human)


@datasets.command("show")
@click.argument("dataset_id")
@_json_option
@click.pass_context
@_client_call
def datasets_show(ctx: click.Context, dataset_id: str, as_json: bool) -> None:
    """One dataset: state, class counts, imbalance ratio, splits, ingest report."""
    with _client(ctx) as client:
        _echo_model(client.datasets.get(dataset_id), as_json, _show_dataset)


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


# ----------------------------------------------------------------- generators


@main.group()
@_connection_options
def generators() -> None:
    """Generators: train one on a dataset, register pretrained weights, show one."""


def _finish_generator(
    ctx: click.Context,
    body: dict[str, Any],
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    with _client(ctx) as client:
        created = client.generators.create(body, idempotency_key=_idempotency_key(ctx))
        if not wait:
            if quiet:
                click.echo(str(created.generator_id))
            else:
                _echo_model(created, as_json)
            return
        _wait_for(client, created.job_id, timeout)
        generator = client.generators.get(created.generator_id)
    if quiet:
        click.echo(str(generator.id))
    else:
        _echo_model(generator, as_json, _show_generator)


@generators.command("train")
@click.option("--dataset", "dataset_id", required=True)
@click.option("--steps", type=int, default=None, help="training steps (max_train_steps)")
@click.option("--resolution", type=int, default=None, help="square side in px")
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["inpaint", "img2img", "generate"]),
    help="synthesis modes it must serve (repeat; default inpaint)",
)
@click.option("--no-probe", is_flag=True, help="skip the quality probe")
@_config_option
@click.option("--wait/--no-wait", default=True, show_default=True)
@_timeout_option
@_idempotency_option
@_json_option
@_quiet_option
@click.pass_context
@_client_call
def generators_train(
    ctx: click.Context,
    dataset_id: str,
    steps: int | None,
    resolution: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    modes: tuple[str, ...],
    no_probe: bool,
    config_file: Path | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Train a class-conditional inpainting diffusion generator on a dataset."""
    body = _load_json_file(config_file)
    training = dict(body.get("training") or {})
    for key, value in (
        ("max_train_steps", steps),
        ("resolution", resolution),
        ("batch_size", batch_size),
        ("learning_rate", learning_rate),
        ("modes", list(modes) or None),
    ):
        if value is not None:
            training[key] = value
    body |= {"kind": "trained", "dataset_id": dataset_id, "training": training}
    if no_probe:
        body["quality_probe"] = {**(body.get("quality_probe") or {}), "enabled": False}
    _finish_generator(ctx, body, wait, timeout, as_json, quiet)


@generators.command("register")
@click.option("--dataset", "dataset_id", required=True)
@click.option(
    "--source",
    required=True,
    help="diffusers pipeline directory under the server's weights roots, or a model id",
)
@click.option("--modality", default=None, help="prompt templates (default dermoscopy)")
@click.option("--no-probe", is_flag=True, help="skip the quality probe")
@click.option("--wait/--no-wait", default=True, show_default=True)
@_timeout_option
@_idempotency_option
@_json_option
@_quiet_option
@click.pass_context
@_client_call
def generators_register(
    ctx: click.Context,
    dataset_id: str,
    source: str,
    modality: str | None,
    no_probe: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Register pretrained diffusers weights (loaded offline by the server's worker)."""
    body: dict[str, Any] = {"kind": "pretrained", "dataset_id": dataset_id, "source": source}
    if modality:
        body["modality"] = modality
    if no_probe:
        body["quality_probe"] = {"enabled": False}
    _finish_generator(ctx, body, wait, timeout, as_json, quiet)


@generators.command("show")
@click.argument("generator_id")
@_json_option
@click.pass_context
@_client_call
def generators_show(ctx: click.Context, generator_id: str, as_json: bool) -> None:
    """One generator: kind, state, training config, checkpoint sha256, loss curve."""
    with _client(ctx) as client:
        _echo_model(client.generators.get(generator_id), as_json, _show_generator)


# ----------------------------------------------------------------- synthesis


def _parse_counts(values: tuple[str, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not CLASS=N", param_hint="--count")
        try:
            counts[name] = int(number)
        except ValueError as exc:
            raise click.BadParameter(
                f"{value!r}: N must be an integer", param_hint="--count"
            ) from exc
    return counts


@main.command()
@click.option("--dataset", "dataset_id", required=True)
@click.option("--generator", "generator_id", required=True)
@click.option("--count", "count_values", multiple=True, help="CLASS=N, e.g. DF=500 (repeat)")
@click.option("--fill-to-max", is_flag=True, help="fill every class to the head class")
@click.option("--mode", type=click.Choice(["inpaint", "img2img", "generate"]), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--steps", type=int, default=None, help="sampling steps")
@click.option("--guidance", type=float, default=None, help="guidance scale")
@_config_option
@click.option("--wait", is_flag=True, help="wait for the job, then show the curated set")
@_timeout_option
@_idempotency_option
@_json_option
@_quiet_option
@click.pass_context
@_client_call
def synthesize(
    ctx: click.Context,
    dataset_id: str,
    generator_id: str,
    count_values: tuple[str, ...],
    fill_to_max: bool,
    mode: str | None,
    seed: int | None,
    steps: int | None,
    guidance: float | None,
    config_file: Path | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Ask for synthetic images per class (--count DF=500 --count VASC=300, or
    --fill-to-max), OOD-filtered into a curated set. Prints the curated set id."""
    if bool(count_values) == fill_to_max:
        raise click.UsageError("give --count CLASS=N (repeatable) or --fill-to-max, not both")
    body = _load_json_file(config_file)
    body |= {"dataset_id": dataset_id, "generator_id": generator_id}
    if fill_to_max:
        body["target"] = "fill_to_max"
    else:
        body["counts"] = _parse_counts(count_values)
    sampling = dict(body.get("sampling") or {})
    if steps is not None:
        sampling["num_inference_steps"] = steps
    if guidance is not None:
        sampling["guidance_scale"] = guidance
    if sampling:
        body["sampling"] = sampling
    for key, value in (("mode", mode), ("seed", seed)):
        if value is not None:
            body[key] = value
    with _client(ctx) as client:
        created = client.synthesis.create(body, idempotency_key=_idempotency_key(ctx))
        if not wait:
            if quiet:
                click.echo(str(created.curated_set_id))
            else:
                _echo_model(created, as_json)
            return
        _wait_for(client, created.job_id, timeout)
        curated = client.curated_sets.get(created.curated_set_id)
    if quiet:
        click.echo(str(curated.id))
    else:
        _echo_model(curated, as_json, _show_curated)


# ----------------------------------------------------------------- jobs


@main.group()
@_connection_options
def jobs() -> None:
    """Jobs: list, show, wait for one, cancel one."""


@jobs.command("list")
@click.option("--state", default=None, help="queued|running|succeeded|partial|failed|canceled")
@click.option("--kind", default=None, help="e.g. ingest, train_generator, synthesize")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@_json_option
@click.pass_context
@_client_call
def jobs_list(
    ctx: click.Context, state: str | None, kind: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """Your jobs, newest first."""
    with _client(ctx) as client:
        page = client.jobs.list(state=state, kind=kind, limit=limit, offset=offset)

    def human(_: Any) -> None:
        rows = [{**j.model_dump(mode="json"), "percent": j.progress.percent} for j in page.items]
        _table(rows, ("id", "kind", "state", "stage", "percent", "created_at"))
        click.echo(f"{len(page.items)} of {page.total}")

    _echo_model(page, as_json, human)


@jobs.command("show")
@click.argument("job_id")
@_json_option
@click.pass_context
@_client_call
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job: kind, state, stage, progress, error, result ids."""
    with _client(ctx) as client:
        _echo_model(client.jobs.get(job_id), as_json, _show_job)


@jobs.command("wait")
@click.argument("job_id")
@_timeout_option
@_json_option
@click.pass_context
@_client_call
def jobs_wait(ctx: click.Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a job with progress on stderr; exit 3 if it failed, 4 if canceled,
    5 on --timeout."""
    with _client(ctx) as client:
        _echo_model(_wait_for(client, job_id, timeout), as_json, _show_job)


@jobs.command("cancel")
@click.argument("job_id")
@_json_option
@click.pass_context
@_client_call
def jobs_cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a job; finished work is kept."""
    with _client(ctx) as client:
        _echo_model(client.jobs.cancel(job_id), as_json, _show_job)


# ----------------------------------------------------------------- curated sets


@main.group()
@_connection_options
def curated() -> None:
    """Curated sets: show one, download its archive, print its manifest."""


@curated.command("show")
@click.argument("curated_set_id")
@_json_option
@click.pass_context
@_client_call
def curated_show(ctx: click.Context, curated_set_id: str, as_json: bool) -> None:
    """Per class: generated, kept, rejected by reason; the thresholds used."""
    with _client(ctx) as client:
        _echo_model(client.curated_sets.get(curated_set_id), as_json, _show_curated)


@curated.command("download")
@click.argument("curated_set_id")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="zip to write [default: curated-<id>.zip]",
)
@_json_option
@click.pass_context
@_client_call
def curated_download(
    ctx: click.Context, curated_set_id: str, out: Path | None, as_json: bool
) -> None:
    """Download the curated set (ImageFolder zip + manifest.csv), resuming an interrupted
    download (<out>.part), verified against the server's digest or the manifest."""
    from services.client.progress import ByteProgress

    dest = out or Path(f"curated-{curated_set_id}.zip")
    with _client(ctx) as client, ByteProgress(f"download {dest.name}") as progress:
        result = client.curated_sets.download(curated_set_id, dest, on_progress=progress)
    summary = {
        "path": str(result.path),
        "size": result.size,
        "sha256": result.sha256,
        "resumed": result.resumed,
        "verified_by": result.verified_by,
    }
    if as_json:
        _echo_json(summary)
    else:
        click.echo(
            f"{result.path}: {result.size} bytes, sha256 {result.sha256}, verified by "
            f"{', '.join(result.verified_by) or 'nothing the server offered'}"
            + (" (resumed)" if result.resumed else "")
        )


# DESIGN.md names `tailsynth download` among the CI verbs: the same command.
main.add_command(curated_download, name="download")


@curated.command("manifest")
@click.argument("curated_set_id")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@_json_option
@click.pass_context
@_client_call
def curated_manifest(
    ctx: click.Context, curated_set_id: str, fmt: str, out: Path | None, as_json: bool
) -> None:
    """The manifest alone: one row per kept image with provenance and scores (CSV, or
    JSON Lines with --format jsonl; --json prints one JSON array)."""
    with _client(ctx) as client:
        text = client.curated_sets.manifest(
            curated_set_id, format="jsonl" if as_json or fmt == "jsonl" else "csv"
        )
    if as_json:
        text = json.dumps([json.loads(line) for line in text.splitlines() if line], indent=2)
    if out is not None:
        out.write_text(text)
        click.echo(str(out), err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))


# ----------------------------------------------------------------- experiments


@main.group()
@_connection_options
def experiments() -> None:
    """Experiments: does a curated set help a classifier? Run, list, show, report."""


def _default_arms() -> list[Any]:
    """The server's default baseline arms (ExperimentCreate's), which --curated adds to."""
    from services.api.schemas import ExperimentCreate

    return list(ExperimentCreate.model_validate({"dataset_id": uuid.UUID(int=0)}).arms)


def _gain(experiment: ExperimentRead) -> tuple[bool, str]:
    """Whether a synthetic arm beat its reference (its balanced-accuracy interval above
    zero against the best non-generative arm, or ce when there is none), and why."""
    arms = experiment.results.get("arms") or {}
    synthetic = {
        name: arm
        for name, arm in arms.items()
        if (arm.get("spec") or {}).get("kind", "baseline") != "baseline"
    }
    if not synthetic:
        return False, "no curated or adaptive arm to judge"
    better = []
    for name, arm in synthetic.items():
        comparisons = arm.get("comparisons") or {}
        comparison = comparisons.get("vs_best_baseline") or comparisons.get("vs_ce")
        if comparison and comparison.get("better"):
            better.append(f"{name} over {comparison.get('against')}")
    if better:
        return True, "gain: " + ", ".join(better)
    return False, f"no synthetic arm is better ({', '.join(synthetic)})"


def _check_gain(experiment: ExperimentRead) -> None:
    if experiment.state not in ("succeeded", "partial"):
        _fail(f"experiment {experiment.id} is {experiment.state}; no verdict", ExitCode.NO_GAIN)
    gained, why = _gain(experiment)
    if not gained:
        _fail(f"--require-gain: {why}", ExitCode.NO_GAIN)
    click.echo(why, err=True)


@experiments.command("run")
@click.option("--dataset", "dataset_id", required=True)
@click.option(
    "--arm",
    "arms",
    multiple=True,
    help="a baseline (ce, weighted_ce, balanced_sampler, focal, logit_adjusted, "
    "balanced_softmax); repeat. Default: the server's",
)
@click.option(
    "--curated", "curated_ids", multiple=True, help="a curated set id: adds a curated arm"
)
@click.option(
    "--curated-loss", "curated_losses", multiple=True, help="also a curated arm with this loss"
)
@click.option("--backbone", default=None, help="any timm model")
@click.option("--image-size", type=int, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--min-train-steps", type=int, default=None)
@click.option("--folds", type=int, default=None, help="0: the dataset's split; k: k-fold")
@click.option("--seeds", type=int, default=None)
@_config_option
@click.option("--wait/--no-wait", default=True, show_default=True)
@_timeout_option
@click.option(
    "--require-gain",
    is_flag=True,
    help="exit 12 unless a curated arm beats the best non-generative one (95 % interval)",
)
@click.option(
    "--report", type=click.Path(dir_okay=False, path_type=Path), help="write the HTML report"
)
@_idempotency_option
@_json_option
@_quiet_option
@click.pass_context
@_client_call
def experiments_run(
    ctx: click.Context,
    dataset_id: str,
    arms: tuple[str, ...],
    curated_ids: tuple[str, ...],
    curated_losses: tuple[str, ...],
    backbone: str | None,
    image_size: int | None,
    epochs: int | None,
    min_train_steps: int | None,
    folds: int | None,
    seeds: int | None,
    config_file: Path | None,
    wait: bool,
    timeout: float | None,
    require_gain: bool,
    report: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Train and score classifiers: baselines vs real + curated images, on real held-out
    images, with per-class metrics, intervals and verdicts."""
    if require_gain and not wait:
        raise click.UsageError("--require-gain needs the verdict: drop --no-wait")
    body = _load_json_file(config_file)
    body["dataset_id"] = dataset_id
    if arms or curated_ids:
        chosen: list[Any] = list(arms) or list(body.get("arms") or _default_arms())
        if curated_ids:
            chosen.append({"curated_set_ids": list(curated_ids)})
            chosen += [{"curated_set_ids": list(curated_ids), "loss": x} for x in curated_losses]
        body["arms"] = chosen
    for key, value in (
        ("backbone", backbone),
        ("image_size", image_size),
        ("epochs", epochs),
        ("min_train_steps", min_train_steps),
        ("folds", folds),
        ("seeds", seeds),
    ):
        if value is not None:
            body[key] = value
    with _client(ctx) as client:
        created = client.experiments.create(body, idempotency_key=_idempotency_key(ctx))
        if not wait:
            if quiet:
                click.echo(str(created.experiment_id))
            else:
                _echo_model(created, as_json)
            return
        _wait_for(client, created.job_id, timeout)
        experiment = client.experiments.get(created.experiment_id)
        if report is not None and experiment.report_url:
            report.write_text(client.experiments.report(experiment.id), encoding="utf-8")
    if quiet:
        click.echo(str(experiment.id))
    else:
        _echo_model(experiment, as_json, _show_experiment)
    if require_gain:
        _check_gain(experiment)


@experiments.command("list")
@click.option("--state", default=None)
@click.option("--dataset", "dataset_id", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@_json_option
@click.pass_context
@_client_call
def experiments_list(
    ctx: click.Context,
    state: str | None,
    dataset_id: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Your experiments, newest first."""
    with _client(ctx) as client:
        page = client.experiments.list(
            state=state, dataset_id=dataset_id, limit=limit, offset=offset
        )

    def human(_: Any) -> None:
        rows = [e.model_dump(mode="json") for e in page.items]
        _table(rows, ("id", "dataset_id", "state", "created_at"))
        click.echo(f"{len(page.items)} of {page.total}")

    _echo_model(page, as_json, human)


@experiments.command("show")
@click.argument("experiment_id")
@click.option("--require-gain", is_flag=True, help="exit 12 unless a curated arm is better")
@_json_option
@click.pass_context
@_client_call
def experiments_show(
    ctx: click.Context, experiment_id: str, require_gain: bool, as_json: bool
) -> None:
    """Per arm: metrics with 95 % intervals, comparisons and verdicts."""
    with _client(ctx) as client:
        experiment = client.experiments.get(experiment_id)
    _echo_model(experiment, as_json, _show_experiment)
    if require_gain:
        _check_gain(experiment)


@experiments.command("report")
@click.argument("experiment_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_context
@_client_call
def experiments_report(ctx: click.Context, experiment_id: str, out: Path | None) -> None:
    """The self-contained HTML report (to --out, or stdout)."""
    with _client(ctx) as client:
        html = client.experiments.report(experiment_id)
    if out is None:
        click.echo(html, nl=False)
    else:
        out.write_text(html, encoding="utf-8")
        click.echo(str(out), err=True)


if __name__ == "__main__":
    main()
