"""Request and response schemas of the v1 API (docs/api.md).

Every timestamp is a :data:`~shared.timestamps.Timestamp`: RFC 3339, UTC, ``Z``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from services.webhooks.schemas import WebhookCreate, WebhookCreated
from shared.jobs import job_percent
from shared.models import Dataset, Job, JobState
from shared.synthesis import (
    DEFAULT_BACKGROUND_POLICY,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INFERENCE_STEPS,
    DEFAULT_SCHEDULER,
    DEFAULT_TAIL_GUIDANCE_SCALE,
    MIN_INFERENCE_STEPS,
    TAIL_TRAIN_IMAGES,
    SchedulerName,
)
from shared.timestamps import Timestamp

T = TypeVar("T")

#: A class label as a request names it (labels are stored in 128 characters).
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
#: Classes one request may name.
MAX_CLASSES = 1000
#: Ids in the request examples of the OpenAPI schema (docs/api.md uses the same).
EXAMPLE_DATASET_ID = "3f0c7a52-9d1e-4b8a-a6f2-5c4e1b7d9a10"
EXAMPLE_GENERATOR_ID = "8b1d2e34-5f60-4a7b-9c8d-0e1f2a3b4c5d"
EXAMPLE_CURATED_SET_ID = "c2a4e6f8-1b3d-4f5a-8c7e-9d0b1a2c3e4f"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Progress(BaseModel):
    """How far a job is: ``percent`` of the whole job, which never goes back (a stage
    that begins continues from where the job was, and it reaches 100 when the job
    ends); ``done`` of ``total`` units of its current stage (``JobRead.stage``), and
    that as ``stage_percent``."""

    done: int
    total: int
    percent: float
    stage_percent: float


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
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    updated_at: Timestamp

    @classmethod
    def of(cls, job: Job) -> JobRead:
        finished = job.state in (JobState.SUCCEEDED, JobState.PARTIAL)
        stage_percent = 100.0 * min(job.done / job.total, 1.0) if job.total else 0.0
        percent = job_percent(job.progress_floor or 0.0, job.done, job.total)
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state.value,
            stage=job.stage,
            progress=Progress(
                done=job.done,
                total=job.total,
                percent=100.0 if finished else round(percent, 1),
                stage_percent=100.0 if finished else round(stage_percent, 1),
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
    created_at: Timestamp

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetRead:
        return cls.model_validate(dataset).model_copy(update={"state": dataset.state.value})


class DatasetCreated(BaseModel):
    dataset_id: uuid.UUID
    job_id: uuid.UUID
    dataset: DatasetRead
    webhook: WebhookCreated | None = Field(
        None, description="the request's webhook, with its signing secret (shown only here)"
    )


class DemoDatasetCreate(BaseModel):
    """Ask for a built-in long-tailed demo set: dermoscopy-like (8 ISIC 2019 classes,
    RGB) or chest-X-ray-like (normal vs opacity, grayscale)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "demo",
                    "total": 2400,
                    "image_size": 64,
                    "imbalance": 300,
                    "min_per_class": 4,
                }
            ]
        },
    )

    name: str = Field("demo", min_length=1, max_length=200)
    total: int = Field(
        2400, ge=40, le=50_000, description="number of images (at least min_per_class per class)"
    )
    image_size: int = Field(64, ge=16, le=512, description="side in pixels")
    # Stored in 32-bit integer columns: a larger one was a database overflow (a 500).
    seed: int = Field(0, ge=0, lt=2**31)
    split_seed: int = Field(0, ge=0, lt=2**31)
    webhook: WebhookCreate | None = Field(
        None, description="an endpoint for this job's events (signed; Standard Webhooks)"
    )
    variant: str = Field(
        "dermoscopy",
        pattern="^(dermoscopy|chest_xray)$",
        description="dermoscopy: 8 ISIC 2019 classes, RGB; chest_xray: normal vs opacity, "
        "grayscale frontal radiographs",
    )
    imbalance: float | None = Field(
        None,
        ge=1.0,
        le=1e6,
        description="dermoscopy only: class counts fall geometrically from the head class "
        "to the rarest with head/rarest = imbalance (floored at min_per_class); "
        "unset: ISIC 2019 proportions",
    )
    min_per_class: int = Field(
        5,
        ge=3,
        le=10_000,
        description="fewest images of any class; 3 still leaves one image each for train, "
        "val and test",
    )
    positive_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=0.5,
        description="chest_xray only: fraction of opacity images (unset: 0.05)",
    )


class ComponentHealth(BaseModel):
    status: str
    detail: str | None = None


class QueueHealth(BaseModel):
    """A queue: ``up`` with at least one live worker, ``down`` with none, ``unknown``
    when the workers could not be asked (the broker is down)."""

    status: str
    workers: int | None = Field(None, description="live workers consuming the queue")
    oldest_waiting_s: float | None = Field(
        None, description="seconds the longest-waiting job of the queue has waited for a worker"
    )


class Health(BaseModel):
    """``up`` only when every component is up and every queue has a live worker;
    ``detail`` says what is not."""

    status: str
    components: dict[str, ComponentHealth]
    queues: dict[str, QueueHealth] = Field(default_factory=dict)
    detail: str | None = None


# ----------------------------------------------------------------- generators


class GeneratorTraining(BaseModel):
    """How to train a class-conditional inpainting diffusion model from scratch."""

    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(32, ge=16, le=256, description="square side in px")
    block_out_channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [32, 64, 64], min_length=1, max_length=6
    )
    layers_per_block: int = Field(1, ge=1, le=4)
    attention_levels: list[Annotated[int, Field(ge=0, le=5)]] = Field([2], max_length=6)
    latent: bool = False
    max_train_steps: int = Field(1000, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    class_dropout: float = Field(0.1, ge=0, le=1)
    mask_loss_weight: float = Field(4.0, ge=1, le=100)
    # Defaults from the README's generator-quality benchmark: equal class balance,
    # lesions painted onto same-class backgrounds at guidance 6 are the ones the
    # real-data probe recognises best (DF .84 vs .41 onto any class; .19 at guidance 3).
    class_balance: float = Field(
        1.0, ge=0, le=1, description="class-balanced batches: 0 as in the data, 1 equal"
    )
    ema_decay: float = Field(0.999, ge=0, lt=1)
    checkpoint_every: int = Field(250, ge=1, le=1_000_000)
    mixed_precision: str = Field("bf16", pattern="^(no|bf16)$")
    seed: int = Field(0, ge=0, lt=2**31)
    modes: list[Literal["inpaint", "img2img", "generate"]] = Field(
        ["inpaint"],
        min_length=1,
        max_length=3,
        description="synthesis modes the generator must serve; the others are refused. "
        "Share of training examples with nothing known: a tenth for inpaint alone, half "
        "with img2img or generate too, all without inpaint",
    )
    augment: Literal["auto", "dermoscopy", "none"] = Field(
        "auto",
        description="dermoscopy: flips and 90 degree rotations; none: no augmentation "
        "(chest X-ray laterality); auto: dermoscopy for a colour dataset of modality "
        "dermoscopy, else none",
    )


class QualityProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    images_per_class: int = Field(16, ge=2, le=1000)
    num_inference_steps: int = Field(DEFAULT_INFERENCE_STEPS, ge=1, le=1000)
    guidance_scale: float = Field(DEFAULT_GUIDANCE_SCALE, ge=0, le=30)
    tail_guidance_scale: float | None = Field(
        DEFAULT_TAIL_GUIDANCE_SCALE,
        ge=0,
        le=30,
        description="guidance for classes with fewer than 10 training images, as in synthesis",
    )
    background_policy: str = Field(
        DEFAULT_BACKGROUND_POLICY,
        pattern="^(any_class|same_class|head_classes)$",
        description="which val images receive the probe's lesions (as in synthesis)",
    )
    classifier_epochs: int = Field(8, ge=1, le=200)
    classifier_min_steps: int = Field(
        300, ge=0, le=1_000_000, description="floor on the probe classifier's optimizer steps"
    )


class GeneratorCreate(BaseModel):
    """Train a generator on a dataset, or register pretrained diffusers weights."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "trained",
                    "dataset_id": EXAMPLE_DATASET_ID,
                    "training": {"resolution": 32, "max_train_steps": 1000},
                }
            ]
        },
    )

    kind: str = Field("trained", pattern="^(trained|pretrained)$")
    dataset_id: uuid.UUID
    training: GeneratorTraining = GeneratorTraining()
    quality_probe: QualityProbe = QualityProbe()
    source: str | None = Field(
        None,
        max_length=1024,
        description="pretrained: an absolute path to a diffusers pipeline directory under the "
        "server's weights roots (TAILSYNTH_WEIGHTS_ROOTS), or a model id in its offline "
        "Hugging Face cache",
    )
    modality: str = Field("dermoscopy", max_length=64, description="prompt templates (pretrained)")
    webhook: WebhookCreate | None = Field(
        None, description="an endpoint for this job's events (signed; Standard Webhooks)"
    )


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
    created_at: Timestamp


class GeneratorCreated(BaseModel):
    generator_id: uuid.UUID
    job_id: uuid.UUID
    generator: GeneratorRead
    webhook: WebhookCreated | None = Field(
        None, description="the request's webhook, with its signing secret (shown only here)"
    )


# ----------------------------------------------------------------- synthesis


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked here, not first by the worker after its GPU has loaded the model.
    scheduler: SchedulerName = DEFAULT_SCHEDULER
    num_inference_steps: int = Field(DEFAULT_INFERENCE_STEPS, ge=1, le=1000)
    guidance_scale: float = Field(DEFAULT_GUIDANCE_SCALE, ge=0, le=30)  # see GeneratorTraining
    tail_guidance_scale: float | None = Field(
        DEFAULT_TAIL_GUIDANCE_SCALE,
        ge=0,
        le=30,
        description=f"guidance for classes with fewer than {TAIL_TRAIN_IMAGES} training images "
        "(at most guidance_scale; null: guidance_scale for every class). Strong guidance "
        "turns a class learnt from a few images into a caricature (README, the extreme tail)",
    )
    strength: float = Field(0.6, gt=0, le=1, description="img2img only")
    batch_size: int = Field(16, ge=1, le=512)

    @field_validator("num_inference_steps")
    @classmethod
    def _enough_steps_for_the_scheduler(cls, steps: int, info: ValidationInfo) -> int:
        scheduler = info.data.get("scheduler")  # absent when the scheduler itself was refused
        fewest = MIN_INFERENCE_STEPS.get(str(scheduler), 1)
        if steps < fewest:
            raise ValueError(f"{scheduler} needs at least {fewest} steps, got {steps}")
        return steps


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
    # The defaults ask for the same classifier as a trained generator's quality probe
    # (its resolution, balanced sampling), so the filter reuses the probe's cached model
    # and keeps what the probe would recognise.
    classifier_backbone: str = Field("resnet18", max_length=64)
    classifier_image_size: int | None = Field(
        None, ge=16, le=512, description="default: the generator's resolution (64 pretrained)"
    )
    classifier_balanced_sampling: bool = Field(
        True, description="train the filter's classifier on class-balanced batches"
    )
    classifier_epochs: int = Field(8, ge=1, le=200)
    classifier_min_steps: int = Field(
        300, ge=0, le=1_000_000, description="floor on the filter classifier's optimizer steps"
    )
    duplicate_bits: int | None = Field(
        4,
        ge=0,
        le=64,
        description="kept candidates of a class whose pHashes lie within this many bits of a "
        "better kept one are rejected as duplicate (null: no check)",
    )
    background_share: bool = Field(
        True,
        description="at most ceil(asked / distinct backgrounds) + 1 kept candidates per "
        "source image; the rest are rejected as background",
    )


class SynthesisCreate(BaseModel):
    """Per-class counts of curated synthetic images (``counts``, or ``target``
    fill_to_max) from a generator, kept by the OOD filter."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": EXAMPLE_DATASET_ID,
                    "generator_id": EXAMPLE_GENERATOR_ID,
                    "counts": {"DF": 500, "VASC": 300},
                    "mode": "inpaint",
                    "seed": 0,
                }
            ]
        },
    )

    dataset_id: uuid.UUID
    generator_id: uuid.UUID
    counts: dict[ClassName, int] | None = Field(
        None, max_length=MAX_CLASSES, description='e.g. {"DF": 500, "VASC": 300}'
    )
    target: str | None = Field(
        None, pattern="^fill_to_max$", description="fill every class to the head class"
    )
    mode: str = Field("inpaint", pattern="^(inpaint|img2img|generate)$")
    sampling: Sampling = Sampling()
    background_policy: str = Field(
        DEFAULT_BACKGROUND_POLICY, pattern="^(any_class|same_class|head_classes)$"
    )
    oversample: float = Field(1.5, ge=1, le=10, description="candidates generated per image asked")
    max_rounds: int = Field(
        3,
        ge=1,
        le=10,
        description="generation rounds at most: the first, then top-ups for the classes the "
        "filter left short (calibrated and target_count rules; keep_fraction keeps its "
        "fraction of one round)",
    )
    resolution: int | None = Field(
        None, ge=8, le=4096, description="side in px of the curated images; default: the dataset's"
    )
    resize_method: str = Field(
        "bicubic",
        pattern="^(nearest|bilinear|bicubic|lanczos)$",
        description="how candidates are resampled to the resolution",
    )
    filter: FilterSettings = FilterSettings()
    seed: int = Field(0, ge=0, lt=2**62)
    webhook: WebhookCreate | None = Field(
        None, description="an endpoint for this job's events (signed; Standard Webhooks)"
    )


class SynthesisCreated(BaseModel):
    synthesis_id: uuid.UUID
    job_id: uuid.UUID
    curated_set_id: uuid.UUID
    counts: dict[str, int]
    plan: dict[str, str] = Field(
        default_factory=dict,
        description="how the OOD filter will serve each class: per_class, pooled or skipped",
    )
    resolution: int | None = Field(
        None, description="side in px the curated images will have (the dataset's by default)"
    )
    max_rounds: int | None = Field(None, description="generation rounds at most")
    webhook: WebhookCreated | None = Field(
        None, description="the request's webhook, with its signing secret (shown only here)"
    )


class CuratedSetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID
    synthesis_id: uuid.UUID | None
    state: str
    thresholds: dict[str, Any]
    summary: dict[str, Any]
    created_at: Timestamp


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
    generation_round: int = 0
    candidate_key: str | None = None
    candidate_size: int | None = None
    size: int | None = None
    resize_method: str | None = None
    ood_scores: list[dict[str, Any]] = Field(default_factory=list)
    created_at: Timestamp


# ----------------------------------------------------------------- experiments


class CuratedArm(BaseModel):
    """Real images plus the kept images of one or more curated sets of the same dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_+.-]+$",
        description='default "curated" or "curated+<loss>"',
    )
    curated_set_ids: list[uuid.UUID] = Field(min_length=1, max_length=20)
    loss: str = Field(
        "ce", max_length=32, description="ce, weighted_ce, focal, logit_adjusted, balanced_softmax"
    )
    balanced_sampling: bool = False
    synthetic_ratio_cap: float | None = Field(
        10.0,
        gt=0,
        le=1000,
        description="at most this many synthetic images per real training image of a class "
        "(gains flatten past ~10:1 in the dermatology literature); null = no cap",
    )
    synthetic_total: int | None = Field(
        None,
        ge=0,
        description="at most this many synthetic images in all (per class in proportion)",
    )
    match_adaptive: bool = Field(
        False, description="cap the total at what the adaptive arm added (equal synthetic totals)"
    )


class AdaptiveSettings(BaseModel):
    """IOIS rounds: allocate each round's budget by validation accuracy, synthesize, train on."""

    model_config = ConfigDict(extra="forbid")

    generator_id: uuid.UUID
    rounds: int = Field(3, ge=1, le=50)
    budget_per_round: int = Field(200, ge=1, le=100_000, description="N of the AAS rule")
    epochs_per_round: int = Field(3, ge=1, le=200)
    mode: str = Field("inpaint", pattern="^(inpaint|img2img|generate)$")
    sampling: Sampling = Sampling()
    background_policy: str = Field(
        DEFAULT_BACKGROUND_POLICY, pattern="^(any_class|same_class|head_classes)$"
    )
    oversample: float = Field(1.5, ge=1, le=10)
    filter: FilterSettings = FilterSettings()
    classifier_guidance_scale: float = Field(
        0.0,
        ge=0,
        le=100,
        description="from round 2, steer sampling with the classifier being trained (IOIS "
        "uses 1.0); 0 = off; needs a generator trained by tailsynth",
    )


class ExperimentCreate(BaseModel):
    """Classifiers on real vs real + curated synthetic images, scored on real held-out images."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": EXAMPLE_DATASET_ID,
                    "arms": [
                        "ce",
                        "weighted_ce",
                        "logit_adjusted",
                        {"curated_set_ids": [EXAMPLE_CURATED_SET_ID]},
                    ],
                    "epochs": 10,
                    "seeds": 3,
                }
            ]
        },
    )

    dataset_id: uuid.UUID
    mode: str = Field("offline", pattern="^(offline|adaptive)$")
    arms: list[str | CuratedArm] = Field(
        default_factory=lambda: list[str | CuratedArm](["ce", "weighted_ce", "logit_adjusted"]),
        min_length=1,
        max_length=20,
        description="baseline names (ce, weighted_ce, balanced_sampler, focal, logit_adjusted, "
        'balanced_softmax) and curated arms {"curated_set_ids": [...]}; ce is always added',
    )
    backbone: str = Field("resnet10t", min_length=1, max_length=100, description="any timm model")
    image_size: int = Field(64, ge=16, le=512)
    epochs: int = Field(10, ge=1, le=500)
    min_train_steps: int = Field(
        300, ge=0, le=1_000_000, description="floor on optimizer steps of every classifier"
    )
    batch_size: int = Field(64, ge=2, le=1024)
    lr: float = Field(2e-3, gt=0, le=1)
    folds: int = Field(
        0, ge=0, le=20, description="0: the dataset's train/val/test split; k: grouped k-fold"
    )
    seeds: int = Field(1, ge=1, le=20, description="training seeds per arm and fold")
    seed: int = Field(0, ge=0, lt=2**31)
    n_resamples: int = Field(1000, ge=100, le=20_000, description="bootstrap resamples")
    adaptive: AdaptiveSettings | None = None
    webhook: WebhookCreate | None = Field(
        None, description="an endpoint for this job's events (signed; Standard Webhooks)"
    )


class ExperimentRead(BaseModel):
    id: uuid.UUID
    dataset_id: uuid.UUID
    state: str
    config: dict[str, Any]
    results: dict[str, Any]
    report_url: str | None
    job_id: uuid.UUID | None
    created_at: Timestamp
    updated_at: Timestamp


class ExperimentCreated(BaseModel):
    experiment_id: uuid.UUID
    job_id: uuid.UUID
    arms: list[str]
    experiment: ExperimentRead
    webhook: WebhookCreated | None = Field(
        None, description="the request's webhook, with its signing secret (shown only here)"
    )
