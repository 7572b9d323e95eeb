"""Request and response schemas of the v1 API (DESIGN.md §7)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.models import Dataset, Job

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Progress(BaseModel):
    done: int
    total: int
    percent: float


class JobRead(BaseModel):
    id: uuid.UUID
    kind: str
    state: str
    stage: str
    progress: Progress
    error: str | None
    result: dict[str, Any]
    params: dict[str, Any]
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobRead:
        percent = 100.0 * job.done / job.total if job.total else (100.0 if job.state.is_final else 0.0)
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state.value,
            stage=job.stage,
            progress=Progress(done=job.done, total=job.total, percent=round(min(percent, 100.0), 1)),
            error=job.error,
            result=job.result or {},
            params={k: v for k, v in (job.params or {}).items() if k != "source_key"},
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    format: str
    state: str
    class_names: list[str]
    class_counts: dict[str, int]
    imbalance_ratio: float | None
    split_counts: dict[str, dict[str, int]]
    split_seed: int
    ingest_report: dict[str, Any]
    ingest_job_id: uuid.UUID | None
    created_at: datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetRead:
        return cls.model_validate(dataset).model_copy(update={"state": dataset.state.value})


class DatasetCreated(BaseModel):
    dataset_id: uuid.UUID
    job_id: uuid.UUID
    dataset: DatasetRead


class DemoDatasetCreate(BaseModel):
    """Ask for the built-in long-tailed dermoscopy-like demo set."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("demo", min_length=1, max_length=200)
    total: int = Field(2400, ge=40, le=50_000, description="number of images (at least 5 per class)")
    image_size: int = Field(64, ge=16, le=512, description="side in pixels")
    seed: int = Field(0, ge=0)
    split_seed: int = Field(0, ge=0)


class ComponentHealth(BaseModel):
    status: str
    detail: str | None = None


class Health(BaseModel):
    status: str
    components: dict[str, ComponentHealth]
