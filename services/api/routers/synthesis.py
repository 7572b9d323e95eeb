"""``/v1/synthesis``, ``/v1/curated-sets``, ``/v1/synthetic-images``: ask for synthetic
images per class, follow what the filter kept, and download the curated set."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.api.curated_archive import (
    CuratedArchive,
    RangeNotSatisfiable,
    byte_range,
    manifest_chunks,
    slice_bytes,
)
from services.api.deps import AppState, IdempotencyKeyDep, SessionDep, StateDep, TenantDep
from services.api.idempotency import Idempotency, body_hash
from services.api.problems import problem
from services.api.routers._submit import submit_job
from services.api.schemas import (
    CuratedSetRead,
    SynthesisCreate,
    SynthesisCreated,
    SyntheticImageRead,
)
from shared.db import get_owned
from shared.errors import Conflict, PayloadTooLarge
from shared.models import CuratedSet, OodScore, SyntheticImage
from shared.synthesis import add_synthesis

router = APIRouter(tags=["synthesis"])


@router.post(
    "/v1/synthesis",
    status_code=202,
    response_model=SynthesisCreated,
    responses={
        404: {"description": "unknown dataset or generator"},
        409: {"description": "not ready"},
    },
)
def create_synthesis(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    request: SynthesisCreate,
    idempotency_key: IdempotencyKeyDep = None,
) -> JSONResponse:
    """Generate candidates per class, filter them, and fill a curated set."""
    idempotency = Idempotency(
        session,
        tenant_id,
        idempotency_key,
        "POST /v1/synthesis",
        body_hash(request.model_dump()),
        ttl_s=state.settings.idempotency_ttl_s,
    )

    def create() -> tuple[uuid.UUID, SynthesisCreated]:
        rows = add_synthesis(
            session,
            tenant_id=tenant_id,
            dataset_id=request.dataset_id,
            generator_id=request.generator_id,
            counts=request.counts,
            target=request.target,
            mode=request.mode,
            params={
                "sampling": request.sampling.model_dump(),
                "background_policy": request.background_policy,
                "oversample": request.oversample,
                "max_rounds": request.max_rounds,
                "resolution": request.resolution,
                "resize_method": request.resize_method,
            },
            filter_params=request.filter.model_dump(),
            seed=request.seed,
        )
        return rows.job.id, SynthesisCreated(
            synthesis_id=rows.synthesis.id,
            job_id=rows.job.id,
            curated_set_id=rows.curated_set.id,
            counts=rows.counts,
            plan=rows.plan,
            resolution=rows.synthesis.params["resolution"],
            max_rounds=rows.synthesis.params["max_rounds"],
        )

    return submit_job(state, session, idempotency, create, webhook=request.webhook)


def get_curated_set(
    session: SessionDep, tenant_id: uuid.UUID, curated_set_id: uuid.UUID
) -> CuratedSet:
    return get_owned(session, CuratedSet, curated_set_id, tenant_id, "curated set")


@router.get("/v1/curated-sets/{curated_set_id}", response_model=CuratedSetRead)
def read_curated_set(
    session: SessionDep, tenant_id: TenantDep, curated_set_id: uuid.UUID
) -> CuratedSetRead:
    """Per class: requested, generated, kept, rejected by reason; the thresholds used."""
    return CuratedSetRead.model_validate(get_curated_set(session, tenant_id, curated_set_id))


def _ready(curated: CuratedSet) -> CuratedSet:
    if curated.state != "ready":
        raise Conflict(f"curated set {curated.id} is {curated.state}; wait for its synthesis job")
    return curated


def _check_manifest_rows(session: Session, curated: CuratedSet, limit: int) -> None:
    """Refuse (413) a set whose manifest would list more than ``limit`` rows."""
    rows = session.scalar(
        select(func.count())
        .select_from(SyntheticImage)
        .where(SyntheticImage.curated_set_id == curated.id)
    )
    if rows and rows > limit:
        raise PayloadTooLarge(
            f"curated set {curated.id} has {rows:,} images; a manifest lists at most "
            f"{limit:,} (max_manifest_rows)",
            rows=rows,
            limit=limit,
        )


def _readable_set(
    state: AppState, session: Session, tenant_id: uuid.UUID, curated_set_id: uuid.UUID
) -> uuid.UUID:
    """The id of the tenant's ready curated set whose manifest fits the cap; the request's
    session is closed after, so a streamed answer holds no database connection."""
    curated = _ready(get_curated_set(session, tenant_id, curated_set_id))
    _check_manifest_rows(session, curated, state.settings.max_manifest_rows)
    session.close()
    return curated.id


@router.get(
    "/v1/curated-sets/{curated_set_id}/manifest",
    responses={409: {"description": "not ready"}, 413: {"description": "over max_manifest_rows"}},
)
def curated_set_manifest(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    curated_set_id: uuid.UUID,
    format: Annotated[str, Query(pattern="^(csv|jsonl)$")] = "csv",
) -> StreamingResponse:
    """The manifest alone: one row per kept image with its provenance, scores, generation
    round, size (``resized_from`` and ``resize_method`` when it was resampled) and the
    sha256 of its file. Streamed a batch of rows at a time."""
    set_id = _readable_set(state, session, tenant_id, curated_set_id)
    return StreamingResponse(
        manifest_chunks(state.sessions, set_id, format),
        media_type="application/x-ndjson" if format == "jsonl" else "text/csv",
    )


@router.get(
    "/v1/curated-sets/{curated_set_id}/archive",
    status_code=200,
    responses={
        206: {"description": "the requested byte range (Range: bytes=N- or N-M)"},
        409: {"description": "not ready"},
        413: {"description": "over max_manifest_rows"},
        416: {"description": "range beyond the archive's end"},
    },
)
def curated_set_archive(
    state: StateDep,
    session: SessionDep,
    tenant_id: TenantDep,
    curated_set_id: uuid.UUID,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    """Streamed zip: ImageFolder layout (``<class>/<id>.png``) plus ``manifest.csv``.

    The images are at the curated set's resolution (the dataset's unless the request
    named one); the manifest says each one's size, the size it was resampled from, how,
    and its sha256 (each file's integrity check).

    Resumable: the bytes are the same on every request, so the answer has a
    ``Content-Length`` and an ``ETag`` naming its content, and ``Range: bytes=N-`` (or
    ``N-M``, or ``-K``) answers 206 with ``Content-Range``, 416 past the end. A range is
    cut from the archive as it is generated: the server reads the images before it
    again, the client receives only the range. The whole archive's sha256
    (``Repr-Digest``, RFC 9530) is sent once one download has run to the end.

    Built by zipstream-ng as it is sent: no temporary file; memory bounded by one image,
    one batch of rows and a small entry per kept image.
    """
    set_id = _readable_set(state, session, tenant_id, curated_set_id)
    archive = CuratedArchive.plan(state.sessions, state.store, set_id)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": archive.etag,
        "Content-Disposition": f'attachment; filename="curated-{set_id}.zip"',
    }
    if (sha256 := archive.known_sha256()) is not None:
        headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
    wanted = None if if_range not in (None, archive.etag) else range_header
    try:
        span = byte_range(wanted, archive.size)
    except RangeNotSatisfiable as exc:
        response = problem(416, "Range not satisfiable", str(exc), range=wanted)
        response.headers.update({**headers, "Content-Range": f"bytes */{archive.size}"})
        return response
    if span is None:
        headers["Content-Length"] = str(archive.size)
        return StreamingResponse(archive.chunks(), media_type="application/zip", headers=headers)
    first, last = span
    headers["Content-Length"] = str(last - first + 1)
    headers["Content-Range"] = f"bytes {first}-{last}/{archive.size}"
    return StreamingResponse(
        slice_bytes(archive.chunks(), first, last),
        status_code=206,
        media_type="application/zip",
        headers=headers,
    )


@router.get("/v1/synthetic-images/{image_id}", response_model=SyntheticImageRead)
def read_synthetic_image(
    session: SessionDep, tenant_id: TenantDep, image_id: uuid.UUID
) -> SyntheticImageRead:
    """One image's full provenance: source image, mask, checkpoint, sampling, seed, job,
    every OOD score with its threshold, and the keep/reject decision with its reason."""
    image = get_owned(session, SyntheticImage, image_id, tenant_id, "synthetic image")
    scores = [
        {"detector": s.detector, "score": s.score, "threshold": s.threshold, "passed": s.passed}
        for s in session.scalars(
            select(OodScore)
            .where(OodScore.synthetic_image_id == image_id)
            .order_by(OodScore.detector)
        )
    ]
    return SyntheticImageRead.model_validate(image).model_copy(update={"ood_scores": scores})
