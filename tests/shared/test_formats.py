from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shared.errors import InvalidInput
from shared.ingest.archive import ArchiveLimits, list_archive
from shared.ingest.formats import build_plan, detect_format
from tests.fixtures.archives import build, samples, write_zip

LIMITS = ArchiveLimits(max_entries=10_000, max_total_bytes=10**9, max_compression_ratio=1000)


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    return samples(total=40, image_size=16)


@pytest.mark.parametrize("kind", ["csv", "isic2019", "ham10000", "imagefolder"])
def test_each_format_is_detected_and_planned(kind: str, tmp_path: Path, demo) -> None:  # type: ignore[no-untyped-def]
    built = build(kind, tmp_path, demo, tar=kind == "imagefolder")
    listing = list_archive(built.path, LIMITS)
    assert detect_format(listing) == kind
    plan = build_plan(listing)
    assert plan.format == kind
    assert Counter(row.label for row in plan.rows) == built.expected_counts
    if kind in ("csv", "isic2019"):
        assert all(row.mask_path for row in plan.rows)
        assert all(row.group for row in plan.rows)
    if kind == "ham10000":
        assert all(row.group for row in plan.rows)


def _manifest(tmp_path: Path, body: str, files: dict[str, bytes] | None = None) -> Path:
    return write_zip(
        tmp_path / "m.zip", {"manifest.csv": body.encode(), "a.png": b"x", **(files or {})}
    )


def test_manifest_rows_naming_missing_files_report_their_lines(tmp_path: Path) -> None:
    archive = _manifest(tmp_path, "path,label\na.png,NV\nmissing.png,MEL\nb.png,DF\n")
    with pytest.raises(InvalidInput) as info:
        build_plan(list_archive(archive, LIMITS), "csv")
    assert "line 3" in info.value.detail and "missing.png" in info.value.detail
    assert "line 4" in info.value.detail and info.value.extra["file"] == "manifest.csv"


def test_unknown_classes_are_refused_with_line_numbers(tmp_path: Path) -> None:
    archive = _manifest(tmp_path, "path,label\na.png,NV\na.png,XYZ\n")
    with pytest.raises(InvalidInput, match=r"line 3: unknown class 'XYZ'"):
        build_plan(list_archive(archive, LIMITS), "csv", classes=["NV", "MEL"])


def test_ham10000_unknown_dx_is_refused(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "h.zip",
        {
            "meta.csv": b"lesion_id,image_id,dx\nL1,img1,nv\nL2,img2,cancer\n",
            "img1.png": b"x",
            "img2.png": b"y",
        },
    )
    with pytest.raises(InvalidInput, match="line 3: unknown class 'cancer'"):
        build_plan(list_archive(archive, LIMITS), "ham10000")


def test_isic_rows_need_exactly_one_class(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "i.zip",
        {"gt.csv": b"image,MEL,NV\nA,1.0,1.0\nB,0.0,1.0\n", "A.jpg": b"x", "B.jpg": b"y"},
    )
    with pytest.raises(InvalidInput, match="line 2: image 'A' has 2 classes set"):
        build_plan(list_archive(archive, LIMITS), "isic2019")


def test_manifest_split_column_is_taken_as_given(tmp_path: Path) -> None:
    archive = _manifest(
        tmp_path,
        "path,label,split\na.png,NV,train\nb.png,DF,test\n",
        {"b.png": b"y"},
    )
    plan = build_plan(list_archive(archive, LIMITS), "csv")
    assert plan.has_given_splits and [r.split for r in plan.rows] == ["train", "test"]
    bad = _manifest(
        tmp_path, "path,label,split\na.png,NV,holdout\nb.png,DF,test\n", {"b.png": b"y"}
    )
    with pytest.raises(InvalidInput, match="line 2: split 'holdout'"):
        build_plan(list_archive(bad, LIMITS), "csv")


def test_unknown_format_and_undetectable_archives(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "flat.zip", {"a.png": b"x", "b.png": b"y"})
    listing = list_archive(archive, LIMITS)
    with pytest.raises(InvalidInput, match="could not detect"):
        build_plan(listing)
    with pytest.raises(InvalidInput, match="unknown format 'dicom'"):
        build_plan(listing, "dicom")


def test_imagefolder_with_split_folders(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "f.zip",
        {
            "root/train/NV/a.png": b"1",
            "root/train/DF/b.png": b"2",
            "root/test/NV/c.png": b"3",
            "root/val/DF/d.png": b"4",
        },
    )
    plan = build_plan(list_archive(archive, LIMITS), "imagefolder")
    assert plan.has_given_splits
    assert {(r.label, r.split) for r in plan.rows} == {
        ("NV", "train"),
        ("DF", "train"),
        ("NV", "test"),
        ("DF", "val"),
    }
