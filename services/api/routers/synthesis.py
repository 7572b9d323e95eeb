"""``/v1/synthesis``, ``/v1/curated-sets``, ``/v1/synthetic-images``: ask for synthetic
images per class, follow what the filter kept, and download the curated set."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from zipstream import ZipStream

from services.api.deps import IdempotencyKeyDep, SessionDep, StateDep, TenantDep
from services.api.idempotency import Idempotency, body_hash
from services.api.routers._submit import submit_job
from services.api.schemas import (
    CuratedSetRead,
    SynthesisCreate,
    SynthesisCreated,
    SyntheticImageRead,
)
from shared.db import get_owned
from shared.errors import Conflict
from shared.models import CuratedSet, OodScore, SyntheticImage
from shared.synthesis import add_synthesis

router = APIRouter(tags=["synthesis"])
MANIFEST_FIELDS = (
    "id",
    "file",
    "label",
    "synthetic",
    "mode",
    "source_image_id",
    "mask_key",
    "generator_id",
    "checkpoint_sha256",
    "scheduler",
    "steps",
    "guidance_scale",
    "strength",
    "seed",
    "prompt",
    "job_id",
    "decision",
    "decision_reason",
    "scores",
    "generation_round",
    "size",
    "resized_from",
    "resize_method",
)


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
        session, tenant_id, idempotency_key, "POST /v1/synthesis", body_hash(request.model_dump())
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

    return submit_job(state, session, idempotency, create)


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


def _kept_rows(session: SessionDep, curated: CuratedSet) -> list[SyntheticImage]:
    return list(
        session.scalars(
            select(SyntheticImage)
            .where(SyntheticImage.curated_set_id == curated.id)
            .order_by(SyntheticImage.label, SyntheticImage.index_in_request)
        )
    )


def _scores_by_image(
    session: SessionDep, image_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, float]]:
    scores: dict[uuid.UUID, dict[str, float]] = {}
    for start in range(0, len(image_ids), 500):
        for row in session.scalars(
            select(OodScore).where(OodScore.synthetic_image_id.in_(image_ids[start : start + 500]))
        ):
            scores.setdefault(row.synthetic_image_id, {})[row.detector] = round(row.score, 6)
    return scores


def _manifest_rows(session: SessionDep, rows: list[SyntheticImage]) -> list[dict[str, object]]:
    scores = _scores_by_image(session, [r.id for r in rows])
    return [
        {
            "id": str(r.id),
            "file": f"{r.label}/{r.id}.png",
            "label": r.label,
            "synthetic": True,
            "mode": r.mode,
            "source_image_id": str(r.source_image_id) if r.source_image_id else "",
            "mask_key": r.mask_key or "",
            "generator_id": str(r.generator_id),
            "checkpoint_sha256": r.checkpoint_sha256,
            "scheduler": r.scheduler,
            "steps": r.steps,
            "guidance_scale": r.guidance_scale,
            "strength": r.strength if r.strength is not None else "",
            "seed": r.seed,
            "prompt": r.prompt or "",
            "job_id": str(r.job_id),
            "decision": r.decision,
            "decision_reason": r.decision_reason or "",
            "scores": json.dumps(scores.get(r.id, {}), sort_keys=True),
            "generation_round": r.generation_round,
            # Side in px of the file, and of the candidate it was resampled from (if it was).
            "size": r.size or "",
            "resized_from": r.candidate_size if r.resize_method else "",
            "resize_method": r.resize_method or "",
        }
        for r in rows
    ]


def _manifest_csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _ready(curated: CuratedSet) -> CuratedSet:
    if curated.state != "ready":
        raise Conflict(f"curated set {curated.id} is {curated.state}; wait for its synthesis job")
    return curated


@router.get(
    "/v1/curated-sets/{curated_set_id}/manifest", responses={409: {"description": "not ready"}}
)
def curated_set_manifest(
    session: SessionDep,
    tenant_id: TenantDep,
    curated_set_id: uuid.UUID,
    format: Annotated[str, Query(pattern="^(csv|jsonl)$")] = "csv",
) -> StreamingResponse:
    """The manifest alone: one row per kept image with its provenance, scores, generation
    round, and size (``resized_from`` and ``resize_method`` when it was resampled)."""
    curated = _ready(get_curated_set(session, tenant_id, curated_set_id))
    rows = _manifest_rows(session, _kept_rows(session, curated))
    if format == "jsonl":
        body = "".join(json.dumps(row) + "\n" for row in rows)
        return StreamingResponse(iter([body]), media_type="application/x-ndjson")
    return StreamingResponse(iter([_manifest_csv(rows)]), media_type="text/csv")


@router.get(
    "/v1/curated-sets/{curated_set_id}/archive", responses={409: {"description": "not ready"}}
)
def curated_set_archive(
    state: StateDep, session: SessionDep, tenant_id: TenantDep, curated_set_id: uuid.UUID
) -> StreamingResponse:
    """Streamed zip: ImageFolder layout (``<class>/<id>.png``) plus ``manifest.csv``.

    The images are at the curated set's resolution (the dataset's unless the request
    named one); the manifest says each one's size, the size it was resampled from and how.

    Built by zipstream-ng as it is sent: no temporary file, memory bounded by one image.
    """
    curated = _ready(get_curated_set(session, tenant_id, curated_set_id))
    images = _kept_rows(session, curated)
    rows = _manifest_rows(session, images)
    archive = ZipStream(sized=False)
    for image, row in zip(images, rows, strict=True):
        archive.add(state.store.iter_chunks(image.object_key), str(row["file"]))
    archive.add(_manifest_csv(rows).encode(), "manifest.csv")
    return StreamingResponse(
        iter(archive),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="curated-{curated.id}.zip"'},
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
