"""Celery task of the ``ingest`` queue: thin, idempotent, by job id."""

from __future__ import annotations

from celery import shared_task

from shared.ingest.service import run_ingest
from shared.jobs import run_job
from shared.runtime import get_runtime


@shared_task(name="tailsynth.ingest_dataset")
def ingest_dataset(job_id: str) -> None:
    runtime = get_runtime()
    run_job(
        runtime.sessions,
        job_id,
        lambda ctx: run_ingest(ctx, runtime.sessions, runtime.store, runtime.settings),
    )
