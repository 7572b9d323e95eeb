"""Celery task of the ``train`` queue: thin, idempotent, by job id."""

from __future__ import annotations

from celery import shared_task

from services.trainer.experiment_job import run_experiment_job
from shared.jobs import guarded, run_job
from shared.models import Experiment
from shared.runtime import get_runtime


@shared_task(name="tailsynth.run_experiment")
def run_experiment(job_id: str) -> None:
    """Train and score every arm of an experiment; resumes from its recorded runs."""
    runtime = get_runtime()
    work = guarded(
        runtime.sessions,
        Experiment,
        "experiment_id",
        lambda ctx: run_experiment_job(ctx, runtime),
    )
    run_job(runtime.sessions, job_id, work)
