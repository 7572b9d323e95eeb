"""Reading uploaded zip and tar(.gz) archives without trusting them.

Every entry is checked before anything is extracted: no ``..`` or absolute paths, no
symlinks, hard links or devices, at most ``max_entries`` entries (a zip's count is read
from its end record before its directory is parsed), at most ``max_total_bytes``
uncompressed, a compression ratio no higher than ``max_compression_ratio`` (a zip
bomb), and no ``.csv`` (a label file, read whole) over ``max_text_bytes``. A truncated
or corrupt archive is refused naming the entry it broke in. Extraction then counts the
bytes it really writes, so an archive whose headers lie is still stopped.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import InvalidInput, PayloadTooLarge

TEXT_SUFFIXES = (".csv", ".txt", ".tsv")
LABEL_SUFFIX = ".csv"
MAX_TEXT_BYTES = 16 * 1024 * 1024
IGNORED_PREFIXES = ("__MACOSX/",)
# What reading a broken archive raises: truncated or corrupt data, bad CRCs, a
# compression method Python does not have.
CORRUPT_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    NotImplementedError,
)


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_compression_ratio: float
    #: Text entries are read whole; a bigger ``.csv`` is refused, other text skipped.
    max_text_bytes: int = MAX_TEXT_BYTES


@dataclass
class ArchiveListing:
    """The files of an archive (normalised relative posix paths → sizes) and the
    contents of its small text files (label CSVs), read without extracting images."""

    kind: str  # "zip" | "tar"
    sizes: dict[str, int] = field(default_factory=dict)
    texts: dict[str, bytes] = field(default_factory=dict)


def _normalise(name: str) -> str:
    """The entry's safe relative path, or :class:`InvalidInput` naming it."""
    if "\\" in name:
        name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput(f"archive entry {name!r} has an absolute path", file=name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"archive entry {name!r} climbs out of the archive with '..'", file=name)
    return posixpath.join(*parts) if parts else ""


def _skip(path: str) -> bool:
    base = posixpath.basename(path)
    return not path or path.startswith(IGNORED_PREFIXES) or base.startswith("._")


def detect_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        with tarfile.open(path, "r:*"):
            return "tar"
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput("upload is neither a zip nor a tar(.gz) archive", field="file") from exc


def _check_totals(count: int, total: int, archive_bytes: int, limits: ArchiveLimits) -> None:
    if count > limits.max_entries:
        raise PayloadTooLarge(f"archive has more than {limits.max_entries:,} entries", field="file")
    if total > limits.max_total_bytes:
        raise PayloadTooLarge(
            f"archive expands to {total:,} bytes, over the limit of {limits.max_total_bytes:,}",
            field="file",
        )
    ratio = total / max(archive_bytes, 1)
    if ratio > limits.max_compression_ratio:
        raise InvalidInput(
            f"archive expands {ratio:.0f}x, over the compression-ratio limit of "
            f"{limits.max_compression_ratio:.0f}x (possible zip bomb)",
            field="file",
        )


def _wanted_text(name: str, size: int, limits: ArchiveLimits) -> bool:
    """Whether to read entry ``name`` as text: a small ``.csv``, ``.txt`` or ``.tsv``. A
    ``.csv`` (a label file) over ``max_text_bytes`` is refused; other big text is a
    readme, listed but not read."""
    lower = name.lower()
    if not lower.endswith(TEXT_SUFFIXES) or size <= limits.max_text_bytes:
        return lower.endswith(TEXT_SUFFIXES)
    if lower.endswith(LABEL_SUFFIX):
        raise PayloadTooLarge(
            f"archive entry {name!r} is {size:,} bytes; a label file may be at most "
            f"{limits.max_text_bytes:,} (max_label_file_bytes)",
            file=name,
        )
    return False


def _zip_entry_count(path: Path) -> int:
    """The entry count a zip's end record states, read without parsing its directory
    (which holds every entry in memory at once). zipfile has no public reader for it."""
    with path.open("rb") as handle:
        end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else 0  # type: ignore[attr-defined]


class _Listing:
    """Counts and totals of one archive as its entries are read."""

    def __init__(self, kind: str, path: Path, limits: ArchiveLimits) -> None:
        self.listing = ArchiveListing(kind=kind)
        self.archive_bytes = path.stat().st_size
        self.limits = limits
        self.count = self.total = 0
        self.current = ""  # the entry being read, named if it turns out broken

    def add(self, name: str, size: int) -> None:
        self.total += size
        _check_totals(self.count, self.total, self.archive_bytes, self.limits)
        self.listing.sizes[name] = size


def _list_zip(path: Path, state: _Listing) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            state.count += 1
            state.current = info.filename
            name = _normalise(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise InvalidInput(f"archive entry {info.filename!r} is a symlink", file=name)
            if info.is_dir() or _skip(name):
                continue
            state.add(name, info.file_size)
            if _wanted_text(name, info.file_size, state.limits):
                state.listing.texts[name] = archive.read(info)


def _list_tar(path: Path, state: _Listing) -> None:
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            state.count += 1
            state.current = member.name
            name = _normalise(member.name)
            if member.issym() or member.islnk():
                raise InvalidInput(f"archive entry {member.name!r} is a link", file=name)
            if member.isdir():
                continue
            if not member.isfile():
                raise InvalidInput(
                    f"archive entry {member.name!r} is not a regular file", file=name
                )
            if _skip(name):
                continue
            state.add(name, member.size)
            if _wanted_text(name, member.size, state.limits):
                handle = archive.extractfile(member)
                if handle is not None:
                    state.listing.texts[name] = handle.read()


def list_archive(path: Path, limits: ArchiveLimits) -> ArchiveListing:
    """Validate every entry of the archive at ``path`` and read its small text files."""
    kind = detect_kind(path)
    if kind == "zip" and _zip_entry_count(path) > limits.max_entries:
        raise PayloadTooLarge(f"archive has more than {limits.max_entries:,} entries", field="file")
    state = _Listing(kind, path, limits)
    try:
        (_list_zip if kind == "zip" else _list_tar)(path, state)
    except CORRUPT_ARCHIVE_ERRORS as exc:
        where = f" at entry {state.current!r}" if state.current else ""
        raise InvalidInput(
            f"archive is truncated or corrupt{where}: {exc}", field="file", file=state.current
        ) from exc
    _check_totals(state.count, state.total, state.archive_bytes, limits)
    if not state.listing.sizes:
        raise InvalidInput("archive contains no files", field="file")
    return state.listing


def extract_archive(path: Path, dest: Path, listing: ArchiveListing) -> None:
    """Extract the validated files of ``listing`` under ``dest``, counting real bytes."""
    budget = sum(listing.sizes.values())

    def copy(source, name: str) -> None:  # type: ignore[no-untyped-def]
        nonlocal budget
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            while chunk := source.read(1024 * 1024):
                budget -= len(chunk)
                if budget < 0:
                    raise InvalidInput(
                        f"archive entry {name!r} holds more bytes than its header says",
                        file=name,
                    )
                out.write(chunk)

    if listing.kind == "zip":
        with zipfile.ZipFile(path) as zipped:
            for info in zipped.infolist():
                name = _normalise(info.filename)
                if name in listing.sizes:
                    with zipped.open(info) as source:
                        copy(source, name)
    else:
        with tarfile.open(path, "r:*") as tarred:
            for member in tarred:
                name = _normalise(member.name)
                if member.isfile() and name in listing.sizes:
                    handle = tarred.extractfile(member)
                    if handle is not None:
                        with handle:
                            copy(handle, name)


def listing_from_directory(root: Path) -> ArchiveListing:
    """The same view of a directory already on disk (the demo dataset, local imports)."""
    listing = ArchiveListing(kind="directory")
    for file in sorted(root.rglob("*")):
        if file.is_file():
            name = file.relative_to(root).as_posix()
            listing.sizes[name] = file.stat().st_size
            if name.lower().endswith(TEXT_SUFFIXES):
                listing.texts[name] = file.read_bytes()
    return listing
