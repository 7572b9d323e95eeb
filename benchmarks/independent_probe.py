"""Are the kept images recognisable to a classifier the filter never used?

The OOD filter and the generator's quality probe share one real-data classifier, so that
classifier's accuracy on the *kept* images is partly the filter's own selection (its
class-probability detector keeps what the classifier calls on-class). This benchmark
trains a second classifier on the same real training images only — another backbone,
another seed — and reports, per class, its accuracy on real validation images and on
the kept and the rejected candidates of a finished synthesis that ``tailsynth serve
--data-dir`` left behind (``benchmarks/tail_demo.py`` makes one)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/independent_probe.py --data-dir .bench-tail \\
        --synthesis-id <id from tail_demo.py's "ids:" line>
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from grids import candidates_of, database, pixels, real_rows

from services.trainer.classifier import ClassifierConfig, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".bench-tail"))
    parser.add_argument("--synthesis-id", required=True)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="JSON of the figures (default: in --data-dir)")
    args = parser.parse_args()

    size = args.image_size
    real = real_images(args.data_dir, args.synthesis_id, size)
    names = sorted({label for _, label in real["train"]})
    index = {name: k for k, name in enumerate(names)}

    def stack(rows: list[tuple[np.ndarray, str]]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([image for image, _ in rows]), np.array([index[c] for _, c in rows])

    train_x, train_y = stack(real["train"])
    val_x, val_y = stack(real["val"])
    config = ClassifierConfig(
        backbone=args.backbone,
        image_size=size,
        epochs=args.epochs,
        seed=args.seed,
        balanced_sampling=True,  # the tail classes must be learnt at all
        min_train_steps=300,
        device="cpu",
    )
    classifier = train_classifier(
        train_x, train_y, names, config, val_images=val_x, val_labels=val_y
    )
    candidates: dict[str, dict[str, list[np.ndarray]]] = {}
    for row in candidates_of(args.data_dir, args.synthesis_id):
        if row.decision is None:
            continue
        group = "kept" if row.decision == "kept" else "rejected"
        image = pixels(args.data_dir, row.candidate_key or row.object_key, size)
        candidates.setdefault(row.label, {}).setdefault(group, []).append(image)

    def accuracy(images: np.ndarray, label: str) -> tuple[float | None, int]:
        if len(images) == 0:
            return None, 0
        predicted = classifier.predict(images)
        return float(np.mean(predicted == index[label])), len(images)

    rows: list[dict[str, Any]] = []
    for label in names:
        if label not in candidates:
            continue
        real_val = val_x[val_y == index[label]]
        entry: dict[str, Any] = {"class": label, "n_train": int(np.sum(train_y == index[label]))}
        for group, images in (
            ("real_val", real_val),
            ("kept", np.array(candidates[label].get("kept", []))),
            ("rejected", np.array(candidates[label].get("rejected", []))),
        ):
            entry[group], entry[f"n_{group}"] = accuracy(images, label)
        rows.append(entry)
    print_table(rows, config, len(names))
    out = args.out or args.data_dir / "independent-probe.json"
    out.write_text(json.dumps({"config": config.to_dict(), "classes": rows}, indent=1))
    print(f"figures: {out}")  # noqa: T201


def real_images(
    data_dir: Path, synthesis_id: str, size: int
) -> dict[str, list[tuple[np.ndarray, str]]]:
    """The synthesis's dataset's real train and val images (never test) with labels."""
    from shared.models import Split, SynthesisRequest

    with database(data_dir)() as session:
        request = session.get(SynthesisRequest, uuid.UUID(synthesis_id))
        assert request is not None, f"no synthesis {synthesis_id} in {data_dir}"
        dataset_id = request.dataset_id
    split: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "val": []}
    for row in real_rows(data_dir, dataset_id, Split.TRAIN, Split.VAL):
        assert row.split is not None
        split[row.split.value].append((pixels(data_dir, row.object_key, size), row.label))
    return split


def print_table(rows: list[dict[str, Any]], config: ClassifierConfig, n_classes: int) -> None:
    def cell(value: float | None, n: int) -> str:
        return "n/a" if value is None else f"{value:.2f} ({n})"

    print(  # noqa: T201
        f"independent probe: {config.backbone} at {config.image_size} px, seed {config.seed}, "
        f"{config.epochs} epochs, class-balanced, real train images only; chance "
        f"{1 / n_classes:.3f}\n"
        "| class | train images | on real val | on kept | on rejected |\n|---|---|---|---|---|"
    )
    for r in sorted(rows, key=lambda r: r["n_train"]):
        print(  # noqa: T201
            f"| {r['class']} | {r['n_train']} | {cell(r['real_val'], r['n_real_val'])} | "
            f"{cell(r['kept'], r['n_kept'])} | {cell(r['rejected'], r['n_rejected'])} |"
        )


if __name__ == "__main__":
    main()
