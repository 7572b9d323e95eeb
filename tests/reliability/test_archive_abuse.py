"""(11) Hostile uploads: zip bombs, ratio bombs, lying headers, path slips, symlinks,
truncated and corrupt archives, an over-large label file. Each is answered with a 4xx
problem naming the field or entry, within 1 s and 100 MB of memory growth in the API
process (peak RSS sampled during the request), before anything is stored or queued."""

from __future__ import annotations

import io
import random
import struct
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from shared.settings import Settings
from tests.conftest import ApiHarness
from tests.fixtures.curated import harness

pytestmark = pytest.mark.reliability

MAX_SECONDS = 1.0
MAX_GROWTH_MB = 100.0
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # listed, never decoded by the pre-flight check


@pytest.fixture(scope="module")
def api(service_settings: Settings) -> Iterator[ApiHarness]:
    yield from harness(service_settings)


@pytest.fixture(scope="module")
def few_entries_api(service_settings: Settings) -> Iterator[ApiHarness]:
    """max_archive_entries 1,000, so that a many-entries bomb stays quick to build."""
    yield from harness(service_settings.model_copy(update={"max_archive_entries": 1_000}))


@dataclass
class Answer:
    status: int
    body: dict[str, object]
    seconds: float
    growth_mb: float


class PeakRss:
    """The process's peak resident memory above its level at the start, sampled every
    2 ms from a thread (the API runs in this process under the TestClient)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.start = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.002)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6


def upload(api: ApiHarness, archive: Path) -> Answer:
    data = archive.read_bytes()
    with PeakRss() as rss:
        started = time.monotonic()
        answer = api.client.post(
            "/v1/datasets",
            data={"name": archive.stem},
            files={"file": (archive.name, data, "application/octet-stream")},
        )
        seconds = time.monotonic() - started
    return Answer(answer.status_code, answer.json(), seconds, rss.growth_mb)


# ----------------------------------------------------------------- hostile archives


def zip_of(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def tar_of(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            payload = data.get(member.name)
            archive.addfile(member, io.BytesIO(payload) if payload is not None else None)
    return path


def zip_bomb(path: Path) -> Path:
    """256 MB of zeros in one entry, deflated to about 260 kB (ratio ~1,000)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("NV/zeros.png", "w") as entry:
            block = bytes(1 << 20)
            for _ in range(256):
                entry.write(block)
        archive.writestr("MEL/a.png", PNG)
    return path


def ratio_bomb(path: Path) -> Path:
    """40 entries of 2 MB of zeros: each modest, together 80 MB from about 80 kB."""
    return zip_of(path, {f"NV/{i}.png": bytes(2_000_000) for i in range(40)} | {"MEL/a.png": PNG})


def tar_ratio_bomb(path: Path) -> Path:
    zeros = bytes(64_000_000)
    member = tarfile.TarInfo("NV/zeros.png")
    member.size = len(zeros)
    return tar_of(path, [member], {"NV/zeros.png": zeros})


def lying_header(path: Path) -> Path:
    """A small entry whose central directory claims 4 GB uncompressed."""
    zip_of(path, {"NV/a.png": PNG, "MEL/b.png": PNG})
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 4_000_000_000)
    path.write_bytes(bytes(raw))
    return path


def many_entries(path: Path) -> Path:
    """5,000 empty entries against a limit of 1,000."""
    return zip_of(path, {f"NV/{i}.png": b"" for i in range(5_000)}, zipfile.ZIP_STORED)


def slip(name: str) -> Callable[[Path], Path]:
    return lambda path: zip_of(path, {name: PNG, "MEL/a.png": PNG})


def tar_slip(path: Path) -> Path:
    member = tarfile.TarInfo("../../etc/cron.d/evil")
    member.size = len(PNG)
    return tar_of(path, [member], {member.name: PNG})


def zip_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        link = zipfile.ZipInfo("NV/a.png")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("MEL/b.png", PNG)
    return path


def tar_link(kind: bytes) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        link = tarfile.TarInfo("NV/a.png")
        link.type = kind
        link.linkname = "/etc/passwd"
        return tar_of(path, [link], {})

    return build


def truncated_zip(path: Path) -> Path:
    zip_of(path, {f"NV/{i}.png": PNG for i in range(20)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def truncated_tar(path: Path) -> Path:
    """Noise (which gzip cannot shrink, so no ratio check fires first), cut in half."""
    noise = random.Random(0)
    members = []
    data = {}
    for i in range(20):
        member = tarfile.TarInfo(f"NV/{i}.png")
        payload = noise.randbytes(20_000)
        member.size = len(payload)
        members.append(member)
        data[member.name] = payload
    tar_of(path, members, data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def corrupt_label_file(path: Path) -> Path:
    """The label CSV's stored bytes altered: its CRC no longer matches."""
    labels = b"path,label\nNV/a.png,NV\nMEL/b.png,MEL\n" * 20
    zip_of(path, {"manifest.csv": labels, "NV/a.png": PNG, "MEL/b.png": PNG}, zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"NV/a.png,NV")
    raw[at : at + 2] = b"XX"
    path.write_bytes(bytes(raw))
    return path


def oversized_label_file(path: Path) -> Path:
    """A 17 MB label CSV (the default cap is 16 MiB), stored so the ratio is ~1."""
    row = b"NV/a.png,NV\n"
    labels = b"path,label\n" + row * (17_000_000 // len(row))
    return zip_of(path, {"manifest.csv": labels, "NV/a.png": PNG}, zipfile.ZIP_STORED)


def row_bomb(path: Path) -> Path:
    """A 16 MB label CSV of 4-byte rows (4 million rows, under the size cap), deflated,
    beside 250 kB of noise stored so that the archive's ratio stays under 100."""
    labels = b"path,label\n" + b"a,b\n" * 4_000_000
    files = {"manifest.csv": labels, "NV/a.png": PNG, "MEL/b.png": PNG}
    zip_of(path, files)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr("noise.bin", random.Random(1).randbytes(250_000))
    return path


CASES: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    # name: (builder, status, text the detail must hold)
    "zip bomb": (zip_bomb, 422, "compression-ratio"),
    "ratio bomb": (ratio_bomb, 422, "compression-ratio"),
    "tar.gz ratio bomb": (tar_ratio_bomb, 422, "compression-ratio"),
    "lying header": (lying_header, 422, "compression-ratio"),
    "slip ../": (slip("../evil.png"), 422, "climbs out"),
    "slip a/../../": (slip("NV/../../evil.png"), 422, "climbs out"),
    "slip backslash": (slip("..\\..\\evil.png"), 422, "climbs out"),
    "absolute path": (slip("/etc/evil.png"), 422, "absolute"),
    "tar slip": (tar_slip, 422, "climbs out"),
    "zip symlink": (zip_symlink, 422, "symlink"),
    "tar symlink": (tar_link(tarfile.SYMTYPE), 422, "link"),
    "tar hard link": (tar_link(tarfile.LNKTYPE), 422, "link"),
    "truncated zip": (truncated_zip, 422, "neither a zip nor a tar"),
    "truncated tar.gz": (truncated_tar, 422, "truncated or corrupt"),
    "corrupt label file": (corrupt_label_file, 422, "truncated or corrupt"),
    "over-large csv": (oversized_label_file, 413, "max_label_file_bytes"),
    "csv row bomb": (row_bomb, 422, "rows, far more than the archive has files"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_archive_is_refused_quickly_and_in_bounded_memory(
    api: ApiHarness, tmp_path: Path, case: str
) -> None:
    build, status, text = CASES[case]
    archive = build(tmp_path / "hostile.bin")
    answer = upload(api, archive)

    print(  # noqa: T201
        f"{case}: {answer.status} in {answer.seconds * 1000:.0f} ms, "
        f"+{answer.growth_mb:.1f} MB RSS, upload {archive.stat().st_size:,} bytes"
    )
    assert answer.status == status, answer.body
    assert text in str(answer.body["detail"]), answer.body
    assert answer.body.get("file") or answer.body.get("field"), answer.body
    assert answer.seconds < MAX_SECONDS
    assert answer.growth_mb < MAX_GROWTH_MB


def test_many_entries_bomb_is_refused_before_its_directory_is_read(
    few_entries_api: ApiHarness, tmp_path: Path
) -> None:
    answer = upload(few_entries_api, many_entries(tmp_path / "many.zip"))
    print(  # noqa: T201
        f"many entries: {answer.status} in {answer.seconds * 1000:.0f} ms, "
        f"+{answer.growth_mb:.1f} MB RSS"
    )
    assert answer.status == 413 and "entries" in str(answer.body["detail"])
    assert answer.seconds < MAX_SECONDS and answer.growth_mb < MAX_GROWTH_MB
