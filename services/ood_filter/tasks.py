"""Celery task of the ``filter`` queue: thin, idempotent, by job id."""

from __future__ import annotations

from celery import shared_task

from services.ood_filter.service import filter_candidates_job
from shared.jobs import guarded, run_job
from shared.models import CuratedSet
from shared.runtime import get_runtime


@shared_task(name="tailsynth.filter_candidates")
def filter_candidates(job_id: str) -> None:
    """Second stage of a synthesis job: score, decide, record, fill the curated set (or ask
    the first stage for another round)."""
    runtime = get_runtime()
    work = guarded(
        runtime.sessions,
        CuratedSet,
        "curated_set_id",
        lambda ctx: filter_candidates_job(ctx, runtime),
    )
    # A class left short hands the job back to the generator for a top-up round.
    run_job(runtime.sessions, job_id, work, celery=runtime.celery)
