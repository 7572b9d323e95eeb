"""The built-in demo dataset: proportions, determinism, masks, groups, files, looks;
the extreme-tail option (``imbalance``) and the chest X-ray variant."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from shared.demo_dataset import (
    CHEST_XRAY_CLASSES,
    DEMO_CLASSES,
    DEMO_PNG_KEY,
    ISIC2019_COUNTS,
    DemoDatasetCanceled,
    demo_class_counts,
    demo_group_id,
    demo_plan,
    generate_demo_samples,
    load_demo_arrays,
    render_demo_image,
    write_demo_dataset,
)
from shared.imaging import SYNTHETIC_KEY, decode_image, read_png_text
from shared.ingest.splits import assign_splits

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


def test_default_plan_is_pinned() -> None:
    """The default ISIC plan is what it always was (the new options left it alone)."""
    plan = demo_plan(2400, seed=0)
    digest = hashlib.sha256(plan.labels.tobytes() + plan.patients.tobytes()).hexdigest()

    assert digest == "620a6f8ad697358e2129bdb3bb58b07accd9e9ffbcdd469425d3cd9177f3e90b"
    assert plan.class_names == DEMO_CLASSES


# ---------------------------------------------------------------- extreme tail


def _geometric_quota(total: int, imbalance: float) -> np.ndarray:
    k = np.arange(8) / 7
    weights = imbalance**-k
    return total * weights / weights.sum()


def test_imbalance_gives_a_geometric_tail_with_the_asked_head_to_rarest_ratio() -> None:
    counts = list(demo_class_counts(1000, imbalance=100).values())
    quota = _geometric_quota(1000, 100)

    assert sum(counts) == 1000
    assert quota[0] / quota[-1] == pytest.approx(100)
    assert np.all(np.abs(np.array(counts) - quota) < 1.0)  # largest-remainder rounding
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > 400 and counts[-1] <= 6
    assert 80 <= counts[0] / counts[-1] <= 120
    # Each class has about imbalance ** (-1/7) of the one before it.
    ratios = np.array(counts[1:]) / np.array(counts[:-1])
    assert np.all(np.abs(ratios - 100 ** (-1 / 7)) < 0.1)


def test_imbalance_one_is_uniform_and_none_is_isic() -> None:
    assert set(demo_class_counts(800, imbalance=1).values()) == {100}
    assert demo_class_counts(2400, imbalance=None) == demo_class_counts(2400)


def test_extreme_imbalance_is_floored_at_min_per_class() -> None:
    counts = demo_class_counts(1000, imbalance=1000, min_per_class=3)

    assert sum(counts.values()) == 1000
    assert min(counts.values()) == 3
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    # The floor makes several classes tiny: the extreme tail the option is for.
    assert sum(1 for n in counts.values() if n <= 5) >= 3
    floored = demo_class_counts(1000, imbalance=1000, min_per_class=4)
    assert min(floored.values()) == 4 and sum(floored.values()) == 1000


def test_imbalance_is_validated() -> None:
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="imbalance"):
            demo_class_counts(1000, imbalance=bad)
    with pytest.raises(ValueError, match="too small"):
        demo_class_counts(30, imbalance=10, min_per_class=4)


def test_imbalanced_plan_matches_counts_and_gives_rare_classes_one_patient_per_image() -> None:
    plan = demo_plan(1000, seed=2, imbalance=1000, min_per_class=4)
    counts = demo_class_counts(1000, imbalance=1000, min_per_class=4)

    assert np.bincount(plan.labels, minlength=8).tolist() == list(counts.values())
    for klass, count in enumerate(counts.values()):
        patients = np.unique(plan.patients[plan.labels == klass])
        assert patients.size >= min(count, 5)
        if count < 10:
            assert patients.size == count
    for patient in np.unique(plan.patients):
        assert np.unique(plan.labels[plan.patients == patient]).size == 1


def test_grouped_split_keeps_training_images_of_the_rarest_classes() -> None:
    """What ``shared.ingest.splits`` does with the tail: a class of n < 10 images (one
    patient each) gets exactly one val and one test image and n - 2 training images, so
    5 images leave 3 in train, 4 leave 2 and 3 (the API's smallest ``min_per_class``)
    leave 1."""
    counts = demo_class_counts(1000, imbalance=1000, min_per_class=4)
    assert sorted(counts.values())[:3] == [4, 4, 5]
    for seed in (0, 1):
        plan = demo_plan(1000, seed, imbalance=1000, min_per_class=4)
        labels = [plan.class_names[k] for k in plan.labels]
        groups = [demo_group_id(int(p), seed) for p in plan.patients]
        for split_seed in range(4):
            splits = assign_splits(labels, groups, split_seed)
            for name, n in counts.items():
                if n >= 10:
                    continue
                of_class = Counter(s for lab, s in zip(labels, splits, strict=True) if lab == name)
                assert of_class["val"] >= 1 and of_class["test"] >= 1, (name, of_class)
                assert of_class["train"] == n - 2 >= 2, (name, of_class)
    tiny = demo_plan(600, 0, imbalance=1000, min_per_class=3)
    labels = [tiny.class_names[k] for k in tiny.labels]
    splits = assign_splits(labels, [demo_group_id(int(p), 0) for p in tiny.patients], 0)
    per_class = Counter((lab, s) for lab, s in zip(labels, splits, strict=True))
    assert per_class[("DF", "train")] == 1 and per_class[("DF", "test")] == 1


def test_imbalanced_samples_follow_the_plan() -> None:
    samples = list(generate_demo_samples(60, 16, seed=1, imbalance=50, min_per_class=3))

    assert Counter(s.label for s in samples) == Counter(
        demo_class_counts(60, imbalance=50, min_per_class=3)
    )
    assert all(s.image.shape == (16, 16, 3) for s in samples)


# ---------------------------------------------------------------- chest X-rays

CXR_TOTAL = 40
CXR_SIZE = 32


@pytest.fixture(scope="module")
def cxr_samples() -> list:
    return list(
        generate_demo_samples(
            CXR_TOTAL, CXR_SIZE, seed=5, variant="chest_xray", positive_fraction=0.3
        )
    )


def test_chest_xray_counts_are_binary_with_a_few_percent_positives() -> None:
    counts = demo_class_counts(4000, variant="chest_xray")

    assert tuple(counts) == CHEST_XRAY_CLASSES == ("normal", "opacity")
    assert counts == {"normal": 3800, "opacity": 200}
    assert demo_class_counts(1000, variant="chest_xray", positive_fraction=0.2)["opacity"] == 200
    assert demo_class_counts(40, variant="chest_xray")["opacity"] == 5  # floored
    for bad in (0.0, 0.5, 0.7):
        with pytest.raises(ValueError, match="positive_fraction"):
            demo_class_counts(1000, variant="chest_xray", positive_fraction=bad)
    with pytest.raises(ValueError, match="imbalance"):
        demo_class_counts(1000, variant="chest_xray", imbalance=10)
    with pytest.raises(ValueError, match="variant"):
        demo_class_counts(1000, variant="fundus")


def test_chest_xray_plan_has_positives_at_the_fraction_and_small_patient_groups() -> None:
    plan = demo_plan(4000, seed=0, variant="chest_xray")

    assert plan.class_names == CHEST_XRAY_CLASSES
    assert plan.labels.mean() == pytest.approx(0.05, abs=0.002)
    sizes = np.bincount(plan.patients)
    assert sizes.min() >= 1 and sizes.max() <= 3
    assert np.flatnonzero(plan.labels == 1).min() < 200  # interleaved
    for patient in range(0, sizes.size, 29):
        assert np.unique(plan.labels[plan.patients == patient]).size == 1


def test_chest_xrays_are_grayscale_deterministic_and_drawable_alone(cxr_samples: list) -> None:
    again = list(
        generate_demo_samples(
            CXR_TOTAL, CXR_SIZE, seed=5, variant="chest_xray", positive_fraction=0.3
        )
    )
    assert {s.label for s in cxr_samples} == set(CHEST_XRAY_CLASSES)
    assert Counter(s.label for s in cxr_samples)["opacity"] == 12
    for first, second in zip(cxr_samples, again, strict=True):
        assert first.image.shape == (CXR_SIZE, CXR_SIZE) and first.image.dtype == np.uint8
        assert first.image.tobytes() == second.image.tobytes()
        assert first.mask.tobytes() == second.mask.tobytes()
        assert first.image_id.startswith("demo_cxr_s5_") and first.group.startswith("demo_cxr_s5_p")
    plan = demo_plan(CXR_TOTAL, seed=5, variant="chest_xray", positive_fraction=0.3)
    for index in (CXR_TOTAL - 1, 3):
        label = plan.class_names[int(plan.labels[index])]
        image, mask = render_demo_image(
            label, int(plan.patients[index]), index, CXR_SIZE, 5, variant="chest_xray"
        )
        assert np.array_equal(image, cxr_samples[index].image)
        assert np.array_equal(mask, cxr_samples[index].mask)
    with pytest.raises(ValueError, match="unknown class"):
        render_demo_image("NV", 0, 0, 32, 0, variant="chest_xray")


def test_chest_xray_masks_are_lung_patches_inside_the_image(cxr_samples: list) -> None:
    for sample in cxr_samples:
        assert set(np.unique(sample.mask).tolist()) == {0, 255}
        area = (sample.mask > 0).mean()
        assert 0.005 < area < 0.2
        border = np.concatenate(
            [sample.mask[0], sample.mask[-1], sample.mask[:, 0], sample.mask[:, -1]]
        )
        assert not border.any()
        rows = np.flatnonzero((sample.mask > 0).any(axis=1))
        assert rows.min() > CXR_SIZE * 0.1 and rows.max() < CXR_SIZE * 0.85  # the lungs' span


def test_same_chest_xray_at_two_resolutions_has_the_same_mask() -> None:
    plan = demo_plan(100, seed=0, variant="chest_xray", positive_fraction=0.4)
    for index in range(6):
        label = plan.class_names[int(plan.labels[index])]
        patient = int(plan.patients[index])
        _, small = render_demo_image(label, patient, index, 32, 0, variant="chest_xray")
        _, large = render_demo_image(label, patient, index, 64, 0, variant="chest_xray")
        downsampled = large.reshape(32, 2, 32, 2).mean(axis=(1, 3)) > 127
        overlap = (downsampled & (small > 0)).sum() / (downsampled | (small > 0)).sum()
        assert overlap > 0.75


def test_chest_xray_anatomy_is_never_mirrored() -> None:
    """The heart bulges to the patient's left (the image's right): in the lower chest the
    right half is brighter than the left on average."""
    plan = demo_plan(200, seed=0, variant="chest_xray")
    lower_left, lower_right = [], []
    for index in range(24):
        image, _ = render_demo_image(
            "normal", int(plan.patients[index]), index, 32, 0, variant="chest_xray"
        )
        band = image[16:22].astype(np.float64)
        lower_left.append(band[:, 4:14].mean())
        lower_right.append(band[:, 18:28].mean())
    assert np.mean(lower_right) > np.mean(lower_left) + 8
    assert np.mean(np.array(lower_right) > np.array(lower_left)) > 0.8


def test_opacity_brightens_its_mask_and_pixels_separate_the_classes() -> None:
    """Learnable but not given away: the consolidation is brighter than the lung around
    it, and a linear model on 16 x 16 pixels beats chance on held-out patients."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import GroupShuffleSplit

    data = load_demo_arrays(400, 32, seed=2, variant="chest_xray", positive_fraction=0.45)
    assert data.images.shape == (400, 32, 32) and data.class_names == CHEST_XRAY_CLASSES
    contrast = []
    for image, mask in zip(data.images, data.masks, strict=True):
        inside = mask > 0
        ring = ndimage.binary_dilation(inside, iterations=3) & ~ndimage.binary_dilation(
            inside, iterations=1
        )
        contrast.append(image[inside].mean() - image[ring].mean())
    assert roc_auc_score(data.labels, contrast) > 0.85

    pixels = data.images.reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4)).reshape(400, -1)
    pixels = (pixels - pixels.mean(1, keepdims=True)) / pixels.std(1, keepdims=True)
    scores = []
    for split in range(3):
        train, test = next(
            GroupShuffleSplit(1, test_size=0.3, random_state=split).split(
                pixels, data.labels, data.groups
            )
        )
        model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
        model.fit(pixels[train], data.labels[train])
        scores.append(balanced_accuracy_score(data.labels[test], model.predict(pixels[test])))
    assert np.mean(scores) > 0.55


def test_chest_xrays_are_written_as_grayscale_pngs(tmp_path: Path, cxr_samples: list) -> None:
    manifest = write_demo_dataset(
        tmp_path / "cxr",
        CXR_TOTAL,
        CXR_SIZE,
        seed=5,
        variant="chest_xray",
        positive_fraction=0.3,
        workers=2,
    )

    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == CXR_TOTAL
    for row, sample in zip(rows, cxr_samples, strict=True):
        image_bytes = (manifest.parent / row["path"]).read_bytes()
        decoded = decode_image(image_bytes)
        assert decoded.mode == "L"
        assert np.array_equal(decoded.pixels, sample.image)
        mask = decode_image((manifest.parent / row["mask"]).read_bytes()).pixels
        assert np.array_equal(mask, sample.mask)
        assert (row["label"], row["group"]) == (sample.label, sample.group)
        assert "variant=chest_xray" in read_png_text(image_bytes)[DEMO_PNG_KEY]


def test_api_demo_requests_ingest_chest_xrays_and_an_extreme_tail(local_api) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/datasets/demo with the new fields, then the ingest job run in-process."""
    from shared.db import make_engine, make_session_factory
    from shared.ingest.service import run_ingest
    from shared.jobs import run_job
    from shared.models import RealImage
    from shared.storage import make_store

    client = local_api.client
    for bad in (
        {"variant": "chest_xray", "imbalance": 10},
        {"positive_fraction": 0.1},
        {"min_per_class": 2},
        {"total": 40, "min_per_class": 6},
        {"variant": "fundus"},
        {"variant": "chest_xray", "positive_fraction": 0.5},
    ):
        assert client.post("/v1/datasets/demo", json=bad).status_code == 422, bad

    body = {"total": 60, "image_size": 24, "variant": "chest_xray", "positive_fraction": 0.2}
    created = client.post("/v1/datasets/demo", json=body)
    assert created.status_code == 202, created.text
    job_id, dataset_id = created.json()["job_id"], created.json()["dataset_id"]
    params = client.get(f"/v1/jobs/{job_id}").json()["params"]
    assert params["variant"] == "chest_xray" and params["positive_fraction"] == 0.2
    assert params["imbalance"] is None and params["min_per_class"] == 5

    settings = local_api.settings
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    store = make_store(settings)
    run_job(factory, job_id, lambda ctx: run_ingest(ctx, factory, store, settings))
    dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert dataset["state"] == "ready", dataset
    assert dataset["class_names"] == ["normal", "opacity"]
    assert dataset["class_counts"] == {"normal": 48, "opacity": 12}
    with factory() as session:
        channels = {row.channels for row in session.query(RealImage).all()}
    assert channels == {1}

    tail = client.post(
        "/v1/datasets/demo", json={"total": 200, "imbalance": 100, "min_per_class": 3}
    )
    assert tail.status_code == 202, tail.text
    tail_job = tail.json()["job_id"]
    tail_params = client.get(f"/v1/jobs/{tail_job}").json()["params"]
    assert tail_params["imbalance"] == 100 and tail_params["variant"] == "dermoscopy"
    run_job(factory, tail_job, lambda ctx: run_ingest(ctx, factory, store, settings))
    engine.dispose()
    ingested = client.get(f"/v1/datasets/{tail.json()['dataset_id']}").json()
    assert ingested["class_counts"] == demo_class_counts(200, imbalance=100, min_per_class=3)
    splits = ingested["split_counts"]
    # Every class is evaluated; the 4-image class keeps 2 training images, 3-image ones 1.
    assert all(splits["val"][c] >= 1 and splits["test"][c] >= 1 for c in DEMO_CLASSES)
    assert (splits["train"]["SCC"], splits["train"]["VASC"], splits["train"]["DF"]) == (2, 1, 1)
