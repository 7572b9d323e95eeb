"""The built-in demo dataset: proportions, determinism, masks, groups, files, looks."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from shared.demo_dataset import (
    DEMO_CLASSES,
    DEMO_PNG_KEY,
    ISIC2019_COUNTS,
    DemoDatasetCanceled,
    demo_class_counts,
    demo_plan,
    generate_demo_samples,
    load_demo_arrays,
    render_demo_image,
    write_demo_dataset,
)
from shared.imaging import SYNTHETIC_KEY, decode_image, read_png_text

TINY_TOTAL = 48  # 8 classes x the minimum of 5, plus a few for the head
TINY_SIZE = 32


@pytest.fixture(scope="module")
def tiny_samples() -> list:
    return list(generate_demo_samples(TINY_TOTAL, TINY_SIZE, seed=3))


def test_class_counts_follow_isic2019_proportions_at_the_default_total() -> None:
    counts = demo_class_counts(2400)

    assert tuple(counts) == DEMO_CLASSES
    assert sum(counts.values()) == 2400
    isic_total = sum(ISIC2019_COUNTS.values())
    for name, count in counts.items():
        assert abs(count - 2400 * ISIC2019_COUNTS[name] / isic_total) < 1.0
    assert counts["DF"] >= 20
    assert counts["NV"] / counts["DF"] >= 50
    assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_class_counts_raise_rare_classes_to_the_minimum_and_keep_the_total() -> None:
    counts = demo_class_counts(100)

    assert sum(counts.values()) == 100
    assert min(counts.values()) == 5
    assert counts["NV"] == max(counts.values())
    assert demo_class_counts(100, min_per_class=8)["DF"] == 8


def test_class_counts_refuse_a_total_too_small_for_every_class() -> None:
    with pytest.raises(ValueError, match="too small"):
        demo_class_counts(39)


def test_plan_labels_match_the_class_counts_and_interleave() -> None:
    plan = demo_plan(2400, seed=0)

    counts = demo_class_counts(2400)
    assert np.bincount(plan.labels, minlength=8).tolist() == list(counts.values())
    # Shuffled: the rarest class is not packed at the end.
    assert np.flatnonzero(plan.labels == DEMO_CLASSES.index("DF")).min() < 1200


def test_patient_groups_hold_several_images_of_one_class() -> None:
    plan = demo_plan(2400, seed=0)

    sizes = np.bincount(plan.patients)
    assert sizes.min() >= 1 and sizes.max() <= 5
    assert sizes.mean() > 2.0
    assert (sizes[plan.patients] >= 2).mean() > 0.8  # most images share their patient
    for patient in range(0, sizes.size, 37):
        assert np.unique(plan.labels[plan.patients == patient]).size == 1
    # Numbered by first appearance, so a group id does not give the class away.
    _, first_seen = np.unique(plan.patients, return_index=True)
    assert np.all(np.diff(first_seen) > 0)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tiny_samples: list) -> None:
    again = list(generate_demo_samples(TINY_TOTAL, TINY_SIZE, seed=3))
    other = list(generate_demo_samples(TINY_TOTAL, TINY_SIZE, seed=4))

    for first, second in zip(tiny_samples, again, strict=True):
        assert first.image.tobytes() == second.image.tobytes()
        assert first.mask.tobytes() == second.mask.tobytes()
        assert (first.label, first.group, first.image_id) == (
            second.label,
            second.group,
            second.image_id,
        )
    differing = sum(
        a.image.tobytes() != b.image.tobytes() for a, b in zip(tiny_samples, other, strict=True)
    )
    assert differing == TINY_TOTAL
    assert [s.label for s in tiny_samples] != [s.label for s in other]


def test_each_image_can_be_drawn_alone_in_any_order(tiny_samples: list) -> None:
    plan = demo_plan(TINY_TOTAL, seed=3)
    for index in (TINY_TOTAL - 1, 0, 17):
        label = DEMO_CLASSES[int(plan.labels[index])]
        image, mask = render_demo_image(label, int(plan.patients[index]), index, TINY_SIZE, 3)
        assert np.array_equal(image, tiny_samples[index].image)
        assert np.array_equal(mask, tiny_samples[index].mask)


def test_worker_processes_draw_the_same_samples(tiny_samples: list) -> None:
    parallel = list(generate_demo_samples(TINY_TOTAL, TINY_SIZE, seed=3, workers=2))

    assert [s.index for s in parallel] == list(range(TINY_TOTAL))
    for first, second in zip(tiny_samples, parallel, strict=True):
        assert np.array_equal(first.image, second.image)
        assert np.array_equal(first.mask, second.mask)
        assert (first.label, first.group) == (second.label, second.group)


def test_samples_have_the_declared_shapes_types_and_ids(tiny_samples: list) -> None:
    assert [s.index for s in tiny_samples] == list(range(TINY_TOTAL))
    assert len({s.image_id for s in tiny_samples}) == TINY_TOTAL
    for sample in tiny_samples:
        assert sample.image.shape == (TINY_SIZE, TINY_SIZE, 3)
        assert sample.image.dtype == np.uint8
        assert sample.mask.shape == (TINY_SIZE, TINY_SIZE)
        assert sample.mask.dtype == np.uint8
        assert sample.label in DEMO_CLASSES
    assert Counter(s.label for s in tiny_samples) == Counter(demo_class_counts(TINY_TOTAL))


def test_masks_are_binary_non_empty_and_inside_the_image(tiny_samples: list) -> None:
    for sample in tiny_samples:
        assert set(np.unique(sample.mask).tolist()) == {0, 255}
        area = (sample.mask > 0).mean()
        assert 0.01 < area < 0.6
        border = np.concatenate(
            [sample.mask[0], sample.mask[-1], sample.mask[:, 0], sample.mask[:, -1]]
        )
        assert not border.any()


def test_mask_covers_the_lesion_not_the_skin(tiny_samples: list) -> None:
    """Inside the mask the colour differs from a ring of skin just outside it."""
    contrasts = []
    for sample in tiny_samples:
        lesion = sample.mask > 0
        ring = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(
            lesion, iterations=1
        )
        pixels = sample.image.astype(np.float64)
        contrasts.append(np.abs(pixels[lesion].mean(0) - pixels[ring].mean(0)).max())
    contrasts_array = np.array(contrasts)
    assert np.median(contrasts_array) > 15  # grey levels out of 255
    assert (contrasts_array > 5).mean() > 0.8


def test_same_sample_at_two_resolutions_shows_the_same_lesion() -> None:
    plan = demo_plan(TINY_TOTAL, seed=0)
    label, patient = DEMO_CLASSES[int(plan.labels[5])], int(plan.patients[5])
    _, small = render_demo_image(label, patient, 5, 32, 0)
    _, large = render_demo_image(label, patient, 5, 64, 0)

    downsampled = large.reshape(32, 2, 32, 2).mean(axis=(1, 3)) > 127
    overlap = (downsampled & (small > 0)).sum() / (downsampled | (small > 0)).sum()
    assert overlap > 0.85


def _mean_lesion_colour(label: str, count: int) -> np.ndarray:
    """Mean RGB inside the mask over ``count`` images of ``label`` (seed 0, 32 px)."""
    plan = demo_plan(2400, seed=0)
    indices = np.flatnonzero(plan.labels == DEMO_CLASSES.index(label))[:count]
    colours = []
    for index in indices:
        image, mask = render_demo_image(label, int(plan.patients[index]), int(index), 32, 0)
        colours.append(image[mask > 0].astype(np.float64).mean(axis=0))
    return np.mean(colours, axis=0)


def test_classes_differ_in_mean_lesion_colour() -> None:
    colour = {name: _mean_lesion_colour(name, 12) for name in ("NV", "MEL", "VASC", "AK", "DF")}

    def redness(rgb: np.ndarray) -> float:
        return float(rgb[0] - rgb[1])

    # Melanoma is darker than naevi; vascular lesions and actinic keratoses are redder.
    assert colour["MEL"].mean() < colour["NV"].mean() - 5
    assert redness(colour["VASC"]) > redness(colour["NV"]) + 10
    assert redness(colour["AK"]) > redness(colour["NV"]) + 5
    # The white centre of dermatofibromas makes them lighter than melanomas.
    assert colour["DF"].mean() > colour["MEL"].mean() + 10


def test_load_demo_arrays_matches_the_samples_and_reports_progress(tiny_samples: list) -> None:
    calls: list[tuple[int, int]] = []
    data = load_demo_arrays(
        TINY_TOTAL, TINY_SIZE, seed=3, progress=lambda d, t: calls.append((d, t))
    )

    assert data.images.shape == (TINY_TOTAL, TINY_SIZE, TINY_SIZE, 3)
    assert data.masks.shape == (TINY_TOTAL, TINY_SIZE, TINY_SIZE)
    assert data.labels.dtype == np.int64
    assert data.class_names == DEMO_CLASSES
    for sample in tiny_samples:
        assert np.array_equal(data.images[sample.index], sample.image)
        assert np.array_equal(data.masks[sample.index], sample.mask)
        assert data.class_names[data.labels[sample.index]] == sample.label
        assert data.groups[sample.index] == sample.group
    assert calls[0] == (1, TINY_TOTAL) and calls[-1] == (TINY_TOTAL, TINY_TOTAL)


def test_cancel_stops_loading() -> None:
    polls = iter(range(100))
    with pytest.raises(DemoDatasetCanceled):
        load_demo_arrays(TINY_TOTAL, TINY_SIZE, should_cancel=lambda: next(polls) >= 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_written_files_match_the_manifest(tmp_path: Path, tiny_samples: list, workers: int) -> None:
    manifest = write_demo_dataset(tmp_path / "demo", TINY_TOTAL, TINY_SIZE, seed=3, workers=workers)

    assert manifest == tmp_path / "demo" / "manifest.csv"
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["path", "label", "mask", "group"]
        rows = list(reader)
    assert len(rows) == TINY_TOTAL
    assert not (tmp_path / "demo" / "manifest.csv.partial").exists()
    for row, sample in zip(rows, tiny_samples, strict=True):
        image_bytes = (manifest.parent / row["path"]).read_bytes()
        mask_bytes = (manifest.parent / row["mask"]).read_bytes()
        assert np.array_equal(decode_image(image_bytes).pixels, sample.image)
        assert np.array_equal(decode_image(mask_bytes).pixels, sample.mask)
        assert (row["label"], row["group"]) == (sample.label, sample.group)
        assert row["path"] == f"images/{sample.image_id}.png"
        text = read_png_text(image_bytes)
        assert SYNTHETIC_KEY not in text  # real data as far as the pipeline is concerned
        assert f"index={sample.index}" in text[DEMO_PNG_KEY]
    assert len(list((manifest.parent / "images").iterdir())) == TINY_TOTAL


def test_render_refuses_unknown_class_and_tiny_images() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        render_demo_image("ACK", 0, 0, 32, 0)
    with pytest.raises(ValueError, match="image_size"):
        render_demo_image("NV", 0, 0, 8, 0)
