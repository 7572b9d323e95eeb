"""Celery task of the ``filter`` queue: thin, idempotent, by job id.

The curated set a job fills ends with the job itself (:func:`shared.jobs.end_job`)."""

from __future__ import annotations

from celery import shared_task

from services.ood_filter.service import filter_candidates_job
from shared.jobs import run_job
from shared.runtime import get_runtime


@shared_task(name="tailsynth.filter_candidates")
def filter_candidates(job_id: str) -> None:
    """Second stage of a synthesis job: score, decide, record, fill the curated set (or ask
    the first stage for another round)."""
    runtime = get_runtime()
    # A class left short hands the job back to the generator for a top-up round.
    run_job(
        runtime.sessions,
        job_id,
        lambda ctx: filter_candidates_job(ctx, runtime),
        celery=runtime.celery,
    )
