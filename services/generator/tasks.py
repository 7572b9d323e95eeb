"""Celery tasks of the ``generate`` queue: thin, idempotent, by job id."""

from __future__ import annotations

import uuid

from celery import shared_task

from services.generator.service import (
    generate_candidates_job,
    register_pretrained_job,
    train_generator_job,
)
from shared.jobs import JobContext, mark_on_failure, run_job
from shared.models import CuratedSet, Generator
from shared.runtime import Runtime, get_runtime


def _guarded(job, runtime: Runtime):  # type: ignore[no-untyped-def]
    """Run a generator job so that its generator row ends "failed"/"canceled" with it."""

    def work(ctx: JobContext):  # type: ignore[no-untyped-def]
        with mark_on_failure(runtime.sessions, Generator, uuid.UUID(ctx.params["generator_id"])):
            return job(ctx, runtime)

    return work


@shared_task(name="tailsynth.train_generator")
def train_generator(job_id: str) -> None:
    runtime = get_runtime()
    run_job(runtime.sessions, job_id, _guarded(train_generator_job, runtime))


@shared_task(name="tailsynth.register_generator")
def register_generator(job_id: str) -> None:
    runtime = get_runtime()
    run_job(runtime.sessions, job_id, _guarded(register_pretrained_job, runtime))


@shared_task(name="tailsynth.synthesize")
def synthesize(job_id: str) -> None:
    runtime = get_runtime()

    def work(ctx: JobContext):  # type: ignore[no-untyped-def]
        with mark_on_failure(runtime.sessions, CuratedSet, uuid.UUID(ctx.params["curated_set_id"])):
            return generate_candidates_job(ctx, runtime)

    run_job(runtime.sessions, job_id, work, celery=runtime.celery)
