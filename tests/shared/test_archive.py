from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from shared.errors import InvalidInput, PayloadTooLarge
from shared.ingest.archive import ArchiveLimits, extract_archive, list_archive
from tests.fixtures.archives import write_tar_gz, write_zip

LIMITS = ArchiveLimits(max_entries=100, max_total_bytes=10_000_000, max_compression_ratio=100)


def test_zip_and_tar_list_the_same_files(tmp_path: Path) -> None:
    files = {"a/x.png": b"1" * 10, "a/labels.csv": b"path,label\n", "__MACOSX/a/._x.png": b"junk"}
    for archive in (
        write_zip(tmp_path / "d.zip", files),
        write_tar_gz(tmp_path / "d.tar.gz", files),
    ):
        listing = list_archive(archive, LIMITS)
        assert set(listing.sizes) == {"a/x.png", "a/labels.csv"}
        assert listing.texts["a/labels.csv"] == b"path,label\n"
        out = tmp_path / f"out-{archive.name}"
        extract_archive(archive, out, listing)
        assert (out / "a/x.png").read_bytes() == b"1" * 10


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/passwd"])
def test_escaping_paths_are_refused(tmp_path: Path, name: str) -> None:
    for archive in (
        write_zip(tmp_path / "d.zip", {name: b"x"}),
        write_tar_gz(tmp_path / "d.tgz", {name: b"x"}),
    ):
        with pytest.raises(InvalidInput, match="absolute|climbs out"):
            list_archive(archive, LIMITS)


def test_symlinks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "links.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        link = tarfile.TarInfo("a/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(InvalidInput, match="link") as info:
        list_archive(path, LIMITS)
    assert info.value.extra["file"] == "a/link.png"

    zpath = tmp_path / "links.zip"
    with zipfile.ZipFile(zpath, "w") as archive:
        entry = zipfile.ZipInfo("a/link.png")
        entry.external_attr = 0o120777 << 16
        archive.writestr(entry, "/etc/passwd")
    with pytest.raises(InvalidInput, match="symlink"):
        list_archive(zpath, LIMITS)


def test_entry_count_total_size_and_ratio_limits(tmp_path: Path) -> None:
    many = write_zip(tmp_path / "many.zip", {f"f{i}.png": b"x" for i in range(101)})
    with pytest.raises(PayloadTooLarge, match="entries"):
        list_archive(many, LIMITS)
    big = write_zip(tmp_path / "big.zip", {"a.bin": bytes(range(256)) * 50_000})
    with pytest.raises(PayloadTooLarge, match="expands to"):
        list_archive(big, ArchiveLimits(100, 1_000_000, 1e9))
    bomb = write_zip(tmp_path / "bomb.zip", {"zeros.png": b"\0" * 5_000_000})
    with pytest.raises(InvalidInput, match="compression-ratio"):
        list_archive(bomb, LIMITS)


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "plain.bin"
    path.write_bytes(io.BytesIO(b"hello world").getvalue())
    with pytest.raises(InvalidInput, match="neither a zip nor a tar"):
        list_archive(path, LIMITS)
