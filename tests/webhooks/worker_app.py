"""The Celery app of the webhook tests' worker: ``celery -A tests.webhooks.worker_app
worker -Q ingest,webhooks``. It runs the real ingest and webhook tasks, and one test job,
:data:`REPORT_PROGRESS`, that reports many small progress steps (for the throttle) and
stops when canceled (or fails, if asked). Settings come from the environment, as in a
real worker."""

from __future__ import annotations

import time
from typing import Any

from shared.celery_app import create_celery_app
from shared.errors import InvalidInput
from shared.jobs import JobContext, run_job
from shared.runtime import get_runtime
from shared.settings import get_settings

app = create_celery_app(get_settings())
app.conf.include = ["shared.ingest.tasks", "services.webhooks.tasks"]

REPORT_PROGRESS = "tests.webhooks.report_progress"


def _report_progress(ctx: JobContext) -> dict[str, Any]:
    """``steps`` progress reports, ``step_s`` seconds apart; then fails with the job
    parameter ``fail`` as its error, if given."""
    steps = int(ctx.params["steps"])
    for done in range(1, steps + 1):
        ctx.check_cancel()
        time.sleep(float(ctx.params["step_s"]))
        ctx.progress(done, steps, "reporting")
    if ctx.params.get("fail"):
        raise InvalidInput(str(ctx.params["fail"]))
    return {"steps": steps}


@app.task(name=REPORT_PROGRESS)
def report_progress(job_id: str) -> None:
    run_job(get_runtime().sessions, job_id, _report_progress)
