"""A sampling parameter the worker refuses fails the job with the reason, the user's to
fix, not with ``internal error: ValueError`` (embedded database, in-process job)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from services.generator.sampling import SamplingParameters, check_request
from shared.db import make_engine, make_session_factory
from shared.errors import InvalidInput
from shared.jobs import JobContext, JobPolicy, create_job, run_job
from shared.models import Job, JobState, Tenant
from shared.settings import Settings


def _check(**changes: Any) -> None:
    params = {
        "mode": "generate",
        "scheduler": "ddim",
        "num_inference_steps": 4,
        "guidance_scale": 2.0,
        **changes,
    }
    check_request(
        SamplingParameters(**params),
        None,
        None,
        np.zeros(1, np.int64),
        np.zeros(1, np.int64),
        num_classes=2,
        channels=3,
        image_size=(8, 8),
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scheduler": "ddim2"}, "sampling.scheduler"),
        ({"scheduler": "pndm", "num_inference_steps": 2}, "sampling.num_inference_steps"),
        ({"guidance_scale": 31.0}, "sampling.guidance_scale"),
        ({"mode": "img2img", "strength": 0.0}, "sampling.strength"),
    ],
)
def test_a_bad_sampling_parameter_is_invalid_input_and_still_a_value_error(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        _check(**changes)
    assert isinstance(raised.value, ValueError) and raised.value.extra["field"] == field


def test_the_job_fails_with_the_parameters_message(local_settings: Settings) -> None:
    engine = make_engine(local_settings)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        job_id = create_job(
            session, tenant_id=tenant.id, kind="synthesis", task_name="tailsynth.synthesize"
        ).id

    def work(ctx: JobContext) -> dict[str, Any]:
        _check(scheduler="ddim2")
        return {}

    run_job(factory, str(job_id), work, policy=JobPolicy(lease_s=60), task_name=None)
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.state == JobState.FAILED
        assert job.error is not None and job.error.startswith("unknown scheduler 'ddim2'")
    engine.dispose()
