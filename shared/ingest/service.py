"""The ingest job: extract, decode, hash, de-duplicate, store, label, split.

Work is chunked and recorded as it completes. A redelivered task (its worker was
killed) re-runs from the top but skips what is recorded: objects are keyed by their
content hash and rows are inserted with "on conflict do nothing" on
(dataset, sha256), so nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import InvalidInput, NotFound
from shared.imaging import ImageDecodeError, decode_image
from shared.ingest.archive import (
    ArchiveLimits,
    ArchiveListing,
    extract_archive,
    list_archive,
    listing_from_directory,
)
from shared.ingest.formats import IngestPlan, PlanRow, build_plan
from shared.ingest.splits import assign_splits
from shared.jobs import JobCanceled, JobContext
from shared.models import Dataset, DatasetState, RealImage, Split
from shared.settings import Settings
from shared.storage import ObjectStore

log = logging.getLogger(__name__)
MAX_LISTED_REJECTIONS = 1000
# Largest spread between the R, G and B of one pixel that still counts as gray: a gray
# image saved as JPEG in colour comes back a level or two apart from chroma round-off.
GRAY_TOLERANCE = 3


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_entries=settings.max_archive_entries,
        max_total_bytes=settings.max_archive_total_bytes,
        max_compression_ratio=settings.max_compression_ratio,
        max_text_bytes=settings.max_label_file_bytes,
    )


def image_key(dataset_id: uuid.UUID, sha256: str, suffix: str) -> str:
    return f"datasets/{dataset_id}/images/{sha256}{suffix}"


def mask_key(dataset_id: uuid.UUID, sha256: str) -> str:
    return f"datasets/{dataset_id}/masks/{sha256}.png"


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = postgresql if session.bind and session.bind.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(RealImage).values(rows)
    session.execute(statement.on_conflict_do_nothing(index_elements=["dataset_id", "sha256"]))


def content_channels(pixels: np.ndarray) -> int:
    """Channels an image's content has: 1 for grayscale, also when it is stored as RGB
    with equal channels (chest X-rays exported as colour JPEG or PNG), else 3.

    A dataset recorded as one channel is modelled in one channel, so a generator cannot
    invent a colour cast that no real image has.

    Args:
        pixels: uint8 (H, W) or (H, W, 3), as decoded.
    """
    if pixels.ndim == 2:
        return 1
    spread = pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2)
    return 1 if int(spread.max()) <= GRAY_TOLERANCE else 3


class _Report:
    """Rows rejected during ingest and why (listed in the dataset's ingest report), and
    how many colour-encoded images hold grayscale content."""

    def __init__(self) -> None:
        self.rejected: list[dict[str, Any]] = []
        self.reasons: Counter[str] = Counter()
        self.duplicates = 0
        self.gray_stored_as_rgb = 0

    def reject(self, row: PlanRow, reason: str, detail: str) -> None:
        self.reasons[reason] += 1
        if len(self.rejected) < MAX_LISTED_REJECTIONS:
            self.rejected.append(
                {"file": row.path, "line": row.line, "reason": reason, "detail": detail}
            )


def _ingest_row(
    row: PlanRow,
    root: Path,
    dataset_id: uuid.UUID,
    store: ObjectStore,
    settings: Settings,
    report: _Report,
) -> dict[str, Any] | None:
    raw = (root / row.path).read_bytes()
    try:
        image = decode_image(raw, max_pixels=settings.max_image_pixels)
    except ImageDecodeError as exc:
        report.reject(row, exc.reason, str(exc))
        return None
    suffix = posixpath.splitext(row.path)[1].lower() or ".png"
    stored_mask = None
    if row.mask_path:
        mask_bytes = (root / row.mask_path).read_bytes()
        try:
            mask = decode_image(mask_bytes, max_pixels=settings.max_image_pixels)
        except ImageDecodeError as exc:
            report.reject(row, "bad_mask", f"mask {row.mask_path}: {exc}")
            return None
        if mask.size != image.size:
            report.reject(
                row, "bad_mask", f"mask {row.mask_path} is {mask.size}, image is {image.size}"
            )
            return None
        stored_mask = mask_key(dataset_id, image.sha256)
        if not store.exists(stored_mask):
            store.put_bytes(stored_mask, mask_bytes, "image/png")
    key = image_key(dataset_id, image.sha256, suffix)
    if not store.exists(key):
        store.put_bytes(key, raw)
    channels = content_channels(image.pixels)
    return {
        "id": uuid.uuid5(dataset_id, image.sha256),
        "dataset_id": dataset_id,
        "source_path": row.path,
        "sha256": image.sha256,
        "object_key": key,
        "mask_key": stored_mask,
        "label": row.label,
        "group_id": row.group,
        "split": Split(row.split) if row.split else None,
        "width": image.size[0],
        "height": image.size[1],
        "channels": channels,
        # Not a column: counted in the report once the image is known not to be a duplicate.
        "gray_stored_as_rgb": channels == 1 and image.mode == "RGB",
    }


def ingest_directory(
    ctx: JobContext,
    factory: sessionmaker[Session],
    store: ObjectStore,
    settings: Settings,
    dataset_id: uuid.UUID,
    root: Path,
    plan: IngestPlan,
) -> dict[str, Any]:
    report = _Report()
    seen: dict[str, str] = {}
    total = len(plan.rows)
    ctx.progress(0, total, "decoding")
    chunk = settings.ingest_chunk_size
    for start in range(0, total, chunk):
        ctx.check_cancel()
        batch = []
        for row in plan.rows[start : start + chunk]:
            record = _ingest_row(row, root, dataset_id, store, settings, report)
            if record is None:
                continue
            if record["sha256"] in seen:
                report.duplicates += 1
                report.reject(row, "duplicate", f"same pixels as {seen[record['sha256']]}")
                continue
            seen[record["sha256"]] = row.path
            report.gray_stored_as_rgb += record.pop("gray_stored_as_rgb")
            batch.append(record)
        with factory.begin() as session:
            _insert_ignoring_duplicates(session, batch)
        ctx.progress(min(start + chunk, total))

    ctx.progress(total, total, "splitting")
    with factory.begin() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {dataset_id} vanished during ingest")
        images = session.execute(
            select(
                RealImage.id,
                RealImage.label,
                RealImage.group_id,
                RealImage.split,
                RealImage.channels,
            )
            .where(RealImage.dataset_id == dataset_id)
            .order_by(RealImage.sha256)
        ).all()
        if not images:
            raise InvalidInput("no image of the dataset could be decoded; see the ingest report")
        if plan.has_given_splits:
            splits = [img.split.value for img in images]
        else:
            splits = assign_splits(
                [img.label for img in images], [img.group_id for img in images], dataset.split_seed
            )
        for split_name in set(splits):
            ids = [img.id for img, s in zip(images, splits, strict=True) if s == split_name]
            for i in range(0, len(ids), 500):
                session.execute(
                    update(RealImage)
                    .where(RealImage.id.in_(ids[i : i + 500]))
                    .values(split=Split(split_name))
                )
        counts = Counter(img.label for img in images)
        class_names = [c for c in plan.class_names if counts[c]]
        dataset.class_names = class_names
        dataset.class_counts = {c: counts[c] for c in class_names}
        dataset.imbalance_ratio = max(counts.values()) / min(counts.values())
        per_split = Counter((sp, img.label) for img, sp in zip(images, splits, strict=True))
        dataset.split_counts = {
            s: {c: per_split[(s, c)] for c in class_names} for s in ("train", "val", "test")
        }
        dataset.ingest_report = {
            "format": plan.format,
            "rows": total,
            "images": len(images),
            "rejected_count": sum(report.reasons.values()),
            "rejected_by_reason": dict(report.reasons),
            "rejected": report.rejected,
            "splits_given": plan.has_given_splits,
            **_channels_report([img.channels for img in images], report),
        }
        dataset.format = plan.format
        dataset.state = DatasetState.READY
    return {"dataset_id": str(dataset_id), "images": len(images)}


def _channels_report(image_channels: Sequence[int], report: _Report) -> dict[str, Any]:
    """The dataset's channels and, when some colour files hold gray content, that
    they were detected and recorded as one channel."""
    channels = 3 if 3 in image_channels else 1
    summary: dict[str, Any] = {
        "channels": channels,
        "grayscale_stored_as_rgb": report.gray_stored_as_rgb,
    }
    if report.gray_stored_as_rgb and channels == 1:
        summary["channels_note"] = (
            f"{report.gray_stored_as_rgb} of {len(image_channels)} images are stored as RGB with "
            "equal channels (grayscale content): the dataset is recorded and modelled as "
            "1 channel"
        )
    return summary


def _write_demo(ctx: JobContext, root: Path) -> None:
    from shared.demo_dataset import (
        DEFAULT_MIN_PER_CLASS,
        DEFAULT_POSITIVE_FRACTION,
        DEFAULT_VARIANT,
        DemoDatasetCanceled,
        write_demo_dataset,
    )

    params = ctx.params
    total = int(params["total"])
    # Jobs queued before variant/imbalance existed lack those keys: the defaults apply.
    imbalance = params.get("imbalance")
    positive_fraction = params.get("positive_fraction")
    ctx.progress(0, total, "generating")
    try:
        write_demo_dataset(
            root,
            total=total,
            image_size=int(params["image_size"]),
            seed=int(params["seed"]),
            progress=lambda done, _total: ctx.progress(done) if done % 200 == 0 else None,
            should_cancel=ctx.should_cancel,
            variant=str(params.get("variant") or DEFAULT_VARIANT),
            imbalance=None if imbalance is None else float(imbalance),
            min_per_class=int(params.get("min_per_class") or DEFAULT_MIN_PER_CLASS),
            positive_fraction=(
                DEFAULT_POSITIVE_FRACTION if positive_fraction is None else float(positive_fraction)
            ),
        )
    except DemoDatasetCanceled as exc:
        raise JobCanceled() from exc
    except ValueError as exc:  # options the demo cannot honour (the API checks them first)
        raise InvalidInput(f"demo dataset: {exc}") from exc


def run_ingest(
    ctx: JobContext, factory: sessionmaker[Session], store: ObjectStore, settings: Settings
) -> dict[str, Any]:
    """The body of the ingest task for an uploaded archive or a demo dataset."""
    dataset_id = uuid.UUID(ctx.params["dataset_id"])
    with factory() as session:
        if session.get(Dataset, dataset_id) is None:
            raise NotFound(f"dataset {dataset_id} vanished before its ingest ran")
    # A failed or canceled ingest leaves its dataset "failed" with the job's error in
    # its report: the job system ends both together (shared.jobs.end_job).
    with tempfile.TemporaryDirectory(prefix="tailsynth-ingest-") as tmp:
        root = Path(tmp) / "files"
        root.mkdir()
        ctx.progress(0, stage="extracting")
        listing: ArchiveListing
        if ctx.params.get("source") == "demo":
            _write_demo(ctx, root)
            listing = listing_from_directory(root)
        else:
            archive = Path(tmp) / "upload"
            store.download_to(ctx.params["source_key"], archive)
            listing = list_archive(archive, archive_limits(settings))
            extract_archive(archive, root, listing)
            archive.unlink()
        plan = build_plan(listing, ctx.params.get("format"), ctx.params.get("classes"))
        return ingest_directory(ctx, factory, store, settings, dataset_id, root, plan)
