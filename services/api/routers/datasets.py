"""``/v1/datasets``: upload (zip or tar.gz, streamed), the demo set, list, get."""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError
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
from services.api.schemas import DatasetCreated, DatasetRead, DemoDatasetCreate, Page
from services.webhooks.schemas import WebhookCreate
from services.webhooks.service import check_target
from shared.db import get_owned
from shared.errors import InvalidInput, PayloadTooLarge
from shared.ingest.archive import list_archive
from shared.ingest.formats import FORMATS, build_plan
from shared.ingest.service import archive_limits
from shared.jobs import create_job
from shared.models import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
COPY_CHUNK = 1024 * 1024


def get_dataset(session: SessionDep, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    return get_owned(session, Dataset, dataset_id, tenant_id, "dataset")


def _add_dataset(session: SessionDep, **fields: object) -> DatasetRead:
    """Add a dataset row in state ``ingesting`` and return how it reads."""
    dataset = Dataset(class_names=[], class_counts={}, split_counts={}, ingest_report={}, **fields)
    session.add(dataset)
    session.flush()
    return DatasetRead.of(dataset)


def _spool_upload(upload: UploadFile, target: Path, max_bytes: int) -> str:
    """Copy the upload to ``target`` in chunks, returning its sha256."""
    digest = hashlib.sha256()
    written = 0
    with target.open("wb") as out:
        while chunk := upload.file.read(COPY_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise PayloadTooLarge(
                    f"upload is over the limit of {max_bytes:,} bytes", field="file"
                )
            digest.update(chunk)
            out.write(chunk)
    if written == 0:
        raise InvalidInput("the uploaded file is empty", field="file")
    return digest.hexdigest()


def _parse_classes(classes: str | None) -> list[str] | None:
    if classes is None or not classes.strip():
        return None
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if len(set(names)) != len(names):
        raise InvalidInput("classes lists a class twice", field="classes")
    return names


@router.post(
    "",
    status_code=202,
    response_model=DatasetCreated,
    responses={413: {"description": "upload too large"}, 422: {"description": "bad archive"}},
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "example": {"file": "isic2019.zip", "name": "isic-2019", "format": "isic2019"}
                }
            }
        }
    },
)
def upload_dataset(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    file: Annotated[UploadFile, File(description="zip or tar.gz archive")],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    format: Annotated[
        str | None, Form(description="|".join(FORMATS) + "; detected if omitted")
    ] = None,
    classes: Annotated[
        str | None, Form(description="comma-separated closed list of labels")
    ] = None,
    split_seed: Annotated[int, Form(ge=0, lt=2**31)] = 0,  # a 32-bit column
    webhook: Annotated[
        str | None, Form(description='JSON: {"url": "https://...", "events": ["job.succeeded"]}')
    ] = None,
    idempotency_key: IdempotencyKeyDep = None,
) -> JSONResponse:
    """Upload a labelled dataset; it is checked now and ingested by a job.

    The request's database connection goes back to the pool once the key is checked:
    spooling, checking and storing an archive of up to 2 GiB holds none. The session
    takes a fresh one for the replay check and the job's rows.
    """
    session.close()
    if format is not None and format not in FORMATS:
        raise InvalidInput(
            f"unknown format {format!r}; use one of {', '.join(FORMATS)}", field="format"
        )
    allowed = _parse_classes(classes)
    webhook_request = _parse_webhook(webhook)
    if webhook_request is not None:  # before the upload is spooled and stored
        check_target(webhook_request, state.settings, field_prefix="webhook.")
    with tempfile.TemporaryDirectory(prefix="tailsynth-upload-") as tmp:
        archive = Path(tmp) / "upload"
        file_sha = _spool_upload(file, archive, state.settings.max_upload_bytes)
        idempotency = Idempotency(
            session,
            tenant_id,
            idempotency_key,
            "POST /v1/datasets",
            body_hash(
                name,
                format,
                allowed,
                split_seed,
                file_sha,
                *([webhook_request.model_dump()] if webhook_request else []),
            ),
            ttl_s=state.settings.idempotency_ttl_s,
        )
        if (replay := idempotency.replay()) is not None:
            return replay
        # Pre-flight: the whole archive structure and every label row, before storing.
        listing = list_archive(archive, archive_limits(state.settings))
        plan = build_plan(listing, format, allowed)
        dataset_id = uuid.uuid4()
        source_key = f"uploads/{dataset_id}/source.{'zip' if listing.kind == 'zip' else 'tar'}"
        with archive.open("rb") as stream:
            state.store.put_stream(source_key, stream, archive.stat().st_size)

    def create() -> tuple[uuid.UUID, DatasetCreated]:
        job = create_job(
            session,
            tenant_id=tenant_id,
            kind="ingest",
            task_name="tailsynth.ingest_dataset",
            params={
                "dataset_id": str(dataset_id),
                "source_key": source_key,
                "format": plan.format,
                "classes": allowed,
            },
            total=len(plan.rows),
        )
        dataset = _add_dataset(
            session,
            id=dataset_id,
            tenant_id=tenant_id,
            name=name,
            format=plan.format,
            source_key=source_key,
            source_sha256=file_sha,
            split_seed=split_seed,
            ingest_job_id=job.id,
        )
        return job.id, DatasetCreated(dataset_id=dataset_id, job_id=job.id, dataset=dataset)

    return submit_job(
        state,
        session,
        idempotency,
        create,
        on_abort=lambda: state.store.delete(source_key),
        webhook=webhook_request,
    )


def _parse_webhook(text: str | None) -> WebhookCreate | None:
    """The upload form's ``webhook`` field (JSON), or 422 naming the part that is wrong."""
    if text is None or not text.strip():
        return None
    try:
        return WebhookCreate.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(["webhook", *(str(part) for part in error["loc"])])
        raise InvalidInput(f"{where}: {error['msg']}", field=where) from None


@router.post("/demo", status_code=202, response_model=DatasetCreated)
def create_demo_dataset(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    request: DemoDatasetCreate,
    idempotency_key: IdempotencyKeyDep = None,
) -> JSONResponse:
    """Generate and ingest a built-in long-tailed demo dataset.

    ``variant`` dermoscopy (default: 8 ISIC 2019 classes, RGB; ``imbalance`` makes the
    tail geometric and extreme) or chest_xray (normal vs opacity, grayscale, with
    ``positive_fraction`` opacities). Options that do not fit the variant, or a total
    too small for ``min_per_class`` images per class, answer 422 before anything runs.
    """
    positive_fraction = _check_demo_request(request)
    idempotency = Idempotency(
        session,
        tenant_id,
        idempotency_key,
        "POST /v1/datasets/demo",
        body_hash(request.model_dump()),
        ttl_s=state.settings.idempotency_ttl_s,
    )

    def create() -> tuple[uuid.UUID, DatasetCreated]:
        dataset_id = uuid.uuid4()
        job = create_job(
            session,
            tenant_id=tenant_id,
            kind="ingest",
            task_name="tailsynth.ingest_dataset",
            params={
                "dataset_id": str(dataset_id),
                "source": "demo",
                "format": "csv",
                "total": request.total,
                "image_size": request.image_size,
                "seed": request.seed,
                "variant": request.variant,
                "imbalance": request.imbalance,
                "min_per_class": request.min_per_class,
                "positive_fraction": positive_fraction,
            },
            total=request.total,
        )
        dataset = _add_dataset(
            session,
            id=dataset_id,
            tenant_id=tenant_id,
            name=request.name,
            format="csv",
            split_seed=request.split_seed,
            ingest_job_id=job.id,
        )
        return job.id, DatasetCreated(dataset_id=dataset_id, job_id=job.id, dataset=dataset)

    return submit_job(state, session, idempotency, create, webhook=request.webhook)


def _check_demo_request(request: DemoDatasetCreate) -> float:
    """Refuse options that do not fit the variant or the total (422); return the
    positive fraction the job uses (0.05 when unset)."""
    from shared.demo_dataset import DEFAULT_POSITIVE_FRACTION, demo_class_counts

    if request.variant == "chest_xray" and request.imbalance is not None:
        raise InvalidInput(
            "imbalance applies to variant dermoscopy; chest_xray uses positive_fraction",
            field="imbalance",
        )
    if request.variant != "chest_xray" and request.positive_fraction is not None:
        raise InvalidInput(
            "positive_fraction applies to variant chest_xray", field="positive_fraction"
        )
    positive_fraction = (
        DEFAULT_POSITIVE_FRACTION
        if request.positive_fraction is None
        else request.positive_fraction
    )
    try:
        demo_class_counts(
            request.total,
            min_per_class=request.min_per_class,
            imbalance=request.imbalance,
            variant=request.variant,
            positive_fraction=positive_fraction,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), field="total") from exc
    return positive_fraction


@router.get("", response_model=Page[DatasetRead])
def list_datasets(
    session: SessionDep, tenant_id: TenantDep, limit: LimitDep = 50, offset: OffsetDep = 0
) -> Page[DatasetRead]:
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Dataset.created_at.desc()).limit(limit).offset(offset))
    return Page(items=[DatasetRead.of(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{dataset_id}", response_model=DatasetRead, responses={404: {"description": "unknown id"}}
)
def read_dataset(session: SessionDep, tenant_id: TenantDep, dataset_id: uuid.UUID) -> DatasetRead:
    return DatasetRead.of(get_dataset(session, tenant_id, dataset_id))
