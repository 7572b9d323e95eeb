"""The job system: rows first, then tasks; claims with a lease; progress, cancel, a reaper.

A job row is committed before its task is sent (:func:`dispatch`). If the process dies
between the two, the row stays with ``dispatched_at`` empty and the reaper sends it later
(:func:`reap`).

A job runs once. A delivery claims its job with one conditional UPDATE (:func:`claim`)
that names the owner, sets a lease and bumps ``attempts``, the fence every later write
of that owner checks. A delivery that finds the job final, held under a live lease, or
moved on to another stage is dropped. The owner renews its lease from a background
thread while the work runs; only a lease that ran out (the worker died or hung), or
whose owner is a process of this host that no longer exists, makes a running job
re-runnable, and the reaper sends it again. Each stage is claimed at most
``max_attempts`` times; then the job fails with its last error. Transient errors
(database, broker or storage connections) are retried inside the task, under the same
claim, with exponential backoff (tenacity).

A job ends in one place, :func:`end_job`, which also ends the row the job was making
(dataset, generator, curated set, experiment) when the job fails or is canceled.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import tenacity
from celery import Celery, current_task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerOperationalError
from minio.error import ServerError as S3ServerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import ColumnElement, CursorResult, Float, Update, case, func, or_, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError
from sqlalchemy.orm import Session, sessionmaker
from urllib3.exceptions import MaxRetryError, ProtocolError
from urllib3.exceptions import TimeoutError as HttpTimeoutError

from shared.celery_app import TASK_QUEUES
from shared.errors import Conflict, TailsynthError
from shared.models import (
    CuratedSet,
    Dataset,
    DatasetState,
    Experiment,
    Generator,
    Job,
    JobState,
    utcnow,
)
from shared.settings import Settings, get_settings
from shared.webhooks import FINAL_EVENTS, JOB_PROGRESS, JOB_STARTED, job_event

log = logging.getLogger(__name__)

#: A work result with ``{PARTIAL: True}`` ends its job ``partial`` instead of
#: ``succeeded``: it finished, but some part of it could not be served (the result says
#: which, e.g. a synthesis class without real training images).
PARTIAL = "partial"

#: Errors of a connection, not of the work: the database, the broker or the object store
#: (minio speaks HTTP through urllib3) was briefly unreachable. Retried inside the task.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseOperationalError,
    DisconnectionError,
    RedisConnectionError,
    RedisTimeoutError,
    BrokerOperationalError,
    MaxRetryError,
    ProtocolError,
    HttpTimeoutError,
    S3ServerError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


# --------------------------------------------------------------------- progress

#: The share of what is left of a job that one stage moves it through. A job does not
#: know how many stages it will have (a synthesis may go back for a top-up round), so
#: each stage, when its count restarts, takes this share of the rest, and the job reaches
#: 100 % only when it ends. Later stages are usually the shorter ones (filtering after
#: generating, the probe after training).
STAGE_SHARE = 0.9


def job_percent(floor: float, done: int, total: int) -> float:
    """Percent of the whole job, in [0, 100]: ``floor`` (where the job was when its
    current stage began) plus :data:`STAGE_SHARE` of the rest times the stage's
    fraction done (``done`` of ``total``; nothing known while ``total`` is 0)."""
    fraction = min(1.0, done / total) if total > 0 else 0.0
    return floor + (100.0 - floor) * STAGE_SHARE * fraction


def _job_percent_column() -> ColumnElement[float]:
    """:func:`job_percent` of a row, in SQL (the values before an UPDATE)."""
    fraction = case(
        (Job.total <= 0, 0.0),
        (Job.done >= Job.total, 1.0),
        else_=sql_cast(Job.done, Float) / Job.total,
    )
    return Job.progress_floor + (100.0 - Job.progress_floor) * STAGE_SHARE * fraction


class JobCanceled(Exception):
    """Raised inside a task when the user asked to cancel; finished work is kept."""


class LeaseLost(JobCanceled):
    """Raised inside a task whose claim another delivery took over after its lease ran
    out: the task stops and writes nothing more to the job."""


@dataclass(frozen=True)
class NextStage:
    """Returned by a task's work to hand the same job to another queue's task.

    A synthesis job generates on the ``generate`` queue (GPU), then filters on the
    ``filter`` queue; the job keeps one id, one progress record and one state.
    """

    task_name: str
    stage: str
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobPolicy:
    """How long a claim lasts, how often a stage may be claimed, and how transient
    errors are retried (seconds throughout)."""

    lease_s: float = 600.0
    max_attempts: int = 3
    transient_tries: int = 5
    transient_backoff_s: float = 1.0
    transient_backoff_max_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JobPolicy:
        return cls(
            lease_s=settings.job_lease_s,
            max_attempts=settings.job_max_attempts,
            transient_tries=settings.job_transient_tries,
            transient_backoff_s=settings.job_transient_backoff_s,
            transient_backoff_max_s=settings.job_transient_backoff_max_s,
        )

    def retrying(self, what: str) -> tenacity.Retrying:
        """Retries of a transient error with exponential backoff and jitter; any other
        error, or the last try's, propagates as it is."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s: transient %s (try %d of %d); retrying in %.1fs",
                what,
                _describe(exc),
                state.attempt_number,
                self.transient_tries,
                state.upcoming_sleep,
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self.transient_tries),
            wait=tenacity.wait_exponential_jitter(
                initial=self.transient_backoff_s,
                max=self.transient_backoff_max_s,
                jitter=self.transient_backoff_s,
            ),
            before_sleep=before_sleep,
            reraise=True,
        )


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    kind: str,
    task_name: str,
    params: dict[str, Any] | None = None,
    total: int = 0,
) -> Job:
    """Add a queued job to ``session`` (the caller commits, then calls :func:`dispatch`)."""
    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        task_name=task_name,
        queue=TASK_QUEUES[task_name],
        params=params or {},
        total=total,
        state=JobState.QUEUED,
        stage="queued",
    )
    session.add(job)
    session.flush()
    return job


def dispatch(celery: Celery, factory: sessionmaker[Session], job_id: uuid.UUID) -> None:
    """Send the task of a committed job and record that the broker took it."""
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.state.is_final:
            return
        celery.send_task(job.task_name, args=[str(job.id)], queue=job.queue)
        job.dispatched_at = utcnow()
        session.commit()


# --------------------------------------------------------------------- ending a job

#: The row each kind of job makes, by the job parameter naming it. When the job fails or
#: is canceled, that row leaves its in-progress state with it (:func:`end_job`).
RESOURCES: dict[str, tuple[type[Any], str]] = {
    "ingest": (Dataset, "dataset_id"),
    "train_generator": (Generator, "generator_id"),
    "register_generator": (Generator, "generator_id"),
    "synthesis": (CuratedSet, "curated_set_id"),
    "experiment": (Experiment, "experiment_id"),
}

#: States of those rows that a failed job must not overwrite: the work was done.
_RESOURCE_DONE = ("ready", "succeeded")


def end_job(
    session: Session,
    job: Job,
    state: JobState,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """End ``job`` in ``state`` and, if it failed or was canceled, the row it was making
    (a dataset leaves ``ingesting``, a generator ``training``, a curated set ``pending``),
    in the caller's transaction. The one place a job becomes final."""
    job.state = state
    job.stage = {JobState.CANCELED: "canceled", JobState.FAILED: "failed"}.get(state, "done")
    job.finished_at = utcnow()
    job.error = error
    job.worker_id = None
    job.lease_until = None
    if result is not None:
        job.result = {**job.result, **result}
        if job.total and state in (JobState.SUCCEEDED, JobState.PARTIAL):
            job.done = job.total
    if state in (JobState.FAILED, JobState.CANCELED):
        _end_resource(session, job)
    job_event(session, job, FINAL_EVENTS[state])


def _end_resource(session: Session, job: Job) -> None:
    binding = RESOURCES.get(job.kind)
    row_id = (job.params or {}).get(binding[1]) if binding else None
    if binding is None or row_id is None:
        return
    model = binding[0]
    statement = update(model).where(model.id == uuid.UUID(str(row_id)))
    if model is Dataset:
        reason = "ingest canceled" if job.state == JobState.CANCELED else job.error
        statement = statement.where(Dataset.state == DatasetState.INGESTING).values(
            state=DatasetState.FAILED, ingest_report={"error": reason or "ingest failed"}
        )
    else:
        statement = statement.where(model.state.not_in(_RESOURCE_DONE)).values(
            state=job.state.value
        )
    session.execute(statement.execution_options(synchronize_session=False))


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel: a job no worker holds (queued, between stages, or its worker gone) ends at
    once with its resource; a running one stops at its next checkpoint. The caller
    commits."""
    session.refresh(job, with_for_update=True)  # a claim racing this one waits, then loses
    if job.state.is_final:
        raise Conflict(f"job {job.id} is already {job.state.value}; nothing to cancel")
    job.cancel_requested = True
    if job.state == JobState.QUEUED or not _lease_live(job, utcnow()):
        end_job(session, job, JobState.CANCELED)
    return job


# --------------------------------------------------------------------- the reaper


def reap(
    celery: Celery, factory: sessionmaker[Session], *, lease_s: float, grace_s: float = 5.0
) -> int:
    """Send jobs a crash left unsent, and re-send running jobs whose lease ran out.

    A queued job that was sent is never re-sent, however long it waits behind other work.
    A job whose lease ran out is re-sent once, and again only if that send is older than
    ``lease_s`` with no claim since (its message was lost). Returns how many tasks were
    sent. Safe to run from several processes at once: a claim takes a job once.
    """
    now = utcnow()
    with factory() as session:
        unsent = select(Job.id).where(
            Job.state.in_((JobState.QUEUED, JobState.RUNNING)),
            Job.dispatched_at.is_(None),
            Job.lease_until.is_(None),
            func.coalesce(Job.heartbeat_at, Job.created_at) < now - timedelta(seconds=grace_s),
        )
        lost = select(Job.id).where(
            Job.state == JobState.RUNNING,
            Job.lease_until < now,
            or_(
                Job.dispatched_at.is_(None),
                Job.dispatched_at < Job.lease_until,
                Job.dispatched_at < now - timedelta(seconds=lease_s),
            ),
        )
        job_ids = list(session.scalars(unsent)) + list(session.scalars(lost))
    for job_id in job_ids:
        log.warning("reaper: (re)sending job %s", job_id)
        dispatch(celery, factory, job_id)
    return len(job_ids)


# --------------------------------------------------------------------- a running job


@dataclass
class JobContext:
    """What a running task uses to report progress and notice a cancel request.

    Each report is its own short transaction, so progress is visible while the task's
    work goes on, and renews the claim's lease. A context made by :func:`run_job`
    carries its claim (``worker_id``, ``attempts``): its writes land only while the job
    is still its own, and once another delivery took the job over :meth:`should_cancel`
    says so and :meth:`check_cancel` raises :class:`LeaseLost`.
    """

    job_id: uuid.UUID
    factory: sessionmaker[Session]
    params: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    cancel_poll_s: float = 0.5
    worker_id: str | None = None
    lease_s: float = 600.0
    _cancel_checked_at: float = field(default=-1e9, repr=False)
    _cancel_requested: bool = field(default=False, repr=False)
    _heartbeat_at: float = field(default=-1e9, repr=False)
    _lease_lost: bool = field(default=False, repr=False)

    def owns(self, job: Job) -> bool:
        """Whether ``job`` is still this context's claim (always, without one)."""
        return self.worker_id is None or (
            job.attempts == self.attempts and job.worker_id == self.worker_id
        )

    def _fenced(self, statement: Update) -> Update:
        statement = statement.where(Job.id == self.job_id)
        if self.worker_id is not None:
            statement = statement.where(
                Job.attempts == self.attempts,
                Job.worker_id == self.worker_id,
                Job.state == JobState.RUNNING,
            )
        return statement.execution_options(synchronize_session=False)

    def _write(self, values: dict[str, Any], event: str | None = None) -> None:
        now = utcnow()
        values = {**values, "heartbeat_at": now}
        if self.worker_id is not None:
            values["lease_until"] = now + timedelta(seconds=self.lease_s)
        with self.factory.begin() as session:
            statement = self._fenced(update(Job).values(**values))
            written = cast(CursorResult[Any], session.execute(statement)).rowcount
            if written and event is not None:
                job_event(session, self.job_id, event)
        if written == 0 and self.worker_id is not None and not self._lease_lost:
            log.warning("job %s: attempt %d lost its claim", self.job_id, self.attempts)
            self._lease_lost = True

    def progress(self, done: int, total: int | None = None, stage: str | None = None) -> None:
        """Report ``done`` of ``total`` units of the current stage. A count that restarts
        (``done`` lower than before, or another ``total``) begins a new stage of the
        job's progress, which continues from where the job was (:func:`job_percent`),
        so the job's percent never goes back."""
        restarts = Job.done > done
        values: dict[str, Any] = {"done": done}
        if total is not None:
            values["total"] = total
            restarts = or_(restarts, Job.total != total)
        if stage is not None:
            values["stage"] = stage
        values["progress_floor"] = case((restarts, _job_percent_column()), else_=Job.progress_floor)
        self._write(values, JOB_PROGRESS)

    def heartbeat(self, *_: object) -> None:
        """Renew the lease without touching progress (at most every ``cancel_poll_s`` x 10
        seconds); usable directly as a ``progress`` callback."""
        now = time.monotonic()
        if now - self._heartbeat_at >= 10 * self.cancel_poll_s:
            self._heartbeat_at = now
            self._write({})

    def renew_lease(self) -> None:
        self._write({})

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost

    def should_cancel(self) -> bool:
        """Whether the user asked to cancel, or the job is no longer this claim's; reads
        the row at most every ``cancel_poll_s``."""
        now = time.monotonic()
        if (
            not (self._cancel_requested or self._lease_lost)
            and now - self._cancel_checked_at >= self.cancel_poll_s
        ):
            self._cancel_checked_at = now
            with self.factory() as session:
                job = session.get(Job, self.job_id)
                if job is not None:
                    self._cancel_requested = bool(job.cancel_requested)
                    self._lease_lost = self._lease_lost or not self.owns(job)
        return self._cancel_requested or self._lease_lost

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise LeaseLost() if self._lease_lost else JobCanceled()


class _LeaseKeeper:
    """Renews a claim's lease every ``every_s`` seconds from a daemon thread, so a long
    step that reports no progress does not look like a dead worker."""

    def __init__(self, ctx: JobContext, every_s: float) -> None:
        self.ctx = ctx
        self.every_s = every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="job-lease", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s) and not self.ctx.lease_lost:
            try:
                self.ctx.renew_lease()
            except Exception:  # the next renewal may get through; the lease has slack
                log.warning("job %s: lease renewal failed", self.ctx.job_id, exc_info=True)

    def __enter__(self) -> _LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _lease_live(job: Job, now: datetime) -> bool:
    """Whether a worker holds ``job``: its lease has not run out, and its owner is not a
    process of this host that is gone (a killed pool child forfeits its lease at once,
    so the redelivered task resumes without waiting the lease out)."""
    if job.lease_until is None or _aware(job.lease_until) <= now:
        return False
    return not _owner_gone(job.worker_id)


def _this_host() -> str:
    """This host's name and, where Linux says it, its pid namespace: containers that share
    a hostname do not share process ids."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}~{namespace.removeprefix('pid:[').removesuffix(']')}"


def _owner_gone(worker_id: str | None) -> bool:
    host, _, rest = (worker_id or "").partition("/")
    pid_text = rest.partition("/")[0]
    if host != _this_host() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False  # another host's process, or this one: only its lease can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed process its parent has not reaped yet is gone too
        stat = Path(f"/proc/{pid_text}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _describe(exc: BaseException | None) -> str:
    """The error's type and the first line of its message, at most 200 characters (a
    database error's later lines carry the statement and its parameters)."""
    if exc is None:
        return "error"
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:200]}"


def new_worker_id() -> str:
    """Who holds a claim: ``host/pid/token``, the token unique to the claim."""
    return f"{_this_host()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def claim(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    *,
    task_name: str | None,
    worker_id: str,
    policy: JobPolicy,
) -> JobContext | None:
    """Take ``job_id`` for one attempt of its current stage, or say why not (None).

    Dropped: an unknown or final job, one whose stage is another task's (``task_name``;
    None skips the check), one held under a live lease. A canceled job ends here with its
    resource; so does one whose stage was claimed ``max_attempts`` times, failing with
    its last error. The claim itself is one conditional UPDATE fenced by ``attempts``:
    of two deliveries racing for a job, one wins and the other is dropped.
    """
    now = utcnow()
    with factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.error("task for unknown job %s dropped", job_id)
            return None
        if job.worker_id == worker_id and job.state == JobState.RUNNING:
            return _context(factory, job, worker_id, policy)  # a retried claim that had landed
        if job.state.is_final:
            log.info("job %s already %s; duplicate delivery dropped", job_id, job.state.value)
            return None
        if task_name is not None and job.task_name != task_name:
            log.info(
                "job %s is at stage %r (%s); a late %s delivery dropped",
                job_id,
                job.stage,
                job.task_name,
                task_name,
            )
            return None
        if _lease_live(job, now):
            log.info(
                "job %s is held by %s until %s; duplicate delivery dropped",
                job_id,
                job.worker_id,
                job.lease_until,
            )
            return None
        if job.cancel_requested:
            end_job(session, job, JobState.CANCELED)
            return None
        error = job.error
        if job.state == JobState.RUNNING and job.worker_id is not None:
            error = (
                f"attempt {job.attempts} on {job.worker_id} ended without a result "
                "(its worker was killed, ran out of memory or hung)"
            )
        if job.stage_attempts >= policy.max_attempts:
            log.error(
                "job %s: stage %r gave up after %d attempts", job_id, job.stage, job.stage_attempts
            )
            end_job(
                session,
                job,
                JobState.FAILED,
                error=f"gave up after {job.stage_attempts} attempts of stage {job.stage!r}; "
                f"last error: {error or 'none recorded'}",
            )
            return None
        seen = job.attempts
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.attempts == seen,
                    Job.state.in_((JobState.QUEUED, JobState.RUNNING)),
                    Job.cancel_requested.is_(False),
                )
                .values(
                    state=JobState.RUNNING,
                    attempts=seen + 1,
                    stage_attempts=Job.stage_attempts + 1,
                    worker_id=worker_id,
                    lease_until=now + timedelta(seconds=policy.lease_s),
                    heartbeat_at=now,
                    started_at=func.coalesce(Job.started_at, now),
                    stage=case((Job.stage == "queued", "starting"), else_=Job.stage),
                    error=error,
                )
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        if claimed != 1:
            log.info("job %s was claimed by another delivery first; this one dropped", job_id)
            return None
        first_start = job.started_at is None
        session.refresh(job)
        if first_start:
            job_event(session, job, JOB_STARTED)
        return _context(factory, job, worker_id, policy)


def _context(
    factory: sessionmaker[Session], job: Job, worker_id: str, policy: JobPolicy
) -> JobContext:
    return JobContext(
        job_id=job.id,
        factory=factory,
        params=dict(job.params),
        attempts=job.attempts,
        worker_id=worker_id,
        lease_s=policy.lease_s,
    )


def _current_task_name() -> str | None:
    task = current_task  # a proxy: falsy outside a running task
    return str(task.name) if task else None


def run_job(
    factory: sessionmaker[Session],
    job_id: str,
    work: Callable[[JobContext], dict[str, Any] | NextStage],
    *,
    celery: Celery | None = None,
    policy: JobPolicy | None = None,
    task_name: str | None = None,
) -> None:
    """Claim a job and run ``work`` for it once, moving it through its states.

    ``task_name`` (the running Celery task's by default) is the stage this delivery is
    for. ``work`` must skip what an earlier attempt finished and recorded: it is called
    again, under the same claim, after a transient error. A result with a true
    :data:`PARTIAL` key ends the job ``partial`` rather than ``succeeded``.
    """
    policy = policy or JobPolicy.from_settings(get_settings())
    jid = uuid.UUID(job_id)
    worker_id = new_worker_id()
    ctx = policy.retrying(f"claiming job {job_id}")(
        claim,
        factory,
        jid,
        task_name=task_name or _current_task_name(),
        worker_id=worker_id,
        policy=policy,
    )
    if ctx is None:
        return
    with _LeaseKeeper(ctx, every_s=policy.lease_s / 3):
        try:
            result = policy.retrying(f"job {job_id}")(work, ctx)
        except LeaseLost:
            log.warning(
                "job %s: attempt %d stopped; another delivery holds it", job_id, ctx.attempts
            )
            return
        except JobCanceled:
            _end(ctx, policy, JobState.CANCELED)
            return
        except SoftTimeLimitExceeded:
            limit = getattr(current_task, "soft_time_limit", None)
            _end(
                ctx,
                policy,
                JobState.FAILED,
                error="stopped at the task's time limit"
                + (f" ({limit} s)" if limit else "")
                + "; raise the queue's time limit or ask for less work",
            )
            return
        except TailsynthError as exc:
            _end(ctx, policy, JobState.FAILED, error=exc.detail)
            return
        except Exception as exc:
            if is_transient(exc):
                _give_back(ctx, policy, f"{_describe(exc)} after {policy.transient_tries} tries")
            else:
                log.exception("job %s failed", job_id)
                _end(ctx, policy, JobState.FAILED, error=f"internal error: {type(exc).__name__}")
            raise
    if isinstance(result, NextStage):
        _hand_over(ctx, policy, result, celery)
    else:
        state = JobState.PARTIAL if result.get(PARTIAL) else JobState.SUCCEEDED
        _end(ctx, policy, state, result=result)


def _owned_job(session: Session, ctx: JobContext) -> Job | None:
    job = session.get(Job, ctx.job_id, with_for_update=True)
    if job is None or job.state.is_final or not ctx.owns(job):
        log.warning(
            "job %s: attempt %d no longer holds it; result dropped", ctx.job_id, ctx.attempts
        )
        return None
    return job


def _end(
    ctx: JobContext,
    policy: JobPolicy,
    state: JobState,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    def write() -> None:
        with ctx.factory.begin() as session:
            job = _owned_job(session, ctx)
            if job is not None:
                end_job(session, job, state, error=error, result=result)

    policy.retrying(f"ending job {ctx.job_id}")(write)


def _give_back(ctx: JobContext, policy: JobPolicy, error: str) -> None:
    """A transient error outlasted its retries: end this attempt's lease now, with the
    error, so the reaper re-sends the stage (one attempt of the cap). If the database is
    the one unreachable, the lease runs out by itself."""

    def write() -> None:
        with ctx.factory.begin() as session:
            job = _owned_job(session, ctx)
            if job is not None:
                job.error = error
                job.worker_id = None
                job.lease_until = utcnow()

    try:
        policy.retrying(f"giving back job {ctx.job_id}")(write)
    except Exception:
        log.warning("job %s: could not give the job back; its lease will run out", ctx.job_id)


def _hand_over(ctx: JobContext, policy: JobPolicy, stage: NextStage, celery: Celery | None) -> None:
    if celery is None:
        raise RuntimeError("a task that hands over to another stage needs the Celery app")

    def write() -> bool:
        with ctx.factory.begin() as session:
            job = _owned_job(session, ctx)
            if job is None:
                return False
            job.task_name = stage.task_name
            job.queue = TASK_QUEUES[stage.task_name]
            job.stage = stage.stage
            # The next stage counts from zero; the job's progress continues from here.
            job.progress_floor = job_percent(job.progress_floor, job.done, job.total)
            job.done = job.total = 0
            job.result = {**job.result, **stage.result}
            job.heartbeat_at = utcnow()
            job.stage_attempts = 0
            job.worker_id = None
            job.lease_until = None
            job.dispatched_at = None  # the reaper sends it if the send below is lost
            return True

    if policy.retrying(f"handing over job {ctx.job_id}")(write):
        dispatch(celery, ctx.factory, ctx.job_id)

