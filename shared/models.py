"""Tables: tenants and keys, datasets and their real images, generators, jobs,
synthesis requests, synthetic images with OOD scores, curated sets, experiments.

Every synthetic image can be traced to the real image and mask it was painted into,
the generator checkpoint, its sampling parameters and seed, the job that asked for
it, and its OOD scores and decision (DESIGN.md §4). Keys are UUIDs; timestamps are
timezone-aware. The schema is created by Alembic (``tailsynth db upgrade``).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


def _enum(enum_cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings: adding a state later needs no ALTER TYPE.
    return Enum(
        enum_cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e]
    )


class JobState(enum.StrEnum):
    """``partial``: the job finished, but some of its parts (classes of a synthesis) could
    not be served or fell short; its result says which and why (DESIGN.md §5)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELED)


class DatasetState(enum.StrEnum):
    INGESTING = "ingesting"
    READY = "ready"
    FAILED = "failed"


class Split(enum.StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Tenant(TimestampMixin, Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(200), unique=True)


class ApiKey(TimestampMixin, Base):
    """An API key, stored only as the sha256 of the secret (keys are 256-bit random).

    ``last_used_at`` is when it last authenticated a request, to within a minute (the
    write is throttled); a key with ``revoked_at`` set authenticates nothing.
    """

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    tenant: Mapped[Tenant] = relationship()


class IdempotencyRecord(TimestampMixin, Base):
    """The answer given to a POST with an ``Idempotency-Key``, replayed for the same body."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    method_path: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)


class Job(TimestampMixin, Base):
    """Long work: queued → running → succeeded | failed | canceled.

    The row is committed before its task is sent; ``dispatched_at`` stays empty until
    the broker accepted the task, so the reaper can send what a crash left unsent.
    A worker runs a job only after claiming it (shared/jobs.py): ``worker_id`` owns it
    until ``lease_until``, and ``attempts`` (every claim, never reset) fences what an
    owner writes; ``stage_attempts`` counts the claims of the current stage, capped.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED, index=True)
    stage: Mapped[str] = mapped_column(String(64), default="queued")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    #: Percent of the whole job reached when its current stage (``done`` of ``total``)
    #: began: the job's progress continues from here (shared.jobs.job_percent).
    progress_floor: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    task_name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    stage_attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"
    # GET /v1/datasets lists a tenant's datasets newest first.
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(32))
    state: Mapped[DatasetState] = mapped_column(_enum(DatasetState), default=DatasetState.INGESTING)
    source_key: Mapped[str | None] = mapped_column(String(512))
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    class_names: Mapped[list[Any]] = mapped_column(JSON, default=list)
    class_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    imbalance_ratio: Mapped[float | None] = mapped_column(Float)
    split_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    split_seed: Mapped[int] = mapped_column(Integer, default=0)
    ingest_report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ingest_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class RealImage(TimestampMixin, Base):
    """One decoded, de-duplicated real image of a dataset, with its label and split."""

    __tablename__ = "real_images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "sha256"),
        Index("ix_real_images_dataset_label", "dataset_id", "label"),
    )
    id: Mapped[uuid.UUID] = _uuid_pk()
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    source_path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    mask_key: Mapped[str | None] = mapped_column(String(512))
    label: Mapped[str] = mapped_column(String(128))
    group_id: Mapped[str | None] = mapped_column(String(256))
    split: Mapped[Split | None] = mapped_column(_enum(Split))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)


class Generator(TimestampMixin, Base):
    """A diffusion generator: trained here on a dataset, or pretrained diffusers weights."""

    __tablename__ = "generators"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id"))
    kind: Mapped[str] = mapped_column(String(32))  # "trained" | "pretrained"
    state: Mapped[str] = mapped_column(String(32), default="training")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str | None] = mapped_column(String(1024))  # local dir or model id
    checkpoint_key: Mapped[str | None] = mapped_column(String(512))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    loss_curve: Mapped[list[Any]] = mapped_column(JSON, default=list)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class SynthesisRequest(TimestampMixin, Base):
    __tablename__ = "synthesis_requests"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    generator_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("generators.id"))
    mode: Mapped[str] = mapped_column(String(16))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    filter_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    curated_set_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    #: Generation rounds after the first, for the classes the filter left short, each
    #: ``{"candidates": {class: n}, "deficit": {class: n}}``; appended by the filter stage.
    top_up_rounds: Mapped[list[Any]] = mapped_column(JSON, default=list)


class CuratedSet(TimestampMixin, Base):
    __tablename__ = "curated_sets"
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    synthesis_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("synthesis_requests.id"))
    state: Mapped[str] = mapped_column(String(32), default="pending")
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SyntheticImage(TimestampMixin, Base):
    """One generated candidate and where it came from; the decision is set by the filter.

    ``candidate_key`` (``candidate_sha256``) is the generator's output as sampled
    (``candidate_size`` px), what the filter scores. ``object_key`` (and ``sha256``) is
    the image the row delivers: the candidate itself, or once kept, its copy at the
    curated set's resolution (``size`` px, resampled with ``resize_method``; None when
    no resampling was needed).
    """

    __tablename__ = "synthetic_images"
    __table_args__ = (
        # A re-delivered generation task writes the same (request, index) again: no duplicate.
        UniqueConstraint("synthesis_id", "index_in_request"),
        # A curated set's archive reads its kept images by keyset in manifest order.
        Index(
            "ix_synthetic_images_curated_order",
            "curated_set_id",
            "label",
            "index_in_request",
            "id",
        ),
    )
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    synthesis_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("synthesis_requests.id"))
    curated_set_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("curated_sets.id"))
    index_in_request: Mapped[int] = mapped_column(Integer)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    generator_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("generators.id"))
    source_image_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("real_images.id"))
    mask_key: Mapped[str | None] = mapped_column(String(512))
    object_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str | None] = mapped_column(Text)
    scheduler: Mapped[str] = mapped_column(String(32))
    steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    strength: Mapped[float | None] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    # kept | ood | off_class | near_copy | surplus | duplicate | background
    decision: Mapped[str | None] = mapped_column(String(16))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    #: 0 for the first generation round, k for the k-th top-up round.
    generation_round: Mapped[int] = mapped_column(Integer, default=0)
    candidate_key: Mapped[str | None] = mapped_column(String(512))
    candidate_sha256: Mapped[str | None] = mapped_column(String(64))
    candidate_size: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int | None] = mapped_column(Integer)
    resize_method: Mapped[str | None] = mapped_column(String(16))


class OodScore(TimestampMixin, Base):
    __tablename__ = "ood_scores"
    __table_args__ = (UniqueConstraint("synthetic_image_id", "detector"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    synthetic_image_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("synthetic_images.id", ondelete="CASCADE")
    )
    detector: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)


class Experiment(TimestampMixin, Base):
    __tablename__ = "experiments"
    # GET /v1/experiments lists a tenant's experiments newest first.
    __table_args__ = (Index("ix_experiments_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(32), default="queued")
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report_key: Mapped[str | None] = mapped_column(String(512))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class WebhookEndpoint(TimestampMixin, Base):
    """Where a tenant's job events go: every job of the tenant, or (``job_id`` set) only
    the job whose POST named it. ``secret`` (``whsec_`` + base64) signs every delivery;
    it is shown once, at creation, and kept here so the server can sign (not encrypted:
    no key setting exists to encrypt it with)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)


class WebhookDelivery(TimestampMixin, Base):
    """One event for one endpoint: the exact body signed and sent on every attempt, and
    when the next attempt is due. ``state``: pending, succeeded or failed (gave up)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_job_type", "job_id", "event_type"),
    )
    id: Mapped[uuid.UUID] = _uuid_pk()
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    #: job.progress only: the 10 % step the job had reached (throttling).
    progress_step: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(TimestampMixin, Base):
    """One try of a delivery: the receiver's status code or the error, how long it took,
    and when the next try is due (None: delivered, or given up)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    next_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
