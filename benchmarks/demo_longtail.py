"""Evidence that the built-in demo set shows the long-tail problem.

Draws the demo set, splits it into train and test stratified by class (grouped by
patient by default, so no lesion is in both), trains a small timm classifier with
tailsynth's own trainer and reports per-class recall, balanced accuracy and the mean
recall of head classes (NV, MEL, BCC, BKL) against tail classes (AK, SCC, VASC, DF).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/demo_longtail.py
    .venv/bin/python benchmarks/demo_longtail.py --total 4800 --epochs 12 --json out.json

Measured with the defaults (2,400 images at 64 px, seed 0, resnet18 from scratch, 6 epochs,
grouped 75/25 split, OMP_NUM_THREADS=2 on a shared 2-core CPU, ~11 min): recall NV
0.92, MEL 0.82, BCC 0.96, BKL 0.47 | AK 0.19, SCC 0.20, VASC 0.14, DF 0.00; accuracy
0.80, balanced accuracy 0.46; head mean 0.79 against tail mean 0.13. Tail classes have
5-21 test images, so their recalls move in steps of 0.05-0.2 between seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from services.trainer.classifier import ClassifierConfig, train_classifier
from services.trainer.metrics import classification_report
from shared.demo_dataset import DEMO_CLASSES, load_demo_arrays

HEAD_CLASSES = ("NV", "MEL", "BCC", "BKL")
TAIL_CLASSES = ("AK", "SCC", "VASC", "DF")

logger = logging.getLogger("demo_longtail")


def split_indices(
    labels: np.ndarray, groups: list[str], test_fraction: float, grouped: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by class; with ``grouped`` no patient straddles
    the split (StratifiedGroupKFold, one fold of about ``test_fraction`` as test)."""
    indices = np.arange(len(labels))
    if not grouped:
        train, test = train_test_split(
            indices, test_size=test_fraction, stratify=labels, random_state=seed
        )
        return np.sort(train), np.sort(test)
    folds = StratifiedGroupKFold(n_splits=round(1 / test_fraction), shuffle=True, random_state=seed)
    train, test = next(folds.split(indices, labels, groups))
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--random-split", action="store_true", help="ignore patient groups")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    data = load_demo_arrays(args.total, args.image_size, args.seed)
    generation_s = time.perf_counter() - started
    logger.info("generated %d images at %d px in %.1f s", args.total, args.image_size, generation_s)

    train, test = split_indices(
        data.labels, data.groups, args.test_fraction, not args.random_split, args.seed
    )
    config = ClassifierConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device="cpu",
        vertical_flip=True,  # dermoscopy has no up or down
    )
    started = time.perf_counter()
    classifier = train_classifier(
        data.images[train], data.labels[train], list(DEMO_CLASSES), config
    )
    training_s = time.perf_counter() - started
    predicted = classifier.predict_proba(data.images[test]).argmax(axis=1)
    report = classification_report(data.labels[test], predicted, list(DEMO_CLASSES))

    recall = {m.name: m.recall for m in report.per_class}
    train_counts = np.bincount(data.labels[train], minlength=len(DEMO_CLASSES))
    head = float(np.mean([recall[name] for name in HEAD_CLASSES]))
    tail = float(np.mean([recall[name] for name in TAIL_CLASSES]))
    lines = [f"{'class':<5} {'train':>5} {'test':>5} {'recall':>7}"]
    for k, metrics in enumerate(report.per_class):
        lines.append(
            f"{metrics.name:<5} {train_counts[k]:>5} {metrics.support:>5} {metrics.recall:>7.3f}"
        )
    lines += [
        f"accuracy           {report.accuracy:.3f}",
        f"balanced accuracy  {report.balanced_accuracy:.3f}",
        f"head recall (mean of {', '.join(HEAD_CLASSES)})  {head:.3f}",
        f"tail recall (mean of {', '.join(TAIL_CLASSES)})  {tail:.3f}",
        f"generation {generation_s:.1f} s, training {training_s:.1f} s "
        f"({args.backbone}, {args.epochs} epochs, torch threads {torch.get_num_threads()})",
    ]
    print("\n".join(lines))  # noqa: T201
    if args.json:
        figures = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "per_class_recall": recall,
            "accuracy": report.accuracy,
            "balanced_accuracy": report.balanced_accuracy,
            "head_recall": head,
            "tail_recall": tail,
            "confusion_matrix": report.confusion_matrix,
            "generation_s": generation_s,
            "training_s": training_s,
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
