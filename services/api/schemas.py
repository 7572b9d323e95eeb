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
        percent = (
            100.0 * job.done / job.total if job.total else (100.0 if job.state.is_final else 0.0)
        )
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state.value,
            stage=job.stage,
            progress=Progress(
                done=job.done, total=job.total, percent=round(min(percent, 100.0), 1)
            ),
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
    total: int = Field(
        2400, ge=40, le=50_000, description="number of images (at least 5 per class)"
    )
    image_size: int = Field(64, ge=16, le=512, description="side in pixels")
    seed: int = Field(0, ge=0)
    split_seed: int = Field(0, ge=0)


class ComponentHealth(BaseModel):
    status: str
    detail: str | None = None


class Health(BaseModel):
    status: str
    components: dict[str, ComponentHealth]


# ----------------------------------------------------------------- generators


class GeneratorTraining(BaseModel):
    """How to train a class-conditional inpainting diffusion model from scratch."""

    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(32, ge=16, le=256, description="square side in px")
    block_out_channels: list[int] = Field([32, 64, 64], min_length=1, max_length=6)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention_levels: list[int] = Field([2], max_length=6)
    latent: bool = False
    max_train_steps: int = Field(1000, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    class_dropout: float = Field(0.1, ge=0, le=1)
    mask_loss_weight: float = Field(4.0, ge=1, le=100)
    class_balance: float = Field(
        0.5, ge=0, le=1, description="class-balanced batches: 0 as in the data, 1 equal"
    )
    ema_decay: float = Field(0.999, ge=0, lt=1)
    checkpoint_every: int = Field(250, ge=1)
    mixed_precision: str = Field("bf16", pattern="^(no|bf16)$")
    seed: int = Field(0, ge=0)


class QualityProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    images_per_class: int = Field(16, ge=2, le=1000)
    num_inference_steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(2.0, ge=0, le=30)
    background_policy: str = Field(
        "any_class",
        pattern="^(any_class|same_class|head_classes)$",
        description="which val images receive the probe's lesions (as in synthesis)",
    )
    classifier_epochs: int = Field(8, ge=1, le=200)


class GeneratorCreate(BaseModel):
    """Train a generator on a dataset, or register pretrained diffusers weights."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("trained", pattern="^(trained|pretrained)$")
    dataset_id: uuid.UUID
    training: GeneratorTraining = GeneratorTraining()
    quality_probe: QualityProbe = QualityProbe()
    source: str | None = Field(
        None, max_length=1024, description="pretrained: local diffusers directory or model id"
    )
    modality: str = Field("dermoscopy", max_length=64, description="prompt templates (pretrained)")


class GeneratorRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    state: str
    dataset_id: uuid.UUID | None
    config: dict[str, Any]
    source: str | None
    checkpoint_sha256: str | None
    loss_curve: list[Any]
    quality: dict[str, Any]
    job_id: uuid.UUID | None
    created_at: datetime


class GeneratorCreated(BaseModel):
    generator_id: uuid.UUID
    job_id: uuid.UUID
    generator: GeneratorRead


# ----------------------------------------------------------------- synthesis


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduler: str = Field("ddim", max_length=32)
    num_inference_steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(2.0, ge=0, le=30)
    strength: float = Field(0.6, gt=0, le=1, description="img2img only")
    batch_size: int = Field(16, ge=1, le=512)


class FilterSettings(BaseModel):
    """OOD post-selection: thresholds calibrated on real validation images."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field("calibrated", pattern="^(calibrated|keep_fraction|target_count)$")
    keep_fraction: float = Field(
        0.4, gt=0, le=1, description="gamma of the paper (keep_fraction rule)"
    )
    target_keep_rate: float = Field(0.97, gt=0, le=1, description="real val images that must pass")
    min_validation_per_class: int = Field(
        5, ge=2, le=1000, description="real val images a class needs for calibration"
    )
    classifier_backbone: str = Field("resnet18", max_length=64)
    classifier_image_size: int = Field(64, ge=16, le=512)
    classifier_epochs: int = Field(8, ge=1, le=200)


class SynthesisCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: uuid.UUID
    generator_id: uuid.UUID
    counts: dict[str, int] | None = Field(None, description='e.g. {"DF": 500, "VASC": 300}')
    target: str | None = Field(
        None, pattern="^fill_to_max$", description="fill every class to the head class"
    )
    mode: str = Field("inpaint", pattern="^(inpaint|img2img|generate)$")
    sampling: Sampling = Sampling()
    background_policy: str = Field("any_class", pattern="^(any_class|same_class|head_classes)$")
    oversample: float = Field(1.5, ge=1, le=10, description="candidates generated per image asked")
    filter: FilterSettings = FilterSettings()
    seed: int = Field(0, ge=0, lt=2**62)


class SynthesisCreated(BaseModel):
    synthesis_id: uuid.UUID
    job_id: uuid.UUID
    curated_set_id: uuid.UUID
    counts: dict[str, int]


class CuratedSetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID
    synthesis_id: uuid.UUID | None
    state: str
    thresholds: dict[str, Any]
    summary: dict[str, Any]
    created_at: datetime


class SyntheticImageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    synthesis_id: uuid.UUID
    curated_set_id: uuid.UUID | None
    dataset_id: uuid.UUID
    generator_id: uuid.UUID
    source_image_id: uuid.UUID | None
    mask_key: str | None
    object_key: str
    sha256: str
    label: str
    mode: str
    prompt: str | None
    scheduler: str
    steps: int
    guidance_scale: float
    strength: float | None
    seed: int
    checkpoint_sha256: str
    job_id: uuid.UUID
    decision: str | None
    decision_reason: str | None
    ood_scores: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime
