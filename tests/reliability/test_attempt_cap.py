"""(4) A job whose task always crashes ends ``failed`` after the attempt cap, with why.

Each run kills the pool process running it (as the kernel's OOM killer would). The
broker hands the message back, either of two worker processes takes it, finds the
owner gone and runs the job again, until the stage has had ``job_max_attempts`` claims;
the next delivery fails the job with its last error instead of running it again. The
reaper runs meanwhile, as the API's does, should a hand-back be lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.models import JobState
from tests.fixtures import job_tasks
from tests.reliability.conftest import PAIR_MAX_ATTEMPTS, WorkerPair

pytestmark = [pytest.mark.reliability, pytest.mark.service]


def test_a_job_that_always_crashes_fails_at_the_cap(
    worker_pair: WorkerPair, tmp_path: Path
) -> None:
    assert worker_pair.settings.job_max_attempts == PAIR_MAX_ATTEMPTS
    log = tmp_path / "runs.log"
    job_id = worker_pair.add_job(job_tasks.CRASH, log)
    worker_pair.celery.send_task(job_tasks.CRASH, args=[str(job_id)], queue="ingest")
    job = worker_pair.wait_final(job_id, timeout=120, reap_s=1)
    runs = log.read_text().splitlines()  # "pid attempt" per run
    print(  # noqa: T201
        f"\n(4) always-crashing job: state {job.state.value} after {job.attempts} attempts "
        f"(cap {PAIR_MAX_ATTEMPTS}; runs by pid/attempt: {runs}); error: {job.error}"
    )
    assert job.state == JobState.FAILED
    assert job.attempts == PAIR_MAX_ATTEMPTS and len(runs) == PAIR_MAX_ATTEMPTS
    assert [line.split()[1] for line in runs] == [str(n) for n in range(1, PAIR_MAX_ATTEMPTS + 1)]
    assert job.error is not None
    assert job.error.startswith(f"gave up after {PAIR_MAX_ATTEMPTS} attempts of stage 'starting'")
    assert "ended without a result (its worker was killed" in job.error
