"""OOD filter on the demo dataset: AUROC against planted bad candidates, keep and copy rates.

Draws the demo set, splits it by patient (``shared.ingest.splits.assign_splits``: train,
val, test), fine-tunes a small timm classifier on the train split (the filter's feature
model), fits the filter on train, calibrates on val, and evaluates on the test split
(held-out real images, never used for fitting or thresholds) against planted bad
candidates: other classes relabelled, heavy noise, blur, colour shift, exact and
flipped/rotated copies of training images.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ood_filter_demo_eval.py --json out.json
    .venv/bin/python benchmarks/ood_filter_demo_eval.py --total 6000 --classifier clf.safetensors

"Done when" targets: combined AUROC >= 0.95, >= 90 % of held-out real images kept at the
default threshold, >= 99 % of exact and flipped copies rejected.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.ood_filter.evaluation import LabelledImages, evaluate_ood_filter
from services.ood_filter.filter import OodFilterConfig
from services.trainer.classifier import ClassifierConfig, ImageClassifier, train_classifier
from shared.demo_dataset import DEMO_CLASSES, load_demo_arrays
from shared.ingest.splits import assign_splits

logger = logging.getLogger("ood_filter_demo_eval")


def _table(report: dict[str, Any]) -> str:
    """Per-class rows: AUROC per detector and combined, keep rate, rejection rates."""
    detectors = [*report["config"]["detectors"], "combined"]
    short = {"relative_mahalanobis": "rel_maha", "class_probability": "class_p"}
    header = f"{'class':<5} {'n_tr':>4} {'n_val':>5} {'n_test':>6} " + " ".join(
        f"{short.get(d, d)[:9]:>9}" for d in detectors
    )
    header += f" {'keep':>5} {'rej_ood':>7} {'copy':>5}"
    lines = [header]
    ood_kinds = ("other_class", "noise", "blur", "colour_shift")
    for name, entry in report["per_class"].items():
        rejections = [entry["rejection_rate"][k] for k in ood_kinds if k in entry["rejection_rate"]]
        copies = [entry["near_copy_rate"][k] for k in ("exact_copy", "flipped_copy")]
        aurocs = " ".join(
            f"{entry['auroc'][d]:>9.3f}" if entry["auroc"][d] is not None else f"{'-':>9}"
            for d in detectors
        )
        lines.append(
            f"{name:<5} {entry['n_train']:>4} {entry['n_validation']:>5} "
            f"{entry['n_heldout_real']:>6} {aurocs} {entry['real_keep_rate']:>5.3f} "
            f"{float(np.mean(rejections)):>7.3f} {float(np.mean(copies)):>5.3f}"
        )
    overall = report["overall"]
    lines.append(
        "mean  " + " " * 17 + " ".join(f"{overall['mean_auroc'][d]:>9.3f}" for d in detectors)
    )
    lines.append(f"pooled combined AUROC {overall['pooled_combined_auroc']:.3f}")
    lines.append(
        f"held-out real kept {overall['real_keep_rate']:.3f} "
        f"(lowest class {overall['min_class_real_keep_rate']:.3f})"
    )
    lines.append(f"rejection rate by planted kind {json.dumps(overall['rejection_rate'])}")
    lines.append(f"near-copy rate by kind {json.dumps(overall['near_copy_rate'])}")
    lines.append(f"copies rejected as near_copy {overall['copy_rejection_rate']:.4f}")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--planted-per-kind", type=int, default=50)
    parser.add_argument(
        "--min-validation", type=int, default=OodFilterConfig.min_validation_per_class
    )
    parser.add_argument("--target-keep-rate", type=float, default=OodFilterConfig.target_keep_rate)
    parser.add_argument(
        "--detectors",
        default=",".join(OodFilterConfig().detectors),
        help="comma-separated detector names",
    )
    parser.add_argument(
        "--classifier", type=Path, help="reuse this checkpoint if it exists, else save it here"
    )
    parser.add_argument("--json", type=Path, help="also write the full report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    timings: dict[str, float] = {}

    started = time.perf_counter()
    data = load_demo_arrays(args.total, args.image_size, args.seed)
    timings["generate_s"] = time.perf_counter() - started
    names = list(DEMO_CLASSES)
    splits = np.array(assign_splits([names[k] for k in data.labels], data.groups, args.seed))
    groups = np.asarray(data.groups)
    sets = {
        split: LabelledImages(
            data.images[splits == split], data.labels[splits == split], groups[splits == split]
        )
        for split in ("train", "val", "test")
    }
    for split, images in sets.items():
        logger.info("%s: %s", split, np.bincount(images.labels, minlength=len(names)).tolist())

    started = time.perf_counter()
    if args.classifier is not None and args.classifier.exists():
        classifier = ImageClassifier.load(args.classifier, device=args.device)
    else:
        classifier = train_classifier(
            sets["train"].images,
            sets["train"].labels,
            names,
            ClassifierConfig(
                backbone=args.backbone,
                image_size=args.image_size,
                epochs=args.epochs,
                lr=args.lr,
                seed=args.seed,
                device=args.device,
                vertical_flip=True,  # dermoscopy has no up or down
            ),
            val_images=sets["val"].images,
            val_labels=sets["val"].labels,
        )
        if args.classifier is not None:
            classifier.save(args.classifier)
    timings["classifier_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report = evaluate_ood_filter(
        classifier,
        sets["train"],
        sets["val"],
        sets["test"],
        config=OodFilterConfig(
            detectors=tuple(args.detectors.split(",")),
            min_validation_per_class=args.min_validation,
            target_keep_rate=args.target_keep_rate,
        ),
        class_names=names,
        planted_per_kind=args.planted_per_kind,
        seed=args.seed,
    )
    timings["evaluate_s"] = time.perf_counter() - started
    report["timings"] = timings
    report["args"] = {key: str(value) for key, value in vars(args).items()}
    report["torch_threads"] = torch.get_num_threads()
    print(_table(report))  # noqa: T201
    print(json.dumps(timings))  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
