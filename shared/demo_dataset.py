"""The built-in demo dataset: long-tailed, dermoscopy-like images made from a seed.

No dataset can be downloaded where tailsynth is demonstrated and tested, so this module
draws one. It imitates ISIC 2019: the same eight classes in the same order, the same
class proportions scaled to a CPU-sized total, and images that look like dermoscopy —
skin of varied tone and texture, the circular field of a dermoscope, hairs, rulers,
air bubbles and glare around a lesion whose shape, border, colours and texture depend
on its class. Each image comes with a binary lesion mask (what inpainting repaints)
and a patient-like group id: a group is one lesion imaged a few times, sharing skin,
hair and lesion traits, so grouped splits are needed to avoid leakage, as in ISIC.

Classes are meant to overlap (a featureless melanoma looks like a naevus, actinic
keratosis like squamous cell carcinoma) so that a small classifier shows the
long-tail problem: rare classes are recalled far worse than head classes.

Two options reshape it (both off by default, where the output is unchanged):

- ``imbalance``: class counts fall geometrically from the head class to the rarest,
  head/rarest = ``imbalance`` (see :func:`demo_class_counts`), for an extreme tail of
  classes with a handful of images;
- ``variant="chest_xray"``: a binary, grayscale set of frontal pediatric chest
  radiographs, ``normal`` vs ``opacity`` (a pneumonia-like consolidation), with a
  few percent positives (``positive_fraction``), after the binary chest X-ray tasks
  of Rajaraman et al. (2024). Images are (H, W) uint8 and are written as mode "L"
  PNGs, so the pipeline keeps one channel.

Every image is a pure function of ``(seed, total, index, image_size)`` and those
options: the dataset plan (labels, groups) comes from a generator seeded by ``seed``
alone, and each image and each patient draw from their own ``numpy`` generator seeded
by ``(seed, stream, number)``. Images can therefore be made lazily, in any order or in
parallel, and are identical bit for bit. Geometry is drawn in image-relative
coordinates, so the same sample at 64 and 256 px shows the same lesion.

Cost, per image on one CPU core: about 4 ms at 64 px (2,400 images in ~10 s) and
about 28 ms to draw plus 11 ms to PNG-encode at 256 px; ``workers`` spreads both
over processes. Chest X-rays cost about 1.3-1.5 times as much.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from scipy import ndimage

from shared.imaging import encode_png

DEMO_CLASSES: tuple[str, ...] = ("NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF")
CHEST_XRAY_CLASSES: tuple[str, ...] = ("normal", "opacity")

# The looks the demo can draw, and the classes of each.
DEMO_VARIANTS: tuple[str, ...] = ("dermoscopy", "chest_xray")
_VARIANT_CLASSES: dict[str, tuple[str, ...]] = {
    "dermoscopy": DEMO_CLASSES,
    "chest_xray": CHEST_XRAY_CLASSES,
}

# ISIC 2019 training set, images per class (the proportions the demo reproduces).
ISIC2019_COUNTS: dict[str, int] = {
    "NV": 12_875,
    "MEL": 4_522,
    "BCC": 3_323,
    "BKL": 2_624,
    "AK": 867,
    "SCC": 628,
    "VASC": 253,
    "DF": 239,
}

DEFAULT_TOTAL = 2_400
DEFAULT_IMAGE_SIZE = 64
DEFAULT_MIN_PER_CLASS = 5  # a rare class needs a few images to be split at all
DEFAULT_VARIANT = "dermoscopy"
DEFAULT_POSITIVE_FRACTION = 0.05  # chest_xray: a few percent of images show an opacity

DEMO_PNG_KEY = "tailsynth:demo_dataset"  # tEXt marker: made by this module (not by a generator)

# Independent random streams per seed: the plan, one per patient, one per image.
_PLAN_STREAM = 0
_PATIENT_STREAM = 1
_IMAGE_STREAM = 2
_CXR_PATIENT_STREAM = 3
_CXR_IMAGE_STREAM = 4

# Images per patient group: one lesion photographed 1-5 times.
_GROUP_SIZES = np.array([1, 2, 3, 4, 5])
_GROUP_SIZE_P = np.array([0.15, 0.25, 0.25, 0.2, 0.15])
# Chest X-rays: one child radiographed 1-3 times (follow-up films).
_CXR_GROUP_SIZES = np.array([1, 2, 3])
_CXR_GROUP_SIZE_P = np.array([0.45, 0.35, 0.2])
# Outside the ISIC default, every class keeps at least this many patients (or one per
# image if it has fewer images), so a grouped split can give each of train, val and
# test a patient of even the rarest class.
_MIN_PATIENTS = 5

Rgb = tuple[float, float, float]

# Colour anchors, linear-ish RGB in [0, 1], as they appear under a dermoscope's light.
_LIGHT_BROWN: Rgb = (0.70, 0.47, 0.36)
_BROWN: Rgb = (0.53, 0.32, 0.24)
_DARK_BROWN: Rgb = (0.34, 0.20, 0.16)
_BLACK: Rgb = (0.14, 0.11, 0.11)
_BLUE_GREY: Rgb = (0.42, 0.46, 0.56)
_PINK: Rgb = (0.90, 0.62, 0.62)
_RED: Rgb = (0.74, 0.26, 0.26)
_DARK_RED: Rgb = (0.48, 0.12, 0.15)
_PURPLE: Rgb = (0.45, 0.18, 0.36)
_WHITE: Rgb = (0.95, 0.93, 0.90)
_KERATIN: Rgb = (0.93, 0.88, 0.72)
_TAN: Rgb = (0.76, 0.58, 0.46)

# Skin under dermoscopy, lightest to darkest tone.
_SKIN_LIGHT: Rgb = (0.93, 0.76, 0.70)
_SKIN_DARK: Rgb = (0.50, 0.34, 0.25)


class DemoDatasetCanceled(RuntimeError):
    """Generation stopped because ``should_cancel`` returned True."""


@dataclass(frozen=True)
class DemoSample:
    """One demo image.

    ``image`` is (H, W, 3) uint8 RGB, or (H, W) uint8 grayscale for the chest X-ray
    variant; ``mask`` is (H, W) uint8 with 255 on the lesion (or consolidation) and 0
    elsewhere; ``label`` is one of the variant's classes (:data:`DEMO_CLASSES` or
    :data:`CHEST_XRAY_CLASSES`); ``group`` names the patient (one lesion, or one
    child's chest, imaged several times).
    """

    index: int
    image_id: str
    image: np.ndarray
    mask: np.ndarray
    label: str
    group: str


@dataclass
class DemoArrays:
    """The whole demo set in memory.

    ``images`` (N, H, W, 3) uint8, or (N, H, W) for the chest X-ray variant; ``masks``
    (N, H, W) uint8 in {0, 255}; ``labels`` (N,) int64 indices into ``class_names``;
    ``groups`` N patient ids.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    groups: list[str]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class DemoPlan:
    """Which class and patient each index is: ``labels`` (N,) int64 into
    ``class_names`` (:data:`DEMO_CLASSES` unless the variant is ``chest_xray``),
    ``patients`` (N,) int64 patient numbers from 0."""

    labels: np.ndarray
    patients: np.ndarray
    class_names: tuple[str, ...] = DEMO_CLASSES


# ---------------------------------------------------------------------------------
# Class counts and the dataset plan
# ---------------------------------------------------------------------------------


def demo_classes(variant: str = DEFAULT_VARIANT) -> tuple[str, ...]:
    """The class names of a demo variant, head class first."""
    if variant not in _VARIANT_CLASSES:
        raise ValueError(f"unknown demo variant {variant!r}; expected one of {DEMO_VARIANTS}")
    return _VARIANT_CLASSES[variant]


def demo_class_counts(
    total: int,
    *,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    imbalance: float | None = None,
    variant: str = DEFAULT_VARIANT,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> dict[str, int]:
    """Split ``total`` images over the classes of ``variant``, head class first.

    Dermoscopy, ``imbalance=None``: ISIC 2019 proportions. With ``imbalance = r``
    (>= 1) the counts instead fall geometrically from the head class (NV) to the
    rarest (DF) in :data:`DEMO_CLASSES` order: class ``k`` of ``K = 8`` gets the quota

        q_k = total * r ** (-k / (K - 1)) / sum_j r ** (-j / (K - 1)),

    so each class has ``r ** (-1 / 7)`` times the images of the one before it and
    q_0 / q_7 = r exactly (total 1,000, r = 100: quotas 485, 251, 130, 67, 35, 18, 9.4,
    4.8). Chest X-ray: ``opacity`` gets ``round(total * positive_fraction)``, ``normal``
    the rest.

    Largest-remainder rounding keeps the sum exact (every count is within 1 of its
    quota); then any class below ``min_per_class`` is raised to it with images taken
    from the largest class, so the rarest class can still be split into train, val and
    test. Where the geometric tail falls below ``min_per_class`` the floor wins and the
    realised head/rarest ratio is smaller than ``imbalance``: an extreme ``imbalance``
    with a low ``min_per_class`` (3-5) is how to get several classes with only 3-7
    images (2-5 of them in train). Raises ``ValueError`` if ``total`` cannot give every
    class ``min_per_class`` images, or for an ``imbalance`` below 1.
    """
    names = demo_classes(variant)
    if min_per_class < 1:
        raise ValueError(f"min_per_class must be >= 1, got {min_per_class}")
    if total < min_per_class * len(names):
        raise ValueError(
            f"total={total} is too small for {len(names)} classes with at least "
            f"{min_per_class} images each"
        )
    if variant == "chest_xray":
        if imbalance is not None:
            raise ValueError("imbalance applies to dermoscopy; chest_xray uses positive_fraction")
        if not 0.0 < positive_fraction < 0.5:
            raise ValueError(f"positive_fraction must be in (0, 0.5), got {positive_fraction}")
        positives = max(min_per_class, int(np.floor(total * positive_fraction + 0.5)))
        return {"normal": total - positives, "opacity": positives}
    if imbalance is None:
        weights = np.array([ISIC2019_COUNTS[name] for name in DEMO_CLASSES], dtype=np.float64)
    else:
        if not (math.isfinite(imbalance) and imbalance >= 1.0):
            raise ValueError(f"imbalance must be a finite number >= 1, got {imbalance}")
        steps = np.arange(len(DEMO_CLASSES), dtype=np.float64) / (len(DEMO_CLASSES) - 1)
        weights = float(imbalance) ** -steps
    quota = total * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    # Stable sort: equal remainders go to the class listed first.
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    for klass in range(len(DEMO_CLASSES)):
        deficit = min_per_class - int(counts[klass])
        if deficit > 0:
            counts[klass] += deficit
            counts[int(np.argmax(counts))] -= deficit
    return {name: int(n) for name, n in zip(DEMO_CLASSES, counts, strict=True)}


def demo_plan(
    total: int = DEFAULT_TOTAL,
    seed: int = 0,
    *,
    imbalance: float | None = None,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    variant: str = DEFAULT_VARIANT,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> DemoPlan:
    """Assign a class and a patient to each of ``total`` indices, from ``seed`` alone.

    Dermoscopy patients hold 1-5 images of one class, chest X-ray patients 1-3;
    indices are shuffled so classes and patients interleave, and patients are numbered
    in order of first appearance so a group id says nothing about the class. Counts as
    in :func:`demo_class_counts`.

    Except in the default ISIC-proportioned dermoscopy set (kept as it always was), a
    class of ``n`` images is held by at least ``min(n, 5)`` patients: its patients
    hold at most ``n // 5`` images each (one each below 10 images). A class of 5 images
    is then 5 patients, and the grouped split can give train, val and test one each.
    """
    counts = demo_class_counts(
        total,
        min_per_class=min_per_class,
        imbalance=imbalance,
        variant=variant,
        positive_fraction=positive_fraction,
    )
    legacy = variant == "dermoscopy" and imbalance is None
    group_sizes, group_p = (
        (_CXR_GROUP_SIZES, _CXR_GROUP_SIZE_P)
        if variant == "chest_xray"
        else (_GROUP_SIZES, _GROUP_SIZE_P)
    )
    rng = np.random.default_rng([seed, _PLAN_STREAM])
    labels: list[np.ndarray] = []
    patients: list[np.ndarray] = []
    next_patient = 0
    for klass, count in enumerate(counts.values()):
        sizes_allowed, p = group_sizes, group_p
        if not legacy:
            cap = max(1, count // _MIN_PATIENTS)
            sizes_allowed = group_sizes[group_sizes <= cap]
            p = group_p[: sizes_allowed.size] / group_p[: sizes_allowed.size].sum()
        sizes = rng.choice(sizes_allowed, size=count, p=p)  # more than enough
        ends = np.cumsum(sizes)
        n_groups = int(np.searchsorted(ends, count)) + 1
        group_of_image = np.searchsorted(ends[:n_groups], np.arange(count), side="right")
        labels.append(np.full(count, klass, dtype=np.int64))
        patients.append(next_patient + group_of_image)
        next_patient += n_groups
    order = rng.permutation(total)
    shuffled_labels = np.concatenate(labels)[order]
    shuffled_patients = np.concatenate(patients)[order]
    _, first_seen, inverse = np.unique(shuffled_patients, return_index=True, return_inverse=True)
    renumber = np.empty_like(first_seen)
    renumber[np.argsort(first_seen)] = np.arange(len(first_seen))
    return DemoPlan(
        labels=shuffled_labels,
        patients=renumber[inverse].astype(np.int64),
        class_names=demo_classes(variant),
    )


def demo_image_id(index: int, seed: int, variant: str = DEFAULT_VARIANT) -> str:
    """Stable image id, unique across seeds and variants, e.g. ``demo_s0_000042``
    (``demo_cxr_s0_000042`` for chest X-rays)."""
    return f"{_id_prefix(variant)}_s{seed}_{index:06d}"


def demo_group_id(patient: int, seed: int, variant: str = DEFAULT_VARIANT) -> str:
    """Stable patient group id, e.g. ``demo_s0_p00017`` (``demo_cxr_s0_p00017``)."""
    return f"{_id_prefix(variant)}_s{seed}_p{patient:05d}"


def _id_prefix(variant: str) -> str:
    return "demo" if variant == "dermoscopy" else "demo_cxr"


# ---------------------------------------------------------------------------------
# Drawing primitives (float32 fields on a size x size grid)
# ---------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, each (size, size) float32 in (-1, 1)."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def _value_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Smooth noise, (size, size) float32, roughly unit variance, blobs ~size/cells wide.

    A random ``cells`` x ``cells`` lattice upsampled bicubically, so the pattern is
    tied to image-relative coordinates and looks the same at any resolution.
    """
    return _upsample(rng.standard_normal((cells + 3, cells + 3), dtype=np.float32), size)


def _upsample(lattice: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a (c + 3, c + 3) float32 lattice to (size, size), dropping the
    one-cell margin that bicubic interpolation needs at the borders."""
    cells = lattice.shape[0] - 3
    field = Image.fromarray(lattice).resize(
        (size, size), Image.Resampling.BICUBIC, box=(1.0, 1.0, cells + 1.0, cells + 1.0)
    )
    return np.asarray(field, dtype=np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def _rgb(colour: Rgb | np.ndarray) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32).reshape(1, 1, 3)


def _jitter(rng: np.random.Generator, colour: Rgb, amount: float) -> np.ndarray:
    """``colour`` with a shared brightness and per-channel tint jitter, clipped to [0, 1]."""
    base = np.asarray(colour, dtype=np.float32)
    scale = 1.0 + amount * rng.standard_normal()
    tint = 1.0 + 0.5 * amount * rng.standard_normal(3)
    return np.clip(base * scale * tint, 0.0, 1.0).astype(np.float32)


def _blend(canvas: np.ndarray, colour: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """Alpha-composite ``colour`` ((H, W, 3) or (3,)) over ``canvas`` with (H, W) opacity."""
    return canvas + (colour - canvas) * opacity[..., None]


@dataclass(frozen=True)
class _Stroke:
    """A thin curve (hair, vessel, ruler line): centre-line points in image coordinates
    (-1..1, shape (N, 2) as x, y), half-width in pixels at 64 px, colour and opacity."""

    points: np.ndarray
    half_width: float
    colour: np.ndarray
    opacity: float


def _render_strokes(strokes: list[_Stroke], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise strokes with one distance transform: (opacity (H, W), colour (H, W, 3)).

    Each pixel takes width and colour from its nearest centre-line pixel, so crossing
    hairs of different thickness need no per-stroke pass.
    """
    opacity = np.zeros((size, size), dtype=np.float32)
    colour = np.zeros((size, size, 3), dtype=np.float32)
    if not strokes:
        return opacity, colour
    free = np.ones((size, size), dtype=bool)
    width_at = np.zeros((size, size), dtype=np.float32)
    alpha_at = np.zeros((size, size), dtype=np.float32)
    colour_at = np.zeros((size, size, 3), dtype=np.float32)
    scale = size / 64.0  # widths are specified for 64 px images
    for stroke in strokes:
        cols = np.floor((stroke.points[:, 0] + 1.0) * 0.5 * size).astype(np.int64)
        rows = np.floor((stroke.points[:, 1] + 1.0) * 0.5 * size).astype(np.int64)
        keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
        rows, cols = rows[keep], cols[keep]
        free[rows, cols] = False
        width_at[rows, cols] = stroke.half_width * scale
        alpha_at[rows, cols] = stroke.opacity
        colour_at[rows, cols] = stroke.colour
    if free.all():
        return opacity, colour
    distance, (near_r, near_c) = ndimage.distance_transform_edt(free, return_indices=True)
    half_width = width_at[near_r, near_c]
    coverage = np.clip(half_width + 0.5 - distance.astype(np.float32), 0.0, 1.0)
    opacity = coverage * alpha_at[near_r, near_c]
    colour = colour_at[near_r, near_c]
    return opacity.astype(np.float32), colour


def _curve_points(control: np.ndarray, size: int) -> np.ndarray:
    """Densely sampled quadratic Bezier through 3 control points (3, 2) -> (N, 2)."""
    length = float(np.linalg.norm(np.diff(control, axis=0), axis=1).sum())
    steps = max(8, int(length * size))  # about two samples per pixel
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1 - t) ** 2) * control[0] + 2 * (1 - t) * t * control[1] + (t**2) * control[2]


# ---------------------------------------------------------------------------------
# Skin, dermoscope and artefacts
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PatientSkin:
    """Traits shared by a patient's images: skin tone (0 light .. 1 dark), hairiness."""

    tone: float
    redness: float
    hairs_mean: float
    hair_colour: np.ndarray


def _patient_skin(rng: np.random.Generator) -> _PatientSkin:
    # ISIC is mostly light skin; a long tail of darker tones.
    tone = float(rng.beta(1.6, 3.5))
    hairy = rng.random() < 0.45
    hair_colour = _jitter(rng, _DARK_BROWN if rng.random() < 0.6 else _BLACK, 0.15)
    return _PatientSkin(
        tone=tone,
        redness=float(rng.uniform(0.0, 0.08)),
        hairs_mean=float(rng.uniform(2.0, 9.0) if hairy else rng.uniform(0.0, 1.5)),
        hair_colour=hair_colour * 0.8,
    )


def _skin(rng: np.random.Generator, skin: _PatientSkin, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Skin background (H, W, 3) float32: tone, illumination gradient, blotches, pores."""
    size = x.shape[0]
    tone = np.clip(skin.tone + 0.05 * rng.standard_normal(), 0.0, 1.0)
    base = (1 - tone) * np.asarray(_SKIN_LIGHT) + tone * np.asarray(_SKIN_DARK)
    base = base * np.array([1.0 + skin.redness, 1.0 - skin.redness, 1.0 - skin.redness])
    base = _jitter(rng, tuple(base), 0.04)
    angle = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0.03, 0.14)
    gradient = 1.0 + tilt * (float(np.cos(angle)) * x + float(np.sin(angle)) * y)
    blotches = 0.05 * _value_noise(rng, 5, size)
    # Blotchy redness: only ever adds red, so the skin never takes a green cast.
    erythema = 0.04 * np.maximum(_value_noise(rng, 3, size), 0.0)
    # Grain and pores live on a lattice of 64 x 64 image cells, so that a sample looks
    # the same at any resolution and no per-pixel filtering is needed.
    grain = 0.03 * _value_noise(rng, 64, size)
    pore_lattice = (rng.random((67, 67), dtype=np.float32) < 0.012).astype(np.float32)
    pores = 0.12 * np.clip(_upsample(pore_lattice, size), 0.0, 1.0)
    shade = (gradient + blotches + grain - pores)[..., None]
    canvas = _rgb(base) * shade
    canvas[..., 0] += erythema
    canvas[..., 1] -= 0.5 * erythema
    return canvas


def _hair_strokes(rng: np.random.Generator, skin: _PatientSkin, size: int) -> list[_Stroke]:
    """Dark thin curves crossing the image, count ~ Poisson(patient hairiness)."""
    strokes = []
    for _ in range(int(rng.poisson(skin.hairs_mean))):
        start = rng.uniform(-1.1, 1.1, 2)
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 2.2)
        end = start + length * np.array([np.cos(direction), np.sin(direction)])
        bend = (start + end) / 2 + rng.normal(0, 0.25, 2)
        control = np.stack([start, bend, end]).astype(np.float32)
        strokes.append(
            _Stroke(
                points=_curve_points(control, size),
                half_width=float(rng.uniform(0.25, 0.7)),
                colour=skin.hair_colour * float(rng.uniform(0.8, 1.2)),
                opacity=float(rng.uniform(0.7, 1.0)),
            )
        )
    return strokes


def _ruler_strokes(rng: np.random.Generator, size: int) -> list[_Stroke]:
    """A scale bar near one edge: a line with ticks every few pixels, long every fifth."""
    side = int(rng.integers(4))
    offset = rng.uniform(0.72, 0.88)
    start, stop = sorted(rng.uniform(-0.7, 0.7, 2) + np.array([-0.3, 0.3]))
    spacing = rng.uniform(0.06, 0.1)
    ink = _rgb(_BLACK).reshape(3) * rng.uniform(0.5, 1.2)
    along = np.arange(start, stop, 0.5 / size, dtype=np.float32)
    lines = [np.stack([along, np.full_like(along, offset)], axis=1)]
    for k, tick in enumerate(np.arange(start, stop, spacing)):
        tick_len = 0.08 if k % 5 == 0 else 0.04
        across = np.arange(offset - tick_len, offset, 0.5 / size, dtype=np.float32)
        lines.append(np.stack([np.full_like(across, tick), across], axis=1))
    strokes = []
    for points in lines:
        # Rotate the bar to the chosen side of the image.
        for _ in range(side):
            points = np.stack([-points[:, 1], points[:, 0]], axis=1)
        strokes.append(_Stroke(points=points, half_width=0.35, colour=ink, opacity=0.85))
    return strokes


def _bubbles_and_glare(
    rng: np.random.Generator, canvas: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Air bubbles in the immersion fluid (bright rings) and specular glare spots."""
    size = x.shape[0]
    pixel = 2.0 / size
    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = (float(v) for v in rng.uniform(-0.9, 0.9, 2))
            radius = rng.uniform(0.04, 0.2)
            ring = np.abs(np.hypot(x - cx, y - cy) - radius)
            rim = np.exp(-((ring / max(pixel * 0.8, radius * 0.08)) ** 2)).astype(np.float32)
            canvas = _blend(canvas, _rgb(_WHITE), 0.55 * rim)
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = (float(v) for v in rng.uniform(-0.8, 0.8, 2))
            spread = rng.uniform(0.015, 0.05)
            spot = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * spread**2)).astype(np.float32)
            canvas = _blend(canvas, _rgb(_WHITE), 0.8 * spot)
    return canvas


def _dermoscope_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Illumination (H, W) in [0, 1]: the circular dermoscope field, black outside.

    About a third of images are cropped inside the field and only show a fall-off.
    """
    size = x.shape[0]
    cx, cy = (float(v) for v in rng.normal(0.0, 0.04, 2))
    r = np.hypot(x - cx, y - cy)
    falloff = 1.0 - rng.uniform(0.05, 0.2) * r**2
    if rng.random() < 0.35:
        return falloff.astype(np.float32)
    radius = rng.uniform(0.92, 1.22)
    edge = max(rng.uniform(0.02, 0.06), 1.5 / size)
    field = _sigmoid((radius - r) / edge)
    return (falloff * field).astype(np.float32)


# ---------------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClassLook:
    """How a class's lesions vary, as (low, high) ranges drawn per patient.

    ``radius`` is in image half-widths; ``irregularity`` and ``jaggedness`` are
    amplitudes of low- (k=1..3) and high-frequency (k=5..11) border harmonics relative
    to the radius; ``softness`` is the border blur relative to the radius; ``opacity``
    how much the lesion hides the skin beneath.
    """

    radius: tuple[float, float]
    aspect: tuple[float, float]
    irregularity: tuple[float, float]
    jaggedness: tuple[float, float]
    softness: tuple[float, float]
    opacity: tuple[float, float]


_LOOKS: dict[str, _ClassLook] = {
    "NV": _ClassLook(
        radius=(0.26, 0.48),
        aspect=(1.0, 1.3),
        irregularity=(0.01, 0.09),
        jaggedness=(0.0, 0.015),
        softness=(0.03, 0.08),
        opacity=(0.75, 0.95),
    ),
    "MEL": _ClassLook(
        radius=(0.34, 0.62),
        aspect=(1.0, 1.5),
        irregularity=(0.06, 0.2),
        jaggedness=(0.01, 0.04),
        softness=(0.04, 0.12),
        opacity=(0.85, 1.0),
    ),
    "BCC": _ClassLook(
        radius=(0.24, 0.46),
        aspect=(1.0, 1.4),
        irregularity=(0.03, 0.12),
        jaggedness=(0.0, 0.02),
        softness=(0.08, 0.18),
        opacity=(0.45, 0.8),
    ),
    "BKL": _ClassLook(
        radius=(0.26, 0.5),
        aspect=(1.0, 1.5),
        irregularity=(0.03, 0.12),
        jaggedness=(0.01, 0.03),
        softness=(0.02, 0.07),
        opacity=(0.75, 0.95),
    ),
    "AK": _ClassLook(
        radius=(0.24, 0.48),
        aspect=(1.0, 1.5),
        irregularity=(0.05, 0.16),
        jaggedness=(0.01, 0.03),
        softness=(0.12, 0.25),
        opacity=(0.5, 0.8),
    ),
    "SCC": _ClassLook(
        radius=(0.22, 0.42),
        aspect=(1.0, 1.3),
        irregularity=(0.03, 0.1),
        jaggedness=(0.0, 0.02),
        softness=(0.06, 0.14),
        opacity=(0.6, 0.9),
    ),
    "VASC": _ClassLook(
        radius=(0.16, 0.34),
        aspect=(1.0, 1.3),
        irregularity=(0.02, 0.08),
        jaggedness=(0.0, 0.015),
        softness=(0.03, 0.07),
        opacity=(0.8, 1.0),
    ),
    "DF": _ClassLook(
        radius=(0.17, 0.32),
        aspect=(1.0, 1.3),
        irregularity=(0.02, 0.08),
        jaggedness=(0.0, 0.015),
        softness=(0.1, 0.22),
        opacity=(0.6, 0.9),
    ),
}


@dataclass(frozen=True)
class _LesionTraits:
    """A patient's lesion: shape, border and how typical it looks for its class.

    ``typicality`` in [0, 1] scales the class's tell-tale features (vessels, white
    patch, blue-grey areas); low values give a generic-looking lesion, which is what
    makes classes overlap.
    """

    radius: float
    aspect: float
    harmonics: np.ndarray  # (K,) relative amplitudes
    phases: np.ndarray  # (K,) radians
    softness: float
    opacity: float
    typicality: float
    tint: np.ndarray  # (3,) multiplicative colour jitter of the whole lesion
    darkness: float  # 0 light .. 1 dark shade of the class's palette


_HARMONIC_ORDERS = np.array([1, 2, 3, 5, 7, 9, 11], dtype=np.float32)


def _lesion_traits(rng: np.random.Generator, look: _ClassLook) -> _LesionTraits:
    def draw(span: tuple[float, float]) -> float:
        return float(rng.uniform(*span))

    irregular, jagged = draw(look.irregularity), draw(look.jaggedness)
    amplitudes = np.concatenate(
        [irregular * rng.uniform(0.3, 1.0, 3), jagged * rng.uniform(0.3, 1.0, 4)]
    ).astype(np.float32)
    return _LesionTraits(
        radius=draw(look.radius),
        aspect=draw(look.aspect),
        harmonics=amplitudes,
        phases=rng.uniform(0, 2 * np.pi, _HARMONIC_ORDERS.size).astype(np.float32),
        softness=draw(look.softness),
        opacity=draw(look.opacity),
        typicality=float(rng.beta(2.0, 1.6)),
        tint=(1.0 + 0.05 * rng.standard_normal(3)).astype(np.float32),
        darkness=float(rng.random()),
    )


@dataclass(frozen=True)
class _LesionFrame:
    """Per-pixel lesion coordinates, each (H, W) float32.

    ``t`` is the distance from the lesion centre relative to the border (0 centre, 1
    border), ``lx``/``ly`` rotated coordinates in units of the lesion radius,
    ``inside`` the soft border coverage in [0, 1].
    """

    t: np.ndarray
    lx: np.ndarray
    ly: np.ndarray
    inside: np.ndarray
    size: int
    radius: float  # in image half-widths
    centre: np.ndarray  # (2,) x, y in image coordinates
    angle: float  # rotation of the lesion's long axis, radians


def _lesion_frame(
    rng: np.random.Generator, traits: _LesionTraits, x: np.ndarray, y: np.ndarray
) -> _LesionFrame:
    """Place the patient's lesion in this image: per-image scale, rotation and offset.

    The lesion is shrunk if needed so its whole border stays within 0.86 of the
    half-width: the mask never touches the image edge or leaves the dermoscope field.
    """
    scale = traits.radius * rng.uniform(0.9, 1.1)
    stretch = float(np.sqrt(traits.aspect))
    probe = np.linspace(0, 2 * np.pi, 64, endpoint=False, dtype=np.float32)
    border = 1.0 + (
        traits.harmonics[:, None]
        * np.cos(_HARMONIC_ORDERS[:, None] * probe + traits.phases[:, None])
    ).sum(axis=0)
    reach = float(border.max()) * stretch
    offset = rng.normal(0.0, 0.08, 2).astype(np.float32)
    limit = 0.86 - float(np.abs(offset).max())
    scale = min(scale, limit / reach)
    angle = rng.uniform(0, 2 * np.pi)
    cos_a, sin_a = float(np.cos(angle)), float(np.sin(angle))
    dx, dy = x - offset[0], y - offset[1]
    lx = (cos_a * dx + sin_a * dy) / (scale * stretch)
    ly = (-sin_a * dx + cos_a * dy) * stretch / scale
    rho = np.hypot(lx, ly)
    # cos(k*theta + phase) = Re(u^k * e^{i*phase}) with u = e^{i*theta}: powers of a unit complex
    # number are far cheaper than a cosine per order and pixel.
    unit = (lx + 1j * ly).astype(np.complex64) / np.maximum(rho, 1e-6)
    phasors = np.exp(1j * traits.phases).astype(np.complex64)
    edge = np.ones_like(rho)
    power = np.ones_like(unit)
    for order in range(1, int(_HARMONIC_ORDERS.max()) + 1):
        power = power * unit
        for k in np.flatnonzero(_HARMONIC_ORDERS == order):
            edge += traits.harmonics[k] * (power * phasors[k]).real
    t = (rho / edge).astype(np.float32)
    pixel = 2.0 / x.shape[0] / scale  # one pixel in lesion-radius units
    inside = _sigmoid((1.0 - t) / max(traits.softness, pixel))
    return _LesionFrame(
        t=t,
        lx=lx,
        ly=ly,
        inside=inside,
        size=x.shape[0],
        radius=scale,
        centre=np.asarray(offset, dtype=np.float32),
        angle=float(angle),
    )


def _mix(weights: list[np.ndarray], colours: list[np.ndarray]) -> np.ndarray:
    """Per-pixel convex mix of colours; weights (H, W) non-negative -> (H, W, 3)."""
    stack = np.stack(weights, axis=-1)
    stack = stack / np.maximum(stack.sum(axis=-1, keepdims=True), 1e-6)
    return np.einsum("hwk,kc->hwc", stack, np.stack(colours)).astype(np.float32)


def _dots(
    rng: np.random.Generator, frame: _LesionFrame, count: int, radius: float, within: float
) -> np.ndarray:
    """``count`` round dots of ``radius`` (lesion units) inside ``t < within``: (H, W) in [0, 1]."""
    field = np.zeros_like(frame.t)
    if count <= 0:
        return field
    angles = rng.uniform(0, 2 * np.pi, count)
    dists = within * np.sqrt(rng.random(count))
    pixel = 2.0 / frame.size / frame.radius
    width = max(radius, 0.7 * pixel)
    for a, d in zip(angles, dists, strict=True):
        r2 = (frame.lx - d * np.cos(a)) ** 2 + (frame.ly - d * np.sin(a)) ** 2
        field = np.maximum(field, np.exp(-r2 / (2 * width**2)))
    return field.astype(np.float32)


def _network(rng: np.random.Generator, frame: _LesionFrame, cells: float) -> np.ndarray:
    """Reticular pigment network: (H, W) in [0, 1], 1 on the lines of a warped grid."""
    warp = 0.15 * _value_noise(rng, 6, frame.size)
    gx = np.cos(np.pi * cells * (frame.lx + warp))
    gy = np.cos(np.pi * cells * (frame.ly - warp))
    return np.clip(1.0 - 2.5 * np.minimum(np.abs(gx), np.abs(gy)), 0, 1).astype(np.float32)


def _vessel_strokes(rng: np.random.Generator, frame: _LesionFrame, count: int) -> list[_Stroke]:
    """Arborising vessels: trunks that fork into thinner branches, in image coordinates."""
    strokes: list[_Stroke] = []
    angle = frame.angle
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    red = np.asarray(_RED, dtype=np.float32) * 0.85
    for _ in range(count):
        start = rng.uniform(-0.6, 0.6, 2)
        heading = rng.uniform(0, 2 * np.pi)
        tips = [(start, heading, 0.55, 0)]
        while tips:
            origin, heading, length, depth = tips.pop()
            end = origin + length * np.array([np.cos(heading), np.sin(heading)])
            bend = (origin + end) / 2 + rng.normal(0, 0.08, 2)
            control = np.stack([origin, bend, end]) @ rotation.T * frame.radius + frame.centre
            strokes.append(
                _Stroke(
                    points=_curve_points(control.astype(np.float32), frame.size),
                    half_width=0.45 - 0.12 * depth,
                    colour=red * float(rng.uniform(0.8, 1.1)),
                    opacity=0.9,
                )
            )
            if depth < 2:
                for turn in (-1, 1):
                    tips.append(
                        (end, heading + turn * rng.uniform(0.3, 0.9), length * 0.6, depth + 1)
                    )
    return strokes


def _paint_nv(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Naevus: uniform brown, slightly darker centre, faint regular network.

    Atypical (low-typicality) naevi get a second, darker brown in blotches, as
    dysplastic naevi do, which is where they overlap with melanoma.
    """
    base = (1 - tr.darkness) * np.asarray(_LIGHT_BROWN) + tr.darkness * np.asarray(_BROWN)
    colour = _rgb(_jitter(rng, tuple(base), 0.05)) * (1.0 - 0.12 * (1 - f.t))[..., None]
    blotches = _sigmoid(3.0 * _value_noise(rng, 4, f.size))
    dark = _rgb(_jitter(rng, _DARK_BROWN, 0.06))
    colour = _blend(colour, dark, 0.6 * (1.0 - tr.typicality) * blotches)
    net = _network(rng, f, cells=rng.uniform(5, 8))
    return colour * (1.0 - 0.18 * tr.typicality * net)[..., None]


def _paint_mel(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Melanoma: several colours in asymmetric blotches, blue-grey veil, atypical network."""
    palette = [_LIGHT_BROWN, _BROWN, _DARK_BROWN, _BLACK, _BLUE_GREY]
    colours = [_jitter(rng, c, 0.06) for c in palette]
    tilt = [float(v) for v in rng.normal(0, 1.0, 2)]
    asym = 1.2 * (tilt[0] * f.lx + tilt[1] * f.ly)
    # Atypical lesions show more of the dark and blue-grey colours.
    emphasis = np.array([1.0, 1.0, 0.4 + tr.typicality, 0.2 + tr.typicality, 1.4 * tr.typicality])
    weights = [
        emphasis[k] * np.exp(1.6 * _value_noise(rng, 4, f.size) + (asym if k >= 2 else -asym))
        for k in range(len(colours))
    ]
    colour = _mix(weights, colours)
    net = _network(rng, f, cells=rng.uniform(4, 7)) * _sigmoid(2 * _value_noise(rng, 3, f.size))
    return colour * (1.0 - 0.3 * tr.typicality * net)[..., None]


def _paint_bcc(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Basal cell carcinoma: pearly pink, shiny white areas, blue-grey ovoid nests."""
    colour = _rgb(_jitter(rng, _PINK, 0.06)) * np.ones_like(f.t)[..., None]
    shine = np.clip(_value_noise(rng, 5, f.size) - 0.6, 0, 1)
    colour = _blend(colour, _rgb(_WHITE), 0.6 * shine)
    if rng.random() < 0.35 * tr.typicality + 0.05:
        nests = _dots(rng, f, int(rng.integers(1, 5)), rng.uniform(0.08, 0.16), 0.7)
        colour = _blend(colour, _rgb(_jitter(rng, _BLUE_GREY, 0.08)) * 0.8, 0.85 * nests)
    if tr.darkness > 0.7:
        # Pigmented BCC: brown-grey blotches, easily mistaken for melanoma or keratosis.
        pigment = _sigmoid(3.0 * (_value_noise(rng, 4, f.size) - 0.2))
        colour = _blend(colour, _rgb(_jitter(rng, _DARK_BROWN, 0.08)), 0.7 * pigment)
    return colour


def _paint_bkl(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Benign keratosis: waxy tan to brown, cerebriform ridges, milia and comedo dots."""
    shades = [_jitter(rng, c, 0.07) for c in (_TAN, _LIGHT_BROWN, _BROWN)]
    shift = 2.0 * (tr.darkness - 0.5)
    weights = [np.exp(1.2 * _value_noise(rng, 3, f.size) + k * shift) for k in range(3)]
    colour = _mix(weights, shades)
    warp = 0.3 * _value_noise(rng, 4, f.size)
    ridges = 0.5 + 0.5 * np.cos(np.pi * rng.uniform(4, 7) * (f.lx + f.ly * 0.3 + warp))
    colour = colour * (1.0 - 0.3 * tr.typicality * ridges)[..., None]
    milia = _dots(rng, f, int(rng.integers(0, int(8 * tr.typicality) + 1)), 0.05, 0.85)
    comedo = _dots(rng, f, int(rng.integers(0, int(6 * tr.typicality) + 1)), 0.05, 0.85)
    colour = _blend(colour, _rgb(_WHITE), 0.8 * milia)
    return _blend(colour, _rgb(_DARK_BROWN) * 0.7, 0.8 * comedo)


def _paint_ak(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Actinic keratosis: reddish patch, rough white-yellow scale, 'strawberry' follicles."""
    red = (1 - tr.darkness) * np.asarray(_PINK) + tr.darkness * np.asarray(_RED)
    colour = (
        _rgb(_jitter(rng, tuple(red), 0.07))
        * (1.0 + 0.06 * _value_noise(rng, 6, f.size))[..., None]
    )
    roughness = _value_noise(rng, 18, f.size) + 0.6 * _value_noise(rng, 7, f.size)
    scale = np.clip(roughness - (1.1 - 0.7 * tr.typicality), 0, 1)
    colour = _blend(colour, _rgb(_KERATIN), 0.8 * scale)
    follicles = _dots(rng, f, int(rng.integers(0, int(10 * tr.typicality) + 1)), 0.04, 0.8)
    return _blend(colour, _rgb(_WHITE), 0.6 * follicles)


def _paint_scc(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Squamous cell carcinoma: red-pink nodule, central keratin, dotted vessels, crust."""
    red = (1 - tr.darkness) * np.asarray(_PINK) + tr.darkness * np.asarray(_RED)
    colour = _rgb(_jitter(rng, tuple(red), 0.07)) * np.ones_like(f.t)[..., None]
    core = rng.uniform(0.3, 0.6)
    keratin = _sigmoid((core - f.t + 0.15 * _value_noise(rng, 5, f.size)) / 0.06)
    colour = _blend(colour, _rgb(_jitter(rng, _KERATIN, 0.05)), 0.9 * tr.typicality * keratin)
    vessels = _dots(rng, f, int(rng.integers(3, 14)), 0.035, 0.95) * (f.t > core)
    colour = _blend(colour, _rgb(_DARK_RED), 0.85 * vessels)
    if rng.random() < 0.3:
        crust = _dots(rng, f, 1, rng.uniform(0.12, 0.25), 0.5)
        colour = _blend(colour, _rgb(_DARK_RED) * 0.6, 0.9 * crust)
    return colour


def _paint_vasc(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Vascular lesion: red to purple lacunae separated by paler septa."""
    tones = [_jitter(rng, c, 0.08) for c in (_RED, _DARK_RED, _PURPLE)]
    mix = rng.dirichlet([1.0, 1.0, 1.0])
    base = np.einsum("k,kc->c", mix, np.stack(tones))
    septum = 0.6 * base + 0.4 * np.asarray(_PINK, dtype=np.float32)
    colour = _rgb(septum) * np.ones_like(f.t)[..., None]
    count = int(rng.integers(4, 12))
    for _ in range(count):
        lacuna = _dots(rng, f, 1, rng.uniform(0.12, 0.28), 0.8)
        tone = tones[int(rng.integers(3))] * rng.uniform(0.75, 1.05)
        colour = _blend(
            colour, _rgb(tone), np.clip(1.6 * lacuna, 0, 1) * (0.5 + 0.5 * tr.typicality)
        )
    return colour


def _paint_df(rng: np.random.Generator, f: _LesionFrame, tr: _LesionTraits) -> np.ndarray:
    """Dermatofibroma: light-brown delicate rim network, central white scar-like patch."""
    base = (1 - tr.darkness) * np.asarray(_LIGHT_BROWN) + tr.darkness * np.asarray(_BROWN)
    colour = _rgb(_jitter(rng, tuple(base), 0.06)) * np.ones_like(f.t)[..., None]
    net = _network(rng, f, cells=rng.uniform(6, 9))
    colour = colour * (1.0 - 0.15 * net)[..., None]
    patch = rng.uniform(0.3, 0.6)
    white = _sigmoid((patch - f.t + 0.2 * _value_noise(rng, 4, f.size)) / 0.08)
    return _blend(colour, _rgb(_jitter(rng, _WHITE, 0.04)), (0.35 + 0.6 * tr.typicality) * white)


_PAINTERS: dict[str, Callable[[np.random.Generator, _LesionFrame, _LesionTraits], np.ndarray]] = {
    "NV": _paint_nv,
    "MEL": _paint_mel,
    "BCC": _paint_bcc,
    "BKL": _paint_bkl,
    "AK": _paint_ak,
    "SCC": _paint_scc,
    "VASC": _paint_vasc,
    "DF": _paint_df,
}


# ---------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------


def render_demo_image(
    label: str,
    patient: int,
    index: int,
    image_size: int,
    seed: int,
    *,
    variant: str = DEFAULT_VARIANT,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask: ((H, W, 3) uint8, (H, W) uint8 in {0, 255}).

    A pure function of its arguments. Patient traits (skin, hair, the lesion itself)
    come from the ``(seed, patient)`` stream, everything per view (placement,
    lighting, hairs, artefacts, noise) from the ``(seed, index)`` stream.

    ``variant="chest_xray"`` draws a frontal chest radiograph instead, (H, W) uint8
    grayscale; its mask is the consolidation of an ``opacity`` image, or an equally
    sized patch of healthy lung in a ``normal`` one (what inpainting would repaint).
    """
    classes = demo_classes(variant)
    if label not in classes:
        raise ValueError(f"unknown class {label!r}; expected one of {classes}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if variant == "chest_xray":
        return _render_chest_xray(label, patient, index, image_size, seed)
    patient_rng = np.random.default_rng([seed, _PATIENT_STREAM, patient])
    rng = np.random.default_rng([seed, _IMAGE_STREAM, index])
    skin_traits = _patient_skin(patient_rng)
    traits = _lesion_traits(patient_rng, _LOOKS[label])
    x, y = _grid(image_size)

    canvas = _skin(rng, skin_traits, x, y)
    skin_texture = canvas.mean(axis=-1) / max(float(canvas.mean()), 1e-6)
    frame = _lesion_frame(rng, traits, x, y)
    lesion = _PAINTERS[label](rng, frame, traits)
    tint = traits.tint * _jitter(rng, (1.0, 1.0, 1.0), 0.04)
    # Fine mottling, and the skin's grain showing through, so the lesion looks embedded
    # in the skin rather than pasted on it.
    mottling = (1.0 + 0.06 * _value_noise(rng, 20, image_size)) * (0.6 + 0.4 * skin_texture)
    lesion *= mottling[..., None]
    lesion *= tint
    canvas = _blend(canvas, np.clip(lesion, 0, 1), traits.opacity * frame.inside)
    if label == "BCC":
        canvas = _draw_arborising_vessels(rng, frame, traits, canvas)
    mask = np.where(frame.t < 1.0, 255, 0).astype(np.uint8)

    strokes = _hair_strokes(rng, skin_traits, image_size)
    if rng.random() < 0.12:
        strokes += _ruler_strokes(rng, image_size)
    opacity, ink = _render_strokes(strokes, image_size)
    canvas = _blend(canvas, ink, opacity)
    canvas = _bubbles_and_glare(rng, canvas, x, y)
    field = _dermoscope_field(rng, x, y)
    # Camera: white balance, exposure, focus blur and sensor noise.
    white_balance = (1.0 + 0.03 * rng.standard_normal(3)).astype(np.float32)
    exposure = rng.uniform(0.88, 1.1)
    canvas *= field[..., None] * (white_balance * exposure)
    defocus = rng.uniform(0.0, 0.7)  # blur sigma in pixels at 64 px
    if defocus > 0.25:
        sigma = defocus * image_size / 64
        canvas = ndimage.gaussian_filter(canvas, sigma=(sigma, sigma, 0))
    sensor_noise = rng.uniform(0.01, 0.03)
    canvas += sensor_noise * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)
    return image, mask


def _draw_arborising_vessels(
    rng: np.random.Generator, frame: _LesionFrame, traits: _LesionTraits, canvas: np.ndarray
) -> np.ndarray:
    """BCC's branching red vessels over the lesion; more of them the more typical it is."""
    count = int(rng.binomial(4, 0.05 + 0.5 * traits.typicality))
    if count == 0:
        return canvas
    strokes = _vessel_strokes(rng, frame, count)
    opacity, ink = _render_strokes(strokes, frame.size)
    return _blend(canvas, ink, opacity * frame.inside * traits.opacity)


# ---------------------------------------------------------------------------------
# Chest X-rays
# ---------------------------------------------------------------------------------
#
# A frontal (PA) pediatric chest radiograph, drawn as a density map D (bright = more
# attenuation) in "body" coordinates u (across; the patient's left is +u, shown on the
# image's right, as radiographs are read) and v (down), then exposed: soft tissue of
# the thorax, two air-filled lungs that are dark, the mediastinum and heart between
# them (the heart bulging to the patient's left), the spine, posterior and anterior
# ribs, clavicles and the stomach's gas bubble under the left hemidiaphragm. Images
# are never mirrored: laterality is part of the anatomy.


@dataclass(frozen=True)
class _Chest:
    """A child's chest: body habitus, lungs, heart, bones and film exposure, and (for
    ``opacity``) where the pneumonia sits: lung side, height and extent.

    Lengths are in image half-widths of the body frame; ``density`` is how much of the
    lung's air a consolidation replaces (0 for a normal chest).
    """

    body_width: float
    lung_width: float
    lung_top: float
    lung_bottom: float
    dome: float
    mediastinum: float
    heart_width: float
    heart_height: float
    heart_shift: float
    rib_spacing: float
    rib_start: float
    tissue: float
    air: float
    markings: float
    gastric_bubble: bool
    brightness: float
    contrast: float
    gamma: float
    side: int  # -1 the patient's right lung (image left), +1 the left lung
    patch_v: float
    patch_u: float  # across the lung, 0 medial .. 1 lateral
    patch_radius: float
    patches: int
    density: float


def _chest_traits(rng: np.random.Generator, label: str) -> _Chest:
    lung_top = float(rng.uniform(-0.7, -0.6))
    lung_height = float(rng.uniform(1.05, 1.25))
    side = -1 if rng.random() < 0.55 else 1  # right-sided pneumonia is a little commoner
    lobe = int(rng.integers(3))  # upper, middle, lower zone
    zone = lung_top + lung_height * (0.22 + 0.24 * lobe)
    return _Chest(
        body_width=float(rng.uniform(0.8, 0.95)),
        lung_width=float(rng.uniform(0.32, 0.39)),
        lung_top=lung_top,
        lung_bottom=lung_top + lung_height,
        dome=float(rng.uniform(0.14, 0.26)),
        mediastinum=float(rng.uniform(0.08, 0.13)),
        heart_width=float(rng.uniform(0.44, 0.54)),
        heart_height=float(rng.uniform(0.26, 0.32)),
        heart_shift=float(rng.uniform(0.08, 0.16)),
        rib_spacing=float(rng.uniform(0.115, 0.14)),
        rib_start=float(rng.uniform(-0.08, 0.0)),
        tissue=float(rng.uniform(0.55, 0.7)),
        air=float(rng.uniform(0.36, 0.46)),
        markings=float(rng.uniform(0.01, 0.045)),
        gastric_bubble=bool(rng.random() < 0.6),
        brightness=float(rng.uniform(0.0, 0.08)),
        contrast=float(rng.uniform(1.05, 1.35)),
        gamma=float(rng.uniform(0.8, 1.25)),
        side=side,
        patch_v=zone + float(rng.normal(0.0, 0.05)),
        patch_u=float(rng.uniform(0.3, 0.72)),
        patch_radius=float(rng.uniform(0.17, 0.28)),
        patches=int(rng.integers(1, 3)) if label == "opacity" else 0,
        density=float(rng.uniform(0.25, 0.8)) if label == "opacity" else 0.0,
    )


def _chest_lungs(c: _Chest, u: np.ndarray, v: np.ndarray, pixel: float) -> np.ndarray:
    """Air in both lungs, (H, W) in [0, 1], before the heart is taken out of it."""
    lungs = np.zeros_like(u)
    for side in (-1, 1):
        centre_u = side * (c.mediastinum + c.lung_width)
        centre_v = 0.5 * (c.lung_top + c.lung_bottom)
        half_height = 0.5 * (c.lung_bottom - c.lung_top)
        du, dv = (u - centre_u) / c.lung_width, (v - centre_v) / half_height
        # Round apex, squarer base: the lung widens downwards to the costophrenic angle.
        power = 2.0 + 2.0 * _sigmoid(dv / 0.15)
        du = du * (1.0 + 0.25 * np.clip(-dv, 0, None))
        shape = 1.0 - np.abs(du) ** power - np.abs(dv) ** power
        # The hemidiaphragm domes up under the lung; the right one (liver) sits higher.
        base = c.lung_bottom - (0.05 if side < 0 else 0.0)
        lateral = np.clip((u - centre_u) * side / c.lung_width, -1.0, 1.0)
        diaphragm = base - c.dome * (1.0 - lateral**2) - 0.3 * c.dome * (lateral < 0)
        medial = c.mediastinum + (0.05 * np.exp(-(((v + 0.3) / 0.08) ** 2)) if side > 0 else 0)
        lung = (
            _sigmoid(shape / 0.12)
            * _sigmoid((diaphragm - v) / max(0.025, pixel))
            * _sigmoid((u * side - medial) / max(0.03, pixel))
        )
        lungs = np.maximum(lungs, lung)
    return lungs


def _chest_heart(c: _Chest, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The cardiac silhouette, (H, W) in [0, 1]: an ellipse on the diaphragm, apex to the
    patient's left."""
    centre_u = c.heart_shift
    centre_v = c.lung_bottom - c.dome - 0.18  # resting on the diaphragm
    angle = 0.45  # long axis tilted down towards the patient's left
    du, dv = u - centre_u, v - centre_v
    a = (np.cos(angle) * du + np.sin(angle) * dv) / c.heart_width
    b = (-np.sin(angle) * du + np.cos(angle) * dv) / c.heart_height
    return _sigmoid((1.0 - np.hypot(a, b)) / 0.08)


def _chest_bones(
    rng: np.random.Generator, c: _Chest, to_image: Callable[[np.ndarray], np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ribs and clavicles as strokes in body coordinates: (ribs, clavicles) opacity maps."""
    ribs: list[_Stroke] = []
    ink = np.ones(3, dtype=np.float32)
    count = int((c.lung_bottom - c.lung_top) / c.rib_spacing) + 1
    for side in (-1.0, 1.0):
        for k in range(count):
            top = c.lung_top + c.rib_start + k * c.rib_spacing
            wobble = rng.normal(0.0, 0.01, 2)
            # Posterior rib: from the spine, out and then down along the chest wall.
            posterior = np.array(
                [
                    [side * 0.06, top],
                    [side * 0.6, top - 0.1 + wobble[0]],
                    [side * (c.body_width - 0.02), top + 0.32 + wobble[1]],
                ],
                dtype=np.float32,
            )
            ribs.append(_Stroke(to_image(_curve_points(posterior, size)), 1.0, ink, 1.0))
            # Anterior rib, fainter: from the chest wall down towards the sternum.
            anterior = np.array(
                [
                    [side * (c.body_width - 0.06), top + 0.12],
                    [side * 0.55, top + 0.2],
                    [side * 0.25, top + 0.42],
                ],
                dtype=np.float32,
            )
            ribs.append(_Stroke(to_image(_curve_points(anterior, size)), 0.8, ink, 0.45))
    clavicles = []
    for side in (-1.0, 1.0):
        drop = float(rng.normal(0.0, 0.02))
        control = np.array(
            [
                [side * 0.07, c.lung_top + 0.1 + drop],
                [side * 0.35, c.lung_top + 0.06 + drop],
                [side * 0.72, c.lung_top - 0.04],
            ],
            dtype=np.float32,
        )
        clavicles.append(_Stroke(to_image(_curve_points(control, size)), 1.4, ink, 1.0))
    return _render_strokes(ribs, size)[0], _render_strokes(clavicles, size)[0]


_CXR_PLACEMENT_GRID = 48  # patch centres are drawn on this grid, whatever the image size


def _chest_patch(
    rng: np.random.Generator,
    c: _Chest,
    u: np.ndarray,
    v: np.ndarray,
    lungs: np.ndarray,
    placement: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """A soft, lobulated region inside one lung field, (H, W) in [0, 1].

    Where a pneumonia's consolidation is (``opacity``: near the patient's affected
    zone), or an equally sized stretch of healthy lung (``normal``: anywhere in either
    lung), so both classes get masks that inpainting can fill. The centre is drawn
    among pixels at least half a patch radius inside the lung, so the patch is never
    cut down to a sliver by the lung's border; it is drawn on ``placement``, the body
    coordinates and lungs ``(u, v, lungs)`` on a fixed coarse grid, so the same sample
    at 64 and 256 px has its patch in the same place.
    """
    size = u.shape[0]
    radius = c.patch_radius * float(rng.uniform(0.85, 1.15))
    grid_u, grid_v, grid_lungs = placement
    depth = ndimage.distance_transform_edt(grid_lungs > 0.5) * (2.0 / grid_u.shape[0])
    inside = depth >= min(0.5 * radius, 0.8 * float(depth.max()))
    weights = inside.astype(np.float64)
    if c.patches:
        prefer_u = c.side * (c.mediastinum + 2.0 * c.lung_width * c.patch_u)
        near = (grid_u - prefer_u) ** 2 + (grid_v - c.patch_v) ** 2
        preferred = np.exp(-near / (2 * 0.1**2)) * inside
        if preferred.sum() > 0:  # else the zone lies outside this view's lungs
            weights = preferred
    flat = weights.ravel()
    pick = int(rng.choice(flat.size, p=flat / flat.sum()))
    centre_u, centre_v = float(grid_u.ravel()[pick]), float(grid_v.ravel()[pick])
    warp = 0.25 * np.clip(_value_noise(rng, 4, size), -1.2, 1.2)  # lobulated, never tiny
    distance = np.hypot((u - centre_u) / radius, (v - centre_v) / (0.85 * radius))
    region = _sigmoid((1.0 - distance + warp) / 0.18)
    for _ in range(max(c.patches, 1) - 1):  # satellite patches nearby
        du, dv = rng.normal(0.0, 1.3 * radius, 2)
        satellite = np.hypot(
            (u - centre_u - du) / (0.6 * radius), (v - centre_v - dv) / (0.6 * radius)
        )
        region = np.maximum(region, _sigmoid((1.0 - satellite + warp) / 0.2))
    return region * lungs


def _render_chest_xray(
    label: str, patient: int, index: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One chest radiograph and its mask: ((H, W) uint8, (H, W) uint8 in {0, 255})."""
    patient_rng = np.random.default_rng([seed, _CXR_PATIENT_STREAM, patient])
    rng = np.random.default_rng([seed, _CXR_IMAGE_STREAM, index])
    c = _chest_traits(patient_rng, label)
    pixel = 2.0 / image_size

    # Positioning: the child is never quite centred, straight or equally inspired.
    shift = rng.normal(0.0, 0.035, 2)
    tilt = float(rng.normal(0.0, 0.04))
    scale = float(rng.uniform(0.9, 1.04))
    cos_t, sin_t = np.cos(tilt), np.sin(tilt)

    def body_coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = _grid(size)
        dx, dy = x - shift[0], y - shift[1]
        u = ((cos_t * dx + sin_t * dy) / scale).astype(np.float32)
        v = ((-sin_t * dx + cos_t * dy) / scale).astype(np.float32)
        return u, v

    u, v = body_coordinates(image_size)

    def to_image(points: np.ndarray) -> np.ndarray:
        pu, pv = points[:, 0] * scale, points[:, 1] * scale
        out = np.stack([cos_t * pu - sin_t * pv + shift[0], sin_t * pu + cos_t * pv + shift[1]], 1)
        return out.astype(np.float32)

    # Soft tissue: neck, shoulders, a thorax thicker in the middle, the abdomen below.
    half_width = 0.2 + (c.body_width - 0.2) * _sigmoid((v - c.lung_top + 0.05) / 0.07)
    body = _sigmoid((half_width - np.abs(u)) / 0.035)
    across = np.clip(np.abs(u) / np.maximum(half_width, 1e-3), 0.0, 1.0)
    density = c.tissue * body * (0.7 + 0.3 * np.sqrt(1.0 - across**2))
    spine = _sigmoid((0.06 - np.abs(u)) / 0.015)
    density += 0.08 * spine * (1.0 + 0.3 * np.cos(2 * np.pi * v / c.rib_spacing))

    lungs = _chest_lungs(c, u, v, pixel)
    heart = _chest_heart(c, u, v)
    inspiration = float(rng.uniform(0.92, 1.05))
    lungs = lungs * (1.0 - 0.9 * heart)
    # Lung markings: vessels fanning out from the hila, brighter near them.
    hila = np.exp(-((np.abs(u) - c.mediastinum - 0.08) ** 2 + (v + 0.05) ** 2) / 0.06)
    markings = (
        c.markings
        * (1.0 + 1.5 * hila)
        * (_value_noise(rng, 12, image_size) + 0.6 * _value_noise(rng, 6, image_size))
    )
    air = c.air * inspiration * lungs * (1.0 - 0.35 * hila)
    density = density - air + lungs * markings + 0.04 * heart * body
    if c.gastric_bubble:
        bubble_v = c.lung_bottom + 0.12 + float(rng.normal(0.0, 0.02))
        bubble = np.hypot((u - 0.4) / 0.12, (v - bubble_v) / 0.07)
        density -= 0.18 * _sigmoid((1.0 - bubble) / 0.2) * body

    ribs, clavicles = _chest_bones(rng, c, to_image, image_size)
    density += body * (0.07 * ribs * (0.5 + 0.5 * lungs) + 0.14 * clavicles)

    grid_u, grid_v = body_coordinates(_CXR_PLACEMENT_GRID)
    grid_lungs = _chest_lungs(c, grid_u, grid_v, 2.0 / _CXR_PLACEMENT_GRID) * (
        1.0 - 0.9 * _chest_heart(c, grid_u, grid_v)
    )
    patch = _chest_patch(rng, c, u, v, lungs, (grid_u, grid_v, grid_lungs))
    if c.patches:
        texture = 0.55 + 0.45 * _sigmoid(2.5 * _value_noise(rng, 9, image_size))
        consolidation = c.density * c.air * patch * texture
        density = density + consolidation
    mask_field = patch > 0.5
    if not mask_field.any():  # a tiny image: keep the patch's core at least
        mask_field = patch >= 0.9 * float(patch.max())
    mask = np.where(mask_field, 255, 0).astype(np.uint8)

    # Exposure and the detector: contrast, brightness, a tone curve, blur, noise.
    contrast = c.contrast * float(rng.uniform(0.94, 1.06))
    film = np.clip(c.brightness + contrast * density, 0.0, 1.0) ** (
        c.gamma * rng.uniform(0.95, 1.05)
    )
    blur = rng.uniform(0.3, 0.8) * image_size / 64
    film = ndimage.gaussian_filter(film.astype(np.float32), sigma=blur)
    noise = rng.uniform(0.012, 0.03)
    film = film + noise * rng.standard_normal(film.shape, dtype=np.float32)
    image = np.clip(np.round(film * 255.0), 0, 255).astype(np.uint8)
    return image, mask


# ---------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """Everything that decides the dataset (picklable, for worker processes)."""

    total: int
    image_size: int
    seed: int
    imbalance: float | None = None
    min_per_class: int = DEFAULT_MIN_PER_CLASS
    variant: str = DEFAULT_VARIANT
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION

    def plan(self) -> DemoPlan:
        return demo_plan(
            self.total,
            self.seed,
            imbalance=self.imbalance,
            min_per_class=self.min_per_class,
            variant=self.variant,
            positive_fraction=self.positive_fraction,
        )


def generate_demo_samples(
    total: int = DEFAULT_TOTAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    *,
    workers: int = 1,
    imbalance: float | None = None,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    variant: str = DEFAULT_VARIANT,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> Iterator[DemoSample]:
    """Yield the ``total`` demo samples in index order, drawing each lazily.

    With ``workers > 1`` images are drawn in that many processes, a bounded window of
    chunks ahead of the consumer; the samples are identical to ``workers=1``.
    ``imbalance``, ``min_per_class``, ``variant`` and ``positive_fraction`` as in
    :func:`demo_class_counts`.
    """
    spec = _Spec(total, image_size, seed, imbalance, min_per_class, variant, positive_fraction)
    plan = spec.plan()
    drawn = _in_index_order(partial(_draw_chunk, spec), total, workers)
    for index, (image, mask) in enumerate(drawn):
        patient = int(plan.patients[index])
        yield DemoSample(
            index=index,
            image_id=demo_image_id(index, seed, variant),
            image=image,
            mask=mask,
            label=plan.class_names[int(plan.labels[index])],
            group=demo_group_id(patient, seed, variant),
        )


_CHUNK = 32  # images per task: amortises inter-process overhead, keeps progress smooth
_Chunk = TypeVar("_Chunk")


def _draw_chunk(spec: _Spec, start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and masks for indices ``start..stop-1`` (runs in worker processes)."""
    plan = spec.plan()  # cheap, and spares shipping the plan to every task
    drawn = []
    for index in range(start, stop):
        label = plan.class_names[int(plan.labels[index])]
        patient = int(plan.patients[index])
        drawn.append(
            render_demo_image(
                label, patient, index, spec.image_size, spec.seed, variant=spec.variant
            )
        )
    return drawn


def _encode_chunk(spec: _Spec, start: int, stop: int) -> list[tuple[bytes, bytes]]:
    """PNG bytes of images (with the demo marker) and masks for ``start..stop-1``.

    Encoding a 256 px PNG costs about half as much as drawing it, so it is done in
    the worker processes too rather than in the writer. Chest X-rays are (H, W), so
    they are written as grayscale ("L") PNGs.
    """
    plan = spec.plan()
    encoded = []
    for offset, (image, mask) in enumerate(_draw_chunk(spec, start, stop)):
        index = start + offset
        label = plan.class_names[int(plan.labels[index])]
        note = f"seed={spec.seed};index={index};label={label}"
        if spec.variant != DEFAULT_VARIANT:
            note += f";variant={spec.variant}"
        encoded.append((encode_png(image, text={DEMO_PNG_KEY: note}), encode_png(mask)))
    return encoded


def _in_index_order(
    chunk: Callable[[int, int], list[_Chunk]], total: int, workers: int
) -> Iterator[_Chunk]:
    """Results of ``chunk(start, stop)`` over ``0..total-1``, flattened, in index order.

    With several workers the chunks run in a process pool; "spawn" rather than fork,
    because callers may hold threads (torch, Celery) that a forked child would inherit
    in a broken state. At most ``2 * workers`` chunks are in flight, so memory stays
    bounded however slow the consumer is.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bounds = [(start, min(start + _CHUNK, total)) for start in range(0, total, _CHUNK)]
    if workers == 1:
        for start, stop in bounds:
            yield from chunk(start, stop)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = deque(pool.submit(chunk, *span) for span in bounds[: 2 * workers])
        queued = iter(bounds[2 * workers :])
        while pending:
            results = pending.popleft().result()
            span = next(queued, None)
            if span is not None:
                pending.append(pool.submit(chunk, *span))
            yield from results


def load_demo_arrays(
    total: int = DEFAULT_TOTAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    workers: int = 1,
    imbalance: float | None = None,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    variant: str = DEFAULT_VARIANT,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> DemoArrays:
    """The whole demo set as arrays (see :class:`DemoArrays`); ~30 MB at the defaults.

    ``progress(done, total)`` is called after each image; ``should_cancel()`` is polled
    before each and raises :class:`DemoDatasetCanceled` when it returns True;
    ``workers`` draws images in that many processes (same result). The remaining
    options as in :func:`demo_class_counts`.
    """
    class_names = demo_classes(variant)
    channels = () if variant == "chest_xray" else (3,)
    images = np.empty((total, image_size, image_size, *channels), dtype=np.uint8)
    masks = np.empty((total, image_size, image_size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    groups: list[str] = []
    samples = generate_demo_samples(
        total,
        image_size,
        seed,
        workers=workers,
        imbalance=imbalance,
        min_per_class=min_per_class,
        variant=variant,
        positive_fraction=positive_fraction,
    )
    for sample in samples:
        if should_cancel is not None and should_cancel():
            raise DemoDatasetCanceled(f"canceled after {sample.index} of {total} images")
        images[sample.index] = sample.image
        masks[sample.index] = sample.mask
        labels[sample.index] = class_names.index(sample.label)
        groups.append(sample.group)
        if progress is not None:
            progress(sample.index + 1, total)
    return DemoArrays(
        images=images, masks=masks, labels=labels, groups=groups, class_names=class_names
    )


def write_demo_dataset(
    out_dir: Path,
    total: int = DEFAULT_TOTAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    workers: int = 1,
    imbalance: float | None = None,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    variant: str = DEFAULT_VARIANT,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> Path:
    """Write the demo set as a tailsynth CSV-manifest dataset and return the manifest path.

    Layout: ``out_dir/images/<image_id>.png``, ``out_dir/masks/<image_id>.png`` and
    ``out_dir/manifest.csv`` with header ``path,label,mask,group`` (paths relative to
    ``out_dir``, POSIX separators). The manifest is written last and moved into place
    atomically, so a directory with a manifest is always complete. Callbacks and
    ``workers`` as in :func:`load_demo_arrays`; ``imbalance``, ``min_per_class``,
    ``variant`` and ``positive_fraction`` as in :func:`demo_class_counts` (chest
    X-rays are written as grayscale PNGs).
    """
    spec = _Spec(total, image_size, seed, imbalance, min_per_class, variant, positive_fraction)
    plan = spec.plan()  # validates the options before anything is written
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    encoded = _in_index_order(partial(_encode_chunk, spec), total, workers)
    rows: list[tuple[str, str, str, str]] = []
    for index, (image_png, mask_png) in enumerate(encoded):
        if should_cancel is not None and should_cancel():
            raise DemoDatasetCanceled(f"canceled after {index} of {total} images")
        image_id = demo_image_id(index, seed, variant)
        image_rel, mask_rel = f"images/{image_id}.png", f"masks/{image_id}.png"
        (out_dir / image_rel).write_bytes(image_png)
        (out_dir / mask_rel).write_bytes(mask_png)
        label = plan.class_names[int(plan.labels[index])]
        group = demo_group_id(int(plan.patients[index]), seed, variant)
        rows.append((image_rel, label, mask_rel, group))
        if progress is not None:
            progress(index + 1, total)
    manifest = out_dir / "manifest.csv"
    unfinished = out_dir / "manifest.csv.partial"
    with unfinished.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "mask", "group"))
        writer.writerows(rows)
    os.replace(unfinished, manifest)
    return manifest
