"""A curated set's manifest and zip archive, streamed a batch of rows at a time.

Neither is ever built whole: rows are read by keyset in short sessions (no database
connection is held while bytes go out), the manifest is encoded batch by batch, and the
zip (zipstream-ng, stored entries) reads each image from the store as it is sent.

The archive's bytes are a function of the curated set alone, so it has a size before
the first byte (``Content-Length``), an ETag naming its content, and any byte range of
it can be cut from a fresh generation (HTTP ``Range``, for resumed downloads). Its
sha256 is known from the first download that ran to the end, and sent from then on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zipstream.ng
from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session, sessionmaker
from zipstream import ZipStream

from shared.models import OodScore, SyntheticImage
from shared.storage import ObjectNotFound, ObjectStore

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
    "sha256",
)
#: Rows read (and kept in memory as manifest rows) at a time.
BATCH_ROWS = 500
#: Concurrent size look-ups (HEAD) against the store while the archive is planned.
SIZE_LOOKUPS = 8
#: Every entry's modification time: the zip epoch, so that the bytes never depend on
#: when they were generated.
ENTRY_DATE = zipstream.ng.MIN_DATE
#: Part of the ETag: bump it when the archive's layout changes.
LAYOUT_VERSION = "curated-zip-1"


class _StableDateInfo(zipstream.ng.ZipStreamInfo):  # type: ignore[misc]
    """zipstream-ng dates an entry added from data with the moment it is generated, so
    two downloads of one set would differ in those bytes; a resumed download joins
    bytes of two, and needs them equal. zipstream-ng takes no date for such entries, so
    its entry type is replaced by this one, dated ``ENTRY_DATE`` unless given a date."""

    def __init__(self, filename: str, date_time: tuple[int, ...] | None = None) -> None:
        super().__init__(filename, date_time or ENTRY_DATE)


zipstream.ng.ZipStreamInfo = _StableDateInfo


@dataclass(frozen=True)
class KeptImage:
    """One kept image as the manifest and the archive list it."""

    row: dict[str, object]  # the manifest row, keyed by MANIFEST_FIELDS
    object_key: str


def _manifest_row(image: SyntheticImage, scores: dict[str, float]) -> dict[str, object]:
    return {
        "id": str(image.id),
        "file": f"{image.label}/{image.id}.png",
        "label": image.label,
        "synthetic": True,
        "mode": image.mode,
        "source_image_id": str(image.source_image_id) if image.source_image_id else "",
        "mask_key": image.mask_key or "",
        "generator_id": str(image.generator_id),
        "checkpoint_sha256": image.checkpoint_sha256,
        "scheduler": image.scheduler,
        "steps": image.steps,
        "guidance_scale": image.guidance_scale,
        "strength": image.strength if image.strength is not None else "",
        "seed": image.seed,
        "prompt": image.prompt or "",
        "job_id": str(image.job_id),
        "decision": image.decision,
        "decision_reason": image.decision_reason or "",
        "scores": json.dumps(scores, sort_keys=True),
        "generation_round": image.generation_round,
        # Side in px of the file, and of the candidate it was resampled from (if it was).
        "size": image.size or "",
        "resized_from": image.candidate_size if image.resize_method else "",
        "resize_method": image.resize_method or "",
        # Of the file as delivered: the check of each file in the archive.
        "sha256": image.sha256,
    }


def _scores_by_image(
    session: Session, image_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, float]]:
    scores: dict[uuid.UUID, dict[str, float]] = {}
    for row in session.scalars(select(OodScore).where(OodScore.synthetic_image_id.in_(image_ids))):
        scores.setdefault(row.synthetic_image_id, {})[row.detector] = round(row.score, 6)
    return scores


def kept_page_query(
    curated_set_id: uuid.UUID, after: tuple[str, int, uuid.UUID] | None, limit: int
) -> Select[SyntheticImage]:
    """The next ``limit`` kept images after ``after`` in manifest order: an index range
    scan on ``ix_synthetic_images_curated_order``, whatever the table's size."""
    order = (SyntheticImage.label, SyntheticImage.index_in_request, SyntheticImage.id)
    query = select(SyntheticImage).where(SyntheticImage.curated_set_id == curated_set_id)
    if after is not None:
        query = query.where(tuple_(*order) > tuple_(*after))
    return query.order_by(*order).limit(limit)


def kept_batches(
    sessions: sessionmaker[Session], curated_set_id: uuid.UUID, batch_rows: int | None = None
) -> Iterator[list[KeptImage]]:
    """The curated set's images in manifest order (label, request index), at most
    ``batch_rows`` at a time, each batch read by keyset in a short session of its own."""
    after: tuple[str, int, uuid.UUID] | None = None
    while True:
        query = kept_page_query(curated_set_id, after, batch_rows or BATCH_ROWS)
        with sessions() as session:
            images = list(session.scalars(query))
            if not images:
                return
            scores = _scores_by_image(session, [image.id for image in images])
        yield [
            KeptImage(_manifest_row(image, scores.get(image.id, {})), image.object_key)
            for image in images
        ]
        last = images[-1]
        after = (last.label, last.index_in_request, last.id)


def _csv_text(rows: list[dict[str, object]], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def manifest_chunks(
    sessions: sessionmaker[Session], curated_set_id: uuid.UUID, format: str = "csv"
) -> Iterator[bytes]:
    """The manifest as UTF-8, one batch of rows a chunk: CSV (header first) or JSON Lines."""
    if format == "csv":
        yield _csv_text([], header=True).encode()
    for batch in kept_batches(sessions, curated_set_id):
        rows = [kept.row for kept in batch]
        if format == "jsonl":
            yield "".join(json.dumps(row) + "\n" for row in rows).encode()
        else:
            yield _csv_text(rows, header=False).encode()


@dataclass(frozen=True)
class ArchiveEntry:
    arcname: str
    object_key: str
    size: int  # bytes
    sha256: str


class CuratedArchive:
    """The zip of one curated set: ``<class>/<id>.png`` entries, then ``manifest.csv``.

    :meth:`plan` reads the rows once (in batches) for each file's name and size and the
    manifest's size and digest, which fix the archive's length and ETag; :meth:`chunks`
    then generates it, reading the rows a second time for the manifest and refusing to
    go on (an error, so the client sees a short download, never a wrong one) when a file
    or the manifest differs from what was planned.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        curated_set_id: uuid.UUID,
        entries: list[ArchiveEntry],
        manifest_size: int,
        manifest_sha256: str,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._curated_set_id = curated_set_id
        self._manifest_sha256 = manifest_sha256
        self._zip = ZipStream(sized=True)
        for entry in entries:
            self._zip.add(self._object_chunks(entry), entry.arcname, size=entry.size)
        self._zip.add(self._manifest(), "manifest.csv", size=manifest_size)
        identity = hashlib.sha256(f"{LAYOUT_VERSION}\n{manifest_sha256}\n".encode())
        for entry in entries:
            identity.update(f"{entry.size}\n".encode())
        self._identity = identity.hexdigest()[:40]
        self.etag = f'"{self._identity}"'
        self.size: int = len(self._zip)

    @classmethod
    def plan(
        cls, sessions: sessionmaker[Session], store: ObjectStore, curated_set_id: uuid.UUID
    ) -> CuratedArchive:
        """Read the rows (in batches) and each file's size: from the sizes recorded by
        an earlier download, else from the store (a HEAD each, ``SIZE_LOOKUPS`` at once),
        recorded for the next one (a resumed download starts sooner)."""
        manifest = hashlib.sha256()
        header = _csv_text([], header=True).encode()
        manifest.update(header)
        manifest_size = len(header)
        sizes_key = f"curated-archives/{curated_set_id}/sizes.json"
        try:
            sizes: dict[str, int] = json.loads(store.get_bytes(sizes_key))
        except ObjectNotFound:
            sizes = {}
        looked_up = 0
        entries: list[ArchiveEntry] = []
        with ThreadPoolExecutor(SIZE_LOOKUPS) as lookups:
            for batch in kept_batches(sessions, curated_set_id):
                text = _csv_text([kept.row for kept in batch], header=False).encode()
                manifest.update(text)
                manifest_size += len(text)
                missing = [kept.object_key for kept in batch if kept.object_key not in sizes]
                sizes.update(zip(missing, lookups.map(store.size, missing), strict=True))
                looked_up += len(missing)
                entries.extend(
                    ArchiveEntry(
                        str(kept.row["file"]),
                        kept.object_key,
                        sizes[kept.object_key],
                        str(kept.row["sha256"]),
                    )
                    for kept in batch
                )
        if looked_up:
            store.put_bytes(sizes_key, json.dumps(sizes).encode(), "application/json")
        return cls(sessions, store, curated_set_id, entries, manifest_size, manifest.hexdigest())

    @property
    def _digest_key(self) -> str:
        return f"curated-archives/{self._curated_set_id}/{self._identity}.sha256"

    def known_sha256(self) -> str | None:
        """The whole archive's sha256 (hex), once a download has generated it to the end
        (it is recorded beside the set, under the ETag); None before."""
        try:
            return self._store.get_bytes(self._digest_key).decode().strip()
        except ObjectNotFound:
            return None

    def chunks(self) -> Iterator[bytes]:
        """The archive's bytes (once per object). Generated to the end, its sha256 is
        recorded for :meth:`known_sha256`: the bytes are the same for every download."""
        digest = hashlib.sha256()
        for chunk in self._zip:
            digest.update(chunk)
            yield chunk
        if self.known_sha256() is None:
            self._store.put_bytes(self._digest_key, digest.hexdigest().encode(), "text/plain")

    def _object_chunks(self, entry: ArchiveEntry) -> Iterator[bytes]:
        digest = hashlib.sha256()
        for chunk in self._store.iter_chunks(entry.object_key):
            digest.update(chunk)
            yield chunk
        if digest.hexdigest() != entry.sha256:
            raise RuntimeError(f"{entry.object_key} does not match its sha256; archive stopped")

    def _manifest(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        for chunk in manifest_chunks(self._sessions, self._curated_set_id):
            digest.update(chunk)
            yield chunk
        if digest.hexdigest() != self._manifest_sha256:
            raise RuntimeError(
                f"curated set {self._curated_set_id} changed while its archive was sent"
            )


_BYTE_RANGE = re.compile(r"\s*bytes\s*=\s*(?P<first>[0-9]*)-(?P<last>[0-9]*)\s*", re.IGNORECASE)


class RangeNotSatisfiable(ValueError):
    """A byte range that starts at or past the end of the content (HTTP 416)."""


def byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) that a ``Range`` header asks of ``length``
    bytes; None for the whole content (no header, another unit, several ranges, or a
    malformed one: RFC 9110 lets a server ignore those).

    Raises:
        RangeNotSatisfiable: the range starts at or past the end.
    """
    match = _BYTE_RANGE.fullmatch(header or "")
    if match is None or not (match["first"] or match["last"]):
        return None
    if not match["first"]:  # "-K": the last K bytes
        suffix = int(match["last"])
        if suffix == 0:
            raise RangeNotSatisfiable(f"bytes=-0 selects nothing of {length} bytes")
        return max(length - suffix, 0), length - 1
    first = int(match["first"])
    last = int(match["last"]) if match["last"] else None
    if last is not None and last < first:
        return None
    if first >= length:
        raise RangeNotSatisfiable(f"range starts at byte {first}; the archive has {length}")
    return first, length - 1 if last is None else min(last, length - 1)


def slice_bytes(chunks: Iterable[bytes], first: int, last: int) -> Iterator[bytes]:
    """Bytes ``first`` to ``last`` (inclusive) of a stream of chunks."""
    position = 0
    for chunk in chunks:
        end = position + len(chunk)
        if end > first:
            yield chunk[max(first - position, 0) : last + 1 - position]
        position = end
        if position > last:
            return
