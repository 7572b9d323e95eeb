"""Celery task of the ``train`` queue: thin, idempotent, by job id.

The experiment a job makes ends with the job itself (:func:`shared.jobs.end_job`)."""

from __future__ import annotations

from celery import shared_task

from services.trainer.experiment_job import run_experiment_job
from shared.jobs import run_job
from shared.runtime import get_runtime


@shared_task(name="tailsynth.run_experiment")
def run_experiment(job_id: str) -> None:
    """Train and score every arm of an experiment; resumes from its recorded runs."""
    runtime = get_runtime()
    run_job(runtime.sessions, job_id, lambda ctx: run_experiment_job(ctx, runtime))
