"""``/v1/experiments``: does a curated set help a classifier? Submit, list, read, report."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import func, select

from services.api.deps import (
    IdempotencyKeyDep,
    LimitDep,
    OffsetDep,
    SessionDep,
    StateDep,
    TenantDep,
)
from services.api.idempotency import Idempotency, body_hash
from services.api.routers._submit import submit_job
from services.api.schemas import ExperimentCreate, ExperimentCreated, ExperimentRead, Page
from shared.db import get_owned
from shared.errors import Conflict, InvalidInput
from shared.experiments import add_experiment
from shared.models import Experiment

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])
# Per-run records stay in the row for resuming; readers get the summary.
_INTERNAL_RESULTS = ("runs", "rounds")


def experiment_read(experiment: Experiment) -> ExperimentRead:
    results = {k: v for k, v in (experiment.results or {}).items() if k not in _INTERNAL_RESULTS}
    return ExperimentRead(
        id=experiment.id,
        dataset_id=experiment.dataset_id,
        state=experiment.state,
        config=experiment.config or {},
        results=results,
        report_url=(f"/v1/experiments/{experiment.id}/report" if experiment.report_key else None),
        job_id=experiment.job_id,
        created_at=experiment.created_at,
        updated_at=experiment.updated_at,
    )


def _arms(request: ExperimentCreate) -> list[str | dict[str, Any]]:
    return [
        arm if isinstance(arm, str) else arm.model_dump(mode="json", exclude_none=False)
        for arm in request.arms
    ]


@router.post(
    "",
    status_code=202,
    response_model=ExperimentCreated,
    responses={
        404: {"description": "unknown dataset, curated set or generator"},
        409: {"description": "dataset, curated set or generator not ready"},
        422: {"description": "unknown arm, loss or backbone; folds the data cannot support"},
    },
)
def create_experiment(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    request: ExperimentCreate,
    idempotency_key: IdempotencyKeyDep = None,
) -> JSONResponse:
    """Train and score classifiers per arm x fold x seed; one job, progress in epochs."""
    idempotency = Idempotency(
        session,
        tenant_id,
        idempotency_key,
        "POST /v1/experiments",
        body_hash(request.model_dump()),
        ttl_s=state.settings.idempotency_ttl_s,
    )
    if (request.mode == "adaptive") != (request.adaptive is not None):
        raise InvalidInput(
            'mode "adaptive" needs an adaptive object (generator_id, rounds, budget_per_round), '
            "and only that mode takes one",
            field="adaptive",
        )

    def create() -> tuple[uuid.UUID, ExperimentCreated]:
        rows = add_experiment(
            session,
            tenant_id=tenant_id,
            dataset_id=request.dataset_id,
            arms=_arms(request),
            training={
                "backbone": request.backbone,
                "image_size": request.image_size,
                "epochs": request.epochs,
                "min_train_steps": request.min_train_steps,
                "batch_size": request.batch_size,
                "lr": request.lr,
            },
            folds=request.folds,
            seeds=request.seeds,
            seed=request.seed,
            n_resamples=request.n_resamples,
            adaptive=request.adaptive.model_dump(mode="json") if request.adaptive else None,
        )
        return rows.job.id, ExperimentCreated(
            experiment_id=rows.experiment.id,
            job_id=rows.job.id,
            arms=[spec["name"] for spec in rows.arms],
            experiment=experiment_read(rows.experiment),
        )

    return submit_job(state, session, idempotency, create, webhook=request.webhook)


@router.get("", response_model=Page[ExperimentRead])
def list_experiments(
    session: SessionDep,
    tenant_id: TenantDep,
    state: Annotated[str | None, Query(max_length=32)] = None,
    dataset_id: uuid.UUID | None = None,
    limit: LimitDep = 50,
    offset: OffsetDep = 0,
) -> Page[ExperimentRead]:
    query = select(Experiment).where(Experiment.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Experiment.state == state)
    if dataset_id is not None:
        query = query.where(Experiment.dataset_id == dataset_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Experiment.created_at.desc(), Experiment.id).limit(limit).offset(offset)
    )
    return Page(
        items=[experiment_read(row) for row in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{experiment_id}",
    response_model=ExperimentRead,
    responses={404: {"description": "unknown id"}},
)
def read_experiment(
    session: SessionDep, tenant_id: TenantDep, experiment_id: uuid.UUID
) -> ExperimentRead:
    """Per arm: pooled per-class metrics with 95 % intervals, comparisons, verdicts."""
    return experiment_read(get_owned(session, Experiment, experiment_id, tenant_id, "experiment"))


@router.get(
    "/{experiment_id}/report",
    response_class=HTMLResponse,
    responses={404: {"description": "unknown id"}, 409: {"description": "not finished"}},
)
def experiment_report(
    state: StateDep, session: SessionDep, tenant_id: TenantDep, experiment_id: uuid.UUID
) -> HTMLResponse:
    """A self-contained HTML page (inline SVG plots, no external assets)."""
    experiment = get_owned(session, Experiment, experiment_id, tenant_id, "experiment")
    if experiment.report_key is None:
        raise Conflict(
            f"experiment {experiment_id} is {experiment.state}; its report is written when it "
            "succeeds"
        )
    return HTMLResponse(state.store.get_bytes(experiment.report_key).decode())
