"""(3) Two worker processes on one queue, each handed the same job: it runs once.

tests/shared/test_jobs.py proves the claim inside one worker (two pool processes);
here two separate worker processes each receive a delivery of the same job at the
same moment, as a broker re-delivery or a second send would cause.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from shared.models import JobState
from tests.fixtures import job_tasks
from tests.fixtures.services import wait_for
from tests.reliability.conftest import WorkerPair

pytestmark = [pytest.mark.reliability, pytest.mark.service]

JOBS = 5
#: Long enough that the second delivery arrives while the first holds its live lease.
WORK_S = 1.5


def _received(log: str, task_id: str) -> bool:
    return f"[{task_id}] received" in log


def test_a_job_delivered_to_two_workers_runs_once(worker_pair: WorkerPair, tmp_path: Path) -> None:
    runs: dict[uuid.UUID, list[str]] = {}
    to_both = 0
    for n in range(JOBS):
        log = tmp_path / f"runs-{n}.log"
        job_id = worker_pair.add_job(job_tasks.RECORD_RUN, log, sleep_s=WORK_S)
        task_ids = [f"{job_id}-delivery-{d}" for d in (1, 2)]
        for task_id in task_ids:  # both workers are idle: each takes one delivery
            worker_pair.celery.send_task(
                job_tasks.RECORD_RUN, args=[str(job_id)], queue="ingest", task_id=task_id
            )
        job = worker_pair.wait_final(job_id)
        assert job.state == JobState.SUCCEEDED and job.attempts == 1, job.error
        runs[job_id] = log.read_text().splitlines()
        # Wait until both deliveries were handled (the dropped one logs why).
        logs = [w.log() for w in worker_pair.workers]
        receivers = {i for i, text in enumerate(logs) for t in task_ids if _received(text, t)}
        to_both += receivers == {0, 1}
    total_runs = sum(len(lines) for lines in runs.values())
    print(  # noqa: T201
        f"\n(3) {JOBS} jobs x 2 deliveries = {2 * JOBS} deliveries to 2 worker processes "
        f"({to_both} jobs delivered to both workers): {total_runs} runs"
    )
    assert all(len(lines) == 1 for lines in runs.values()), runs
    assert to_both >= 1, "no job reached both workers: the test proved nothing"
    # Every second delivery was dropped, and said why (the last one may still be on its way).
    wait_for(lambda: len(_dropped(worker_pair)) >= JOBS, 30, "the last duplicate to be dropped")


def _dropped(worker_pair: WorkerPair) -> list[str]:
    return re.findall(
        r"(is held by .* until|was claimed by another delivery first|already succeeded; "
        r"duplicate delivery dropped)",
        "".join(w.log() for w in worker_pair.workers),
    )
