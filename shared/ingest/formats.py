"""The four label formats tailsynth reads, turned into one :class:`IngestPlan`.

- ``isic2019``: the ISIC 2019 ground-truth CSV (``image`` + one-hot class columns),
  optionally its metadata CSV (``image``, ``lesion_id``) for grouped splits;
- ``ham10000``: HAM10000 metadata (``image_id``, ``dx``, ``lesion_id``);
- ``imagefolder``: ``<class>/<image>`` (optionally ``<train|val|test>/<class>/<image>``);
- ``csv``: a manifest with ``path``, ``label`` and optional ``mask``, ``group``, ``split``.

Masks for the first three follow the ISIC convention ``<image>_segmentation.png``
(``_mask`` also accepted). Errors name the file and the line (the header is line 1).
The same function plans the API's pre-flight check and the worker's ingest, so both
see the same rows.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.errors import InvalidInput
from shared.ingest.archive import ArchiveListing

FORMATS = ("isic2019", "ham10000", "imagefolder", "csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = ("_segmentation", "_mask")
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SPLIT_NAMES = ("train", "val", "test")
MAX_REPORTED_ERRORS = 50


@dataclass(frozen=True)
class PlanRow:
    line: int | None  # line in the label file (header = 1); None for imagefolder
    path: str  # archive-relative path of the image
    label: str
    mask_path: str | None = None
    group: str | None = None
    split: str | None = None


@dataclass
class IngestPlan:
    format: str
    rows: list[PlanRow]
    class_names: list[str]
    label_file: str | None = None
    has_given_splits: bool = False
    notes: list[str] = field(default_factory=list)


def _text_lines(data: bytes, errors: str = "strict") -> io.TextIOWrapper:
    """``data`` as UTF-8 (BOM dropped) lines, decoded as they are read."""
    return io.TextIOWrapper(io.BytesIO(data), "utf-8-sig", errors=errors, newline="")


def _read_csv(
    name: str, data: bytes, max_rows: int | None = None
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header of CSV ``data`` and its rows as (line, cleaned record), read lazily:
    a label file is held once, as bytes, never as a list of rows.

    Raises (the rows as they are read):
        InvalidInput: not UTF-8, or more than ``max_rows`` rows.
    """
    reader = csv.DictReader(_text_lines(data))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name} is not UTF-8 text", file=name) from exc

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        try:
            for count, record in enumerate(reader, start=1):
                if max_rows is not None and count > max_rows:
                    raise InvalidInput(
                        f"{name} has more than {max_rows:,} rows, far more than the archive "
                        "has files",
                        file=name,
                    )
                yield (
                    reader.line_num,
                    {(k or "").strip(): (v or "").strip() for k, v in record.items() if k},
                )
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{name} is not UTF-8 text", file=name) from exc

    return header, rows()


def _row_cap(listing: ArchiveListing) -> int:
    """The most rows a label file may have: one per file of the archive, and room for
    the errors a file of missing images reports. More cannot be a dataset, and reading
    them would cost time and memory out of proportion to the upload."""
    return len(listing.sizes) + MAX_REPORTED_ERRORS


def _images(listing: ArchiveListing) -> list[str]:
    return sorted(
        p for p in listing.sizes if p.lower().endswith(IMAGE_SUFFIXES) and not _is_mask(p)
    )


def _is_mask(path: str) -> bool:
    stem = posixpath.splitext(posixpath.basename(path))[0].lower()
    return stem.endswith(MASK_SUFFIXES)


def _masks_by_stem(listing: ArchiveListing) -> dict[str, str]:
    masks = {}
    for path in listing.sizes:
        if path.lower().endswith(IMAGE_SUFFIXES) and _is_mask(path):
            stem = posixpath.splitext(posixpath.basename(path))[0]
            for suffix in MASK_SUFFIXES:
                if stem.lower().endswith(suffix):
                    masks[stem[: -len(suffix)]] = path
    return masks


def _by_stem(paths: list[str]) -> dict[str, str]:
    return {posixpath.splitext(posixpath.basename(p))[0]: p for p in paths}


def _csv_with(listing: ArchiveListing, required: set[str]) -> str | None:
    for name, data in sorted(listing.texts.items()):
        if not name.lower().endswith(".csv"):
            continue
        header = next(csv.reader(_text_lines(data, errors="replace")), [])
        if required <= {h.strip() for h in header}:
            return name
    return None


def detect_format(listing: ArchiveListing) -> str:
    if _csv_with(listing, {"path", "label"}):
        return "csv"
    if _csv_with(listing, {"image_id", "dx"}):
        return "ham10000"
    if _csv_with(listing, {"image", "MEL", "NV"}):
        return "isic2019"
    images = _images(listing)
    if images and all(posixpath.dirname(p) for p in images):
        return "imagefolder"
    raise InvalidInput(
        "could not detect the dataset format; pass format as one of " + ", ".join(FORMATS),
        field="format",
    )


#: Widths of the columns an ingest writes a row's path, label and group to
#: (shared.models.RealImage): a longer value is refused here, by line, instead of failing
#: the whole ingest in the database (whose error would carry every value of the batch).
COLUMN_LIMITS = {"path": 1024, "label": 128, "group": 256}


def _check_widths(rows: list[PlanRow], label_file: str) -> None:
    errors = [
        f"{f'line {row.line}' if row.line else f'entry {n}'}: {name} is longer than "
        f"{limit} characters"
        for n, row in enumerate(rows, start=1)
        for name, limit in COLUMN_LIMITS.items()
        if len(getattr(row, name) or "") > limit
    ]
    _raise_row_errors(label_file, errors)


def _raise_row_errors(label_file: str, errors: list[str]) -> None:
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
        raise InvalidInput(
            f"{label_file}: {len(errors)} row(s) rejected{more}: " + "; ".join(shown),
            file=label_file,
            errors=shown,
        )


def _check_classes(rows: list[PlanRow], allowed: list[str] | None, label_file: str) -> None:
    if allowed is None:
        return
    bad = [
        f"line {row.line}: unknown class {row.label!r}"
        if row.line
        else f"{row.path}: unknown class {row.label!r}"
        for row in rows
        if row.label not in allowed
    ]
    _raise_row_errors(label_file, bad)


def plan_isic2019(listing: ArchiveListing) -> IngestPlan:
    label_file = _csv_with(listing, {"image", "MEL", "NV"})
    if label_file is None:
        raise InvalidInput(
            "no ISIC 2019 ground-truth CSV (image, MEL, NV, ...) found", field="format"
        )
    header, records = _read_csv(label_file, listing.texts[label_file], _row_cap(listing))
    classes = [h for h in header if h != "image"]
    images, masks = _by_stem(_images(listing)), _masks_by_stem(listing)
    groups: dict[str, str] = {}
    meta_file = _csv_with(listing, {"image", "lesion_id"})
    if meta_file:  # may describe more images than were uploaded: keep only theirs
        for _, rec in _read_csv(meta_file, listing.texts[meta_file])[1]:
            if rec.get("lesion_id") and rec.get("image") in images:
                groups[rec["image"]] = rec["lesion_id"]
    rows, errors = [], []
    for line, rec in records:
        image_id = rec.get("image", "")
        try:
            hot = [c for c in classes if float(rec.get(c) or 0) >= 0.5]
        except ValueError:
            errors.append(f"line {line}: class columns must be 0/1")
            continue
        if len(hot) != 1:
            errors.append(f"line {line}: image {image_id!r} has {len(hot)} classes set, needs 1")
        elif image_id not in images:
            errors.append(f"line {line}: image {image_id!r} is not in the archive")
        else:
            rows.append(
                PlanRow(line, images[image_id], hot[0], masks.get(image_id), groups.get(image_id))
            )
    _raise_row_errors(label_file, errors)
    present = [c for c in classes if any(r.label == c for r in rows)]
    return IngestPlan("isic2019", rows, present, label_file)


def plan_ham10000(listing: ArchiveListing) -> IngestPlan:
    label_file = _csv_with(listing, {"image_id", "dx"})
    if label_file is None:
        raise InvalidInput("no HAM10000 metadata CSV (image_id, dx, ...) found", field="format")
    _, records = _read_csv(label_file, listing.texts[label_file], _row_cap(listing))
    images, masks = _by_stem(_images(listing)), _masks_by_stem(listing)
    rows, errors = [], []
    for line, rec in records:
        image_id, dx = rec.get("image_id", ""), rec.get("dx", "").lower()
        if dx not in HAM10000_CLASSES:
            errors.append(
                f"line {line}: unknown class {dx!r} (HAM10000 has {', '.join(HAM10000_CLASSES)})"
            )
        elif image_id not in images:
            errors.append(f"line {line}: image {image_id!r} is not in the archive")
        else:
            rows.append(
                PlanRow(
                    line, images[image_id], dx, masks.get(image_id), rec.get("lesion_id") or None
                )
            )
    _raise_row_errors(label_file, errors)
    present = sorted({r.label for r in rows})
    return IngestPlan("ham10000", rows, present, label_file)


def plan_imagefolder(listing: ArchiveListing) -> IngestPlan:
    images = _images(listing)
    if not images:
        raise InvalidInput("archive holds no images", field="file")
    masks = _masks_by_stem(listing)
    flat = [p for p in images if not posixpath.dirname(p)]
    if flat:
        raise InvalidInput(
            f"imagefolder needs <class>/<image>; {flat[0]!r} is not in a class folder", file=flat[0]
        )
    # Drop a single wrapping folder (``mydata/NV/x.png``).
    parts = [p.split("/") for p in images]
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    given_split = all(len(p) >= 3 and p[-3].lower() in SPLIT_NAMES for p in parts)
    rows = []
    for path, pieces in zip(images, parts, strict=True):
        stem = posixpath.splitext(pieces[-1])[0]
        rows.append(
            PlanRow(
                None,
                path,
                pieces[-2],
                masks.get(stem),
                None,
                pieces[-3].lower() if given_split else None,
            )
        )
    classes = sorted({r.label for r in rows})
    return IngestPlan("imagefolder", rows, classes, None, has_given_splits=given_split)


def plan_manifest(listing: ArchiveListing) -> IngestPlan:
    label_file = _csv_with(listing, {"path", "label"})
    if label_file is None:
        raise InvalidInput("no manifest CSV with columns path,label found", field="format")
    header, records = _read_csv(label_file, listing.texts[label_file], _row_cap(listing))
    base = posixpath.dirname(label_file)
    has_split = "split" in header
    rows, errors = [], []
    for line, rec in records:
        path = posixpath.normpath(posixpath.join(base, rec.get("path", "")))
        mask = rec.get("mask") or None
        mask_path = posixpath.normpath(posixpath.join(base, mask)) if mask else None
        split = (rec.get("split") or "").lower() or None
        if not rec.get("label"):
            errors.append(f"line {line}: empty label")
        elif path not in listing.sizes:
            errors.append(f"line {line}: file {rec.get('path')!r} is not in the archive")
        elif mask_path and mask_path not in listing.sizes:
            errors.append(f"line {line}: mask {mask!r} is not in the archive")
        elif has_split and split not in SPLIT_NAMES:
            errors.append(f"line {line}: split {rec.get('split')!r} is not train, val or test")
        else:
            rows.append(
                PlanRow(line, path, rec["label"], mask_path, rec.get("group") or None, split)
            )
    _raise_row_errors(label_file, errors)
    classes = sorted({r.label for r in rows})
    return IngestPlan("csv", rows, classes, label_file, has_given_splits=has_split)


PLANNERS = {
    "isic2019": plan_isic2019,
    "ham10000": plan_ham10000,
    "imagefolder": plan_imagefolder,
    "csv": plan_manifest,
}


def build_plan(
    listing: ArchiveListing, fmt: str | None = None, classes: list[str] | None = None
) -> IngestPlan:
    """Plan an ingest: which file is which image, its label, mask, group and split.

    ``classes``, when given, is the closed list of labels the user expects; rows with
    any other label are refused with their line numbers.
    """
    if fmt is not None and fmt not in PLANNERS:
        raise InvalidInput(
            f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", field="format"
        )
    plan = PLANNERS[fmt or detect_format(listing)](listing)
    _check_widths(plan.rows, plan.label_file or "archive")
    _check_classes(plan.rows, classes, plan.label_file or "archive")
    if not plan.rows:
        raise InvalidInput("no labelled images found", field="file")
    counts = Counter(r.label for r in plan.rows)
    if len(counts) < 2:
        raise InvalidInput(
            f"a classification dataset needs at least 2 classes; found {sorted(counts)}",
            field="file",
        )
    return plan
