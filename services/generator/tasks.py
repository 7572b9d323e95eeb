"""Celery tasks of the ``generate`` queue: thin, idempotent, by job id.

The generator or curated set a job makes ends with the job itself
(:func:`shared.jobs.end_job`), so the work runs as it is.
"""

from __future__ import annotations

from celery import shared_task

from services.generator.service import (
    generate_candidates_job,
    register_pretrained_job,
    train_generator_job,
)
from shared.jobs import run_job
from shared.runtime import get_runtime


@shared_task(name="tailsynth.train_generator")
def train_generator(job_id: str) -> None:
    runtime = get_runtime()
    run_job(runtime.sessions, job_id, lambda ctx: train_generator_job(ctx, runtime))


@shared_task(name="tailsynth.register_generator")
def register_generator(job_id: str) -> None:
    runtime = get_runtime()
    run_job(runtime.sessions, job_id, lambda ctx: register_pretrained_job(ctx, runtime))


@shared_task(name="tailsynth.synthesize")
def synthesize(job_id: str) -> None:
    """First stage of a synthesis job; it hands the job to the filter queue when done."""
    runtime = get_runtime()
    run_job(
        runtime.sessions,
        job_id,
        lambda ctx: generate_candidates_job(ctx, runtime),
        celery=runtime.celery,
    )
