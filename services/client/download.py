"""Resumable downloads: a ``<dest>.part`` file continued with HTTP ``Range``, then verified.

A later attempt (after a dropped connection, or a later run of the same command) asks
for ``Range: bytes=N-`` with ``If-Range`` set to the ETag the first answer carried. A
``206`` whose ``Content-Range`` starts at N is appended; a ``200`` (a server without
ranges, or an archive that changed) restarts the file from zero; a ``416`` drops the
partial file and asks again for the whole. The finished file is checked against a digest
header when the server sends one (``Repr-Digest``, ``Digest`` or ``X-Checksum-SHA256``),
and a zip against its own manifest: every listed file present, every CRC good, and each
file's sha256 when the manifest has a ``sha256`` column.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from services.client.errors import DownloadError

CHUNK = 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class RestartDownload(httpx.TransportError):
    """The answer cannot continue the partial file, which is dropped; a transport error
    so the retry policy asks again (for the whole file)."""


@dataclass(frozen=True)
class DownloadResult:
    """A finished, verified download. ``verified_by`` says against what: ``digest``
    (a digest header), ``manifest-sha256`` (each file's sha256 in the manifest) or
    ``manifest-crc`` (every manifest file present with a good zip CRC)."""

    path: Path
    size: int
    sha256: str
    resumed: bool
    verified_by: list[str]


class PartialFile:
    """``dest.part`` and the ETag of the answer that started it (``dest.part.etag``)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        self.etag_file = dest.with_name(dest.name + ".part.etag")
        self.resumed = False
        self.total: int | None = None

    @property
    def offset(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def request_headers(self) -> dict[str, str]:
        # Identity encoding: a range then counts the archive's own bytes.
        headers = {"Accept-Encoding": "identity"}
        offset = self.offset
        if offset == 0:
            return headers
        headers["Range"] = f"bytes={offset}-"
        if self.etag_file.exists():
            headers["If-Range"] = self.etag_file.read_text().strip()
        return headers

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.etag_file.unlink(missing_ok=True)

    def open_for(self, response: httpx.Response) -> BinaryIO:
        """The file to write this answer's body to: appended for a matching 206,
        truncated for a 200. Records the total size (when known) and the ETag."""
        offset = self.offset
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                self.discard()  # not the bytes asked for: start over, from zero
                raise RestartDownload(
                    f"asked for bytes {offset}- but the server sent "
                    f"{response.headers.get('Content-Range')!r}"
                )
            self.total = None if match.group(3) == "*" else int(match.group(3))
            self.resumed = True
            handle = self.part.open("ab")
        else:
            length = response.headers.get("Content-Length")
            self.total = int(length) if length and length.isdigit() else None
            handle = self.part.open("wb")
        etag = response.headers.get("ETag")
        if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
            self.etag_file.write_text(etag)
        else:
            self.etag_file.unlink(missing_ok=True)
        return handle

    def finish(self, digest_headers: httpx.Headers) -> DownloadResult:
        size = self.offset
        if self.total is not None and size != self.total:
            raise DownloadError(f"got {size} bytes of {self.total}")
        sha = _file_sha256(self.part)
        checks = []
        expected = expected_sha256(digest_headers)
        if expected is not None:
            if expected != sha:
                self.discard()
                raise DownloadError(f"sha256 {sha} does not match the server's digest {expected}")
            checks.append("digest")
        if zipfile.is_zipfile(self.part):
            checks += verify_zip_manifest(self.part)
        self.part.replace(self.dest)
        self.etag_file.unlink(missing_ok=True)
        return DownloadResult(self.dest, size, sha, self.resumed, checks)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(headers: httpx.Headers) -> str | None:
    """The whole body's sha256 (hex) from ``Repr-Digest: sha-256=:b64:`` (RFC 9530),
    ``Digest: SHA-256=b64`` (RFC 3230) or ``X-Checksum-SHA256`` (hex or base64)."""
    for name in ("Repr-Digest", "Digest"):
        for item in headers.get(name, "").split(","):
            algorithm, _, value = item.strip().partition("=")
            if algorithm.strip().lower() == "sha-256" and value:
                return _hex(value.strip().strip(":"))
    value = headers.get("X-Checksum-SHA256")
    return _hex(value.strip()) if value else None


def _hex(value: str) -> str:
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError) as exc:
        raise DownloadError(f"unreadable sha-256 digest {value!r}") from exc


def verify_zip_manifest(path: Path) -> list[str]:
    """Check a curated-set zip against its ``manifest.csv``; returns what was checked."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise DownloadError(f"{path.name}: {bad} fails its CRC check")
        names = set(archive.namelist())
        if "manifest.csv" not in names:
            return ["zip-crc"]
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open("manifest.csv"), "utf-8")))
        missing = [row["file"] for row in rows if row.get("file") not in names]
        if missing:
            raise DownloadError(f"{len(missing)} manifest file(s) missing, e.g. {missing[0]}")
        if not rows or "sha256" not in rows[0]:
            return ["manifest-crc"]
        for row in rows:
            actual = hashlib.sha256(archive.read(row["file"])).hexdigest()
            if actual != row["sha256"].lower():
                raise DownloadError(f"{row['file']}: sha256 {actual}, manifest {row['sha256']}")
        return ["manifest-sha256"]
