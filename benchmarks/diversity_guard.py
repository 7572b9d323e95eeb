"""What the curated set's diversity guard costs and buys, per class, on a real synthesis.

The filter leaves a candidate out as ``duplicate`` when its pHash lies within
``duplicate_bits`` (default 4) of a better kept one, and as ``background`` when its source
image already carries its share of the class's kept candidates (``background_share``,
default on). This benchmark reads a finished synthesis that ``tailsynth serve --data-dir``
left behind (``benchmarks/tail_demo.py`` makes one) and replays the filter's selection
(:func:`services.ood_filter.selection.decide`, with the stored combined scores and
decisions) over the class's whole candidate pool for each ``--bits`` setting, with the
background share on and off. Per class and setting it prints what was kept of what was
asked, how many distinct backgrounds the kept images come from and the most on one, the
median pHash distance from each kept image to its nearest kept neighbour, the kept
images' spread in the real-data probe's feature space over the spread of the class's real
training images (1.0: as varied as the real images), and the probe's accuracy on them.

It also measures the guard's false positives on real images: the share of pairs of
distinct real training images of a class that lie within each ``--bits`` setting, i.e.
pairs that the guard would have called duplicates.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/diversity_guard.py --data-dir .bench-tail \\
        --synthesis-id <id from tail_demo.py's "ids:" line>
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from grids import candidates_of, database, pixels, real_rows

from services.ood_filter.hashing import hamming_distances, perceptual_hashes
from services.ood_filter.records import Reason
from services.ood_filter.selection import SelectionRule, decide
from services.trainer.classifier import ImageClassifier

#: Decisions of candidates that passed every threshold (left out only by the cap or guard).
PASSED = {Reason.KEPT, Reason.SURPLUS, Reason.DUPLICATE, Reason.BACKGROUND}


@dataclass
class ClassPool:
    """Every candidate of one class with what the filter stored about it."""

    label: str
    asked: int
    images: np.ndarray  # (N, S, S, 3) uint8 at the probe's size
    combined: np.ndarray
    reasons: list[Reason]
    backgrounds: np.ndarray  # (N,) int, -1 for none


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".bench-tail"))
    parser.add_argument("--synthesis-id", required=True)
    parser.add_argument(
        "--bits",
        nargs="+",
        default=["none", "0", "2", "4", "6", "8", "10"],
        help="duplicate_bits settings to replay ('none': no duplicate check)",
    )
    parser.add_argument("--out", type=Path, help="JSON of every figure (default: in --data-dir)")
    args = parser.parse_args()
    bits = [None if b.lower() == "none" else int(b) for b in args.bits]

    classifier, pools, real = load(args.data_dir, args.synthesis_id)
    names = classifier.class_names
    results: dict[str, Any] = {"synthesis_id": args.synthesis_id, "classes": {}}
    for pool in pools:
        real_images = real.get(pool.label, np.empty((0, *pool.images.shape[1:]), np.uint8))
        real_features = classifier.features(real_images) if len(real_images) else None
        features = classifier.features(pool.images)
        predicted = classifier.predict_proba(pool.images).argmax(axis=1)
        hashes = phashes(pool.images)
        real_hashes = phashes(real_images)
        entry: dict[str, Any] = {
            "asked": pool.asked,
            "candidates": len(pool.combined),
            "passed_thresholds": sum(r in PASSED for r in pool.reasons),
            "distinct_backgrounds": len(np.unique(pool.backgrounds[pool.backgrounds >= 0])),
            "real_train_images": len(real_images),
            "real_pairs_within": real_pairs_within(real_hashes, bits),
            "real_median_nearest_phash_bits": median_nearest_bits(real_hashes),
            "settings": [],
        }
        real_spread = spread(real_features) if real_features is not None else None
        for share in (True, False):
            for b in bits:
                kept = replay(pool, hashes, b, share)
                entry["settings"].append(
                    {
                        "duplicate_bits": b,
                        "background_share": share,
                        **kept_figures(
                            pool,
                            kept,
                            hashes,
                            features,
                            real_spread,
                            predicted == names.index(pool.label),
                        ),
                    }
                )
        results["classes"][pool.label] = entry
    print_tables(results)
    out = args.out or args.data_dir / "diversity-guard.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"figures: {out}")  # noqa: T201


def load(
    data_dir: Path, synthesis_id: str
) -> tuple[ImageClassifier, list[ClassPool], dict[str, np.ndarray]]:
    """The probe classifier, every class's candidate pool, and the real training images."""
    from sqlalchemy import select

    from shared.models import Generator, OodScore, Split, SynthesisRequest

    with database(data_dir)() as session:
        request = session.get(SynthesisRequest, uuid.UUID(synthesis_id))
        assert request is not None, f"no synthesis {synthesis_id} in {data_dir}"
        generator = session.get(Generator, request.generator_id)
        assert generator is not None
        combined = dict(
            session.execute(
                select(OodScore.synthetic_image_id, OodScore.score).where(
                    OodScore.detector == "combined"
                )
            ).all()
        )
        dataset_id = request.dataset_id
        counts = {name: int(n) for name, n in request.counts.items()}
        classifier_key = generator.quality["classifier_key"]
    classifier = ImageClassifier.load(data_dir / "cache" / classifier_key)
    size = classifier.config.image_size
    background_ids: dict[uuid.UUID, int] = {}
    by_class: dict[str, list[Any]] = {}
    for row in candidates_of(data_dir, synthesis_id):
        if row.decision is not None and row.id in combined:
            by_class.setdefault(row.label, []).append(row)
    pools = []
    for label, rows in by_class.items():
        pools.append(
            ClassPool(
                label=label,
                asked=counts[label],
                images=np.stack(
                    [pixels(data_dir, r.candidate_key or r.object_key, size) for r in rows]
                ),
                combined=np.array([combined[r.id] for r in rows]),
                reasons=[Reason(r.decision) for r in rows],
                backgrounds=np.array(
                    [
                        -1
                        if r.source_image_id is None
                        else background_ids.setdefault(r.source_image_id, len(background_ids))
                        for r in rows
                    ]
                ),
            )
        )
    real: dict[str, list[np.ndarray]] = {}
    for r in real_rows(data_dir, dataset_id, Split.TRAIN):
        if r.label in by_class:
            real.setdefault(r.label, []).append(pixels(data_dir, r.object_key, size))
    return classifier, pools, {label: np.stack(images) for label, images in real.items()}


def replay(pool: ClassPool, hashes: np.ndarray, bits: int | None, share: bool) -> np.ndarray:
    """Which candidates the filter keeps under this guard setting, as it would decide."""
    rule = SelectionRule.calibrated().capped(
        pool.asked, duplicate_bits=bits, background_share=share
    )
    passed = np.array([r in PASSED for r in pool.reasons])
    kept, _ = decide(
        rule,
        combined=pool.combined,
        is_copy=np.array([r is Reason.NEAR_COPY for r in pool.reasons]),
        off_class=np.array([r is Reason.OFF_CLASS for r in pool.reasons]),
        # Anything else that failed a threshold (ood) stays out, as stored.
        ood=~passed & np.array([r is not Reason.OFF_CLASS for r in pool.reasons]),
        phashes=hashes,
        backgrounds=pool.backgrounds,
    )
    return kept


def kept_figures(
    pool: ClassPool,
    kept: np.ndarray,
    hashes: np.ndarray,
    features: np.ndarray,
    real_spread: float | None,
    recognised: np.ndarray,
) -> dict[str, Any]:
    backgrounds = pool.backgrounds[kept]
    _, per_background = np.unique(backgrounds[backgrounds >= 0], return_counts=True)
    kept_spread = spread(features[kept])
    return {
        "kept": int(kept.sum()),
        "backgrounds_used": len(per_background),
        "most_on_one_background": int(per_background.max()) if len(per_background) else 0,
        "median_nearest_phash_bits": median_nearest_bits(hashes[kept]),
        "spread_vs_real": None
        if kept_spread is None or not real_spread
        else kept_spread / real_spread,
        "probe_accuracy": float(recognised[kept].mean()) if kept.any() else None,
    }


def spread(features: np.ndarray) -> float | None:
    """Mean pairwise Euclidean distance of feature rows (None below two rows)."""
    if len(features) < 2:
        return None
    squared = (features**2).sum(axis=1)
    d2 = squared[:, None] + squared[None, :] - 2 * features @ features.T
    upper = np.triu_indices(len(features), k=1)
    return float(np.sqrt(np.clip(d2[upper], 0, None)).mean())


def phashes(images: np.ndarray) -> np.ndarray:
    """(N,) uint64 pHashes of the images as given, as the filter hashes candidates."""
    if len(images) == 0:
        return np.empty(0, dtype=np.uint64)
    return perceptual_hashes(images, all_orientations=False)[:, 0]


def real_pairs_within(hashes: np.ndarray, bits: list[int | None]) -> dict[str, float | None]:
    """Per setting, the share of distinct image pairs within that many pHash bits."""
    if len(hashes) < 2:
        return {str(b): None for b in bits}
    distances = hamming_distances(hashes, hashes)[np.triu_indices(len(hashes), k=1)]
    return {str(b): None if b is None else float(np.mean(distances <= b)) for b in bits}


def median_nearest_bits(hashes: np.ndarray) -> float | None:
    """Median pHash distance from each image to its nearest other one (None below two)."""
    if len(hashes) < 2:
        return None
    distances = hamming_distances(hashes, hashes).astype(float)
    np.fill_diagonal(distances, np.inf)
    return float(np.median(distances.min(axis=1)))


def print_tables(results: dict[str, Any]) -> None:
    def fmt(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    for label, entry in results["classes"].items():
        print(  # noqa: T201
            f"\n{label}: {entry['asked']} asked, {entry['candidates']} candidates "
            f"({entry['passed_thresholds']} passed the thresholds) from "
            f"{entry['distinct_backgrounds']} backgrounds; {entry['real_train_images']} real "
            "training images (median nearest pHash "
            f"{fmt(entry['real_median_nearest_phash_bits'], 1)}), share of their pairs "
            "within b bits: "
            + ", ".join(
                f"{b}: {fmt(v)}" for b, v in entry["real_pairs_within"].items() if b != "None"
            )
        )
        print(  # noqa: T201
            "| duplicate_bits | background share | kept | backgrounds used | most on one | "
            "median nearest pHash | spread vs real | probe on kept |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        for s in entry["settings"]:
            print(  # noqa: T201
                f"| {s['duplicate_bits']} | {'on' if s['background_share'] else 'off'} | "
                f"{s['kept']} | {s['backgrounds_used']} | {s['most_on_one_background']} | "
                f"{fmt(s['median_nearest_phash_bits'], 1)} | {fmt(s['spread_vs_real'])} | "
                f"{fmt(s['probe_accuracy'])} |"
            )


if __name__ == "__main__":
    main()
