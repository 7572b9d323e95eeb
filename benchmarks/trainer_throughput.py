"""Training and inference throughput of a classifier backbone, through the library's own code.

Measures what a trainer or OOD-filter worker would see: uint8 images in, including
resampling, augmentation and normalisation, not just the bare forward pass.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_throughput.py \
        --backbone resnet18 --image-size 64 --train-images 256 --infer-images 512

Prints one JSON line: train_images_per_s is measured on the last of ``--epochs`` epochs
(the first pays for allocation and warm-up); infer_images_per_s is the best of
``--repeats`` timed passes of ``features_and_logits`` after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from services.trainer.classifier import ClassifierConfig, resolve_device, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=96, help="side of the input images")
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--infer-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--inference-batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.train_images, args.source_size, args.source_size, 3)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.arange(args.train_images) % args.num_classes
    class_names = [f"class_{k}" for k in range(args.num_classes)]
    config = ClassifierConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        inference_batch_size=args.inference_batch_size,
        device=args.device,
        seed=0,
    )
    classifier = train_classifier(images, labels, class_names, config)
    train_rate = args.train_images / classifier.history.epochs[-1].seconds

    infer_shape = (args.infer_images, args.source_size, args.source_size, 3)
    infer_images = rng.integers(0, 256, infer_shape, dtype=np.uint8)
    classifier.features_and_logits(infer_images[: args.inference_batch_size])  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        classifier.features_and_logits(infer_images)
        best = min(best, time.perf_counter() - started)

    result = {
        "benchmark": "trainer_throughput",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "source_size": args.source_size,
        "device": str(resolve_device(args.device)),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "inference_batch_size": args.inference_batch_size,
        "train_images": args.train_images,
        "train_images_per_s": round(train_rate, 1),
        "infer_images": args.infer_images,
        "infer_images_per_s": round(args.infer_images / best, 1),
        "parameters": sum(p.numel() for p in classifier.model.parameters()),
    }
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
