"""OOD filter throughput on CPU: candidates scored per second and peak memory.

Fits the filter on demo images with a small timm backbone at 64 px (weights untrained:
speed does not depend on them), then streams ``--count`` candidates through
``OodFilter.score_batches`` (features, pHash, all detectors, copy guard) and decides each
chunk as it arrives, the way a worker records results. Candidates are made lazily, one
batch at a time, from a pool of demo images with fresh noise, so no more than one batch
of images is ever alive. Chunk scores (floats only) are kept, as a ranked keep-fraction
rule would need them, and a keep-fraction decision runs on all of them at the end.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ood_filter_throughput.py --count 100000

Reports candidates/s overall and per stage, and resident memory (RSS) sampled along the
stream: if RSS is flat after warm-up, 100,000 candidates need no more memory than 10,000.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from services.ood_filter.features import embed_images, iter_image_batches
from services.ood_filter.filter import CandidateScores, OodFilter
from services.ood_filter.hashing import perceptual_hashes
from services.ood_filter.selection import SelectionRule
from services.trainer.classifier import ClassifierConfig, ImageClassifier, build_model
from shared.demo_dataset import DEMO_CLASSES, load_demo_arrays

logger = logging.getLogger("ood_filter_throughput")


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lazy_candidates(
    pool: np.ndarray, count: int, batch_size: int, seed: int
) -> Iterator[np.ndarray]:
    """``count`` distinct candidates in batches: pool images plus fresh noise, made on demand."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        size = min(batch_size, count - made)
        rows = rng.integers(0, len(pool), size)
        noisy = pool[rows].astype(np.int16) + rng.integers(-6, 7, pool[rows].shape, dtype=np.int16)
        yield np.clip(noisy, 0, 255).astype(np.uint8)
        made += size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--reference-images", type=int, default=1200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    data = load_demo_arrays(args.reference_images, args.image_size, seed=0)
    config = ClassifierConfig(
        backbone=args.backbone,
        image_size=args.image_size,
        device="cpu",
        inference_batch_size=args.batch_size,
    )
    classifier = ImageClassifier(build_model(config, len(DEMO_CLASSES)), config, DEMO_CLASSES)
    half = np.arange(len(data.labels)) % 2 == 0
    ood_filter = OodFilter.fit(
        embed_images(classifier, iter_image_batches(data.images[half], args.batch_size)),
        data.labels[half],
        embed_images(classifier, iter_image_batches(data.images[~half], args.batch_size)),
        data.labels[~half],
        class_names=DEMO_CLASSES,
    )
    target = "NV"
    pool = data.images[data.labels == DEMO_CLASSES.index(target)]

    # Stage timings on one batch: where the time goes.
    sample = next(lazy_candidates(pool, args.batch_size, args.batch_size, seed=1))
    started = time.perf_counter()
    classifier.features_and_logits(sample)
    features_s = (time.perf_counter() - started) / len(sample)
    started = time.perf_counter()
    perceptual_hashes(sample, all_orientations=False)
    phash_s = (time.perf_counter() - started) / len(sample)

    rss_trace: list[tuple[int, float]] = []
    chunks: list[CandidateScores] = []
    kept = 0
    rss_start = rss_mib()
    started = time.perf_counter()
    for chunk in ood_filter.score_batches(
        classifier,
        lazy_candidates(pool, args.count, args.batch_size, seed=2),
        target,
        total=args.count,
    ):
        outcome = ood_filter.decide(chunk)  # what a worker records per chunk
        kept += len(outcome.kept_indices)
        chunks.append(chunk)
        done = chunk.start_index + len(chunk)
        if done % (args.batch_size * 20) == 0 or done == args.count:
            rss_trace.append((done, round(rss_mib(), 1)))
            logger.info(
                "%d candidates, %.1f/s, RSS %.0f MiB",
                done,
                done / (time.perf_counter() - started),
                rss_mib(),
            )
    elapsed = time.perf_counter() - started
    # A ranked rule needs every candidate's scores; records still come chunk by chunk.
    kept_ranked = sum(
        len(outcome.kept_indices)
        for outcome in ood_filter.decide_chunks(chunks, SelectionRule.best_fraction(0.4))
    )

    figures = {
        "count": args.count,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "candidates_per_s": args.count / elapsed,
        "elapsed_s": elapsed,
        "features_per_s_alone": 1 / features_s,
        "phash_per_s_alone": 1 / phash_s,
        "kept_calibrated": kept,
        "kept_keep_fraction_0.4": kept_ranked,
        "rss_before_stream_mib": rss_start,
        "rss_trace_mib": rss_trace,
        "peak_rss_mib": peak_rss_mib(),
    }
    print(json.dumps(figures, indent=2))  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
