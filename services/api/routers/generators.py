"""``/v1/generators``: train a generator on a dataset or register pretrained weights."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import IdempotencyKeyDep, SessionDep, StateDep, TenantDep
from services.api.idempotency import Idempotency, body_hash
from services.api.routers._submit import submit_job
from services.api.schemas import GeneratorCreate, GeneratorCreated, GeneratorRead
from services.generator.config import GeneratorConfig, resolve_augment
from services.generator.weights_source import WeightsSourceRefused, check_source
from shared.dataset_arrays import dataset_channels, ready_dataset
from shared.db import get_owned
from shared.errors import InvalidInput
from shared.jobs import create_job
from shared.models import Generator

router = APIRouter(prefix="/v1/generators", tags=["generators"])


def get_generator(session: SessionDep, tenant_id: uuid.UUID, generator_id: uuid.UUID) -> Generator:
    return get_owned(session, Generator, generator_id, tenant_id, "generator", field="generator_id")


@router.post(
    "",
    status_code=202,
    response_model=GeneratorCreated,
    responses={
        404: {"description": "unknown dataset"},
        409: {"description": "dataset not ready"},
        422: {"description": "invalid training, or a source outside the weights roots"},
    },
)
def create_generator(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    request: GeneratorCreate,
    idempotency_key: IdempotencyKeyDep = None,
) -> JSONResponse:
    """Train a class-conditional inpainting diffusion model on a dataset's real training
    split, or register pretrained diffusers weights (loaded offline by the worker)."""
    idempotency = Idempotency(
        session,
        tenant_id,
        idempotency_key,
        "POST /v1/generators",
        body_hash(request.model_dump()),
        ttl_s=state.settings.idempotency_ttl_s,
    )

    def create() -> tuple[uuid.UUID, GeneratorCreated]:
        if request.kind == "pretrained":
            if not request.source:
                raise InvalidInput(
                    "a pretrained generator needs source: a directory under the weights "
                    "roots or a model id",
                    field="source",
                )
            try:  # by its text alone: the answer never depends on what exists where
                check_source(request.source, state.settings.weights_roots)
            except WeightsSourceRefused as exc:
                raise InvalidInput(str(exc), field="source") from exc
        dataset = ready_dataset(session, request.dataset_id, tenant_id)
        training: dict[str, Any] = {}  # pretrained weights are not trained here
        if request.kind == "pretrained":
            task = "tailsynth.register_generator"
        else:
            if request.source:
                raise InvalidInput("source is for pretrained generators only", field="source")
            channels = dataset_channels(session, dataset.id)
            # Stored resolved, so the record says which augmentation the run used.
            training = {
                **request.training.model_dump(),
                "augment": resolve_augment(
                    request.training.augment, modality=request.modality, channels=channels
                ),
            }
            try:  # the same validation the worker applies, before anything is queued
                GeneratorConfig(**training, num_classes=len(dataset.class_names), channels=channels)
            except ValueError as exc:
                raise InvalidInput(f"training: {exc}", field="training") from exc
            task = "tailsynth.train_generator"
        generator = Generator(
            tenant_id=tenant_id,
            dataset_id=dataset.id,
            kind=request.kind,
            state="registering" if request.kind == "pretrained" else "training",
            source=request.source,
            config={
                "training": training,
                "quality_probe": request.quality_probe.model_dump(),
                "modality": request.modality,
            },
            loss_curve=[],
            quality={},
        )
        session.add(generator)
        session.flush()
        job = create_job(
            session,
            tenant_id=tenant_id,
            kind="train_generator" if request.kind == "trained" else "register_generator",
            task_name=task,
            params={"generator_id": str(generator.id)},
            total=request.training.max_train_steps if request.kind == "trained" else 1,
        )
        generator.job_id = job.id
        session.flush()
        return job.id, GeneratorCreated(
            generator_id=generator.id,
            job_id=job.id,
            generator=GeneratorRead.model_validate(generator),
        )

    return submit_job(state, session, idempotency, create, webhook=request.webhook)


@router.get(
    "/{generator_id}", response_model=GeneratorRead, responses={404: {"description": "unknown id"}}
)
def read_generator(
    session: SessionDep, tenant_id: TenantDep, generator_id: uuid.UUID
) -> GeneratorRead:
    """Kind, training config, checkpoint sha256, loss curve and quality probe."""
    return GeneratorRead.model_validate(get_generator(session, tenant_id, generator_id))
