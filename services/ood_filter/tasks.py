"""Celery task of the ``filter`` queue: thin, idempotent, by job id."""

from __future__ import annotations

import uuid

from celery import shared_task

from services.ood_filter.service import filter_candidates_job
from shared.jobs import JobContext, mark_on_failure, run_job
from shared.models import CuratedSet
from shared.runtime import get_runtime


@shared_task(name="tailsynth.filter_candidates")
def filter_candidates(job_id: str) -> None:
    runtime = get_runtime()

    def work(ctx: JobContext):  # type: ignore[no-untyped-def]
        with mark_on_failure(runtime.sessions, CuratedSet, uuid.UUID(ctx.params["curated_set_id"])):
            return filter_candidates_job(ctx, runtime)

    run_job(runtime.sessions, job_id, work)
