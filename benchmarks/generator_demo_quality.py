r"""Does a generator trained from scratch on the demo set paint recognisable lesions?

Trains the inpainting generator at 32 px on CPU on the long-tailed demo dataset, paints
candidates of every class into real backgrounds (masks from the dataset, jittered), and
scores them with a classifier trained on the real training images: per-class accuracy
(chance = 1/8) and per-class Frechet distance in that classifier's feature space against
held-out real images. The held-out fifth is split by patient group (no lesion is on both
sides). Prints one JSON document.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/generator_demo_quality.py --total 8000 \
        --train-steps 4500 --batch-size 16 --per-class 32 --inference-steps 20 \
        --class-balance 1.0 --guidance-scale 3 6 --background-policy any_class same_class
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from grids import GRID_COLUMNS, tile_rows
from sklearn.model_selection import StratifiedGroupKFold

from services.generator.config import GeneratorConfig
from services.generator.masks import jitter_mask, select_background_indices
from services.generator.quality import (
    FeatureNetwork,
    per_class_classifier_accuracy,
    quality_report,
)
from services.generator.sampling import GenerationResult, TrainedGenerator, load_generator
from services.generator.training import train_generator
from services.ood_filter.sharpness import log_laplacian_energy
from services.trainer.classifier import ClassifierConfig, ImageClassifier, train_classifier
from shared.demo_dataset import DemoArrays, load_demo_arrays

logger = logging.getLogger("generator_demo_quality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=1600, help="demo images")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--eval-steps", type=int, nargs="+", default=None,
                        help="evaluate after each of these step counts (training resumes "
                             "from its checkpoint between them); default: --train-steps")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="stop training after this many seconds and evaluate the "
                             "generator reached (the report says at which step)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--mode", nargs="+", default=["inpaint"], choices=["inpaint", "generate"],
                        help="synthesis modes to train for and score (generate: from noise, "
                             "no background)")
    parser.add_argument("--per-class", type=int, default=24, help="candidates per class")
    parser.add_argument("--inference-steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, nargs="+", default=[3.0],
                        help="one or more classifier-free guidance scales to sample with")
    parser.add_argument("--class-balance", type=float, default=1.0,
                        help="generator batch class balancing exponent (0 natural, 1 equal)")
    parser.add_argument("--background-policy", nargs="+", default=["any_class"],
                        choices=["any_class", "same_class", "head_classes"],
                        help="which real images receive the lesions (one report per policy)")
    parser.add_argument("--classifier-epochs", type=int, default=12)
    parser.add_argument("--classifier-image-size", type=int, default=32,
                        help="side the classifier resamples images to (more = slower)")
    parser.add_argument("--classifier-path", type=Path, default=None,
                        help="reuse this probe classifier checkpoint (trained and saved "
                             "there when absent), so runs differing only in sampling compare")
    parser.add_argument("--save-generated", type=Path, default=None,
                        help="write generated images, sources, masks and class ids to "
                             "PATH.<step>.<mode>.<policy>.g<scale>.npz")
    parser.add_argument("--grid", type=Path, default=None,
                        help="PNG: a row of real images per class, then per evaluated step, "
                             "mode and class a row of generated ones (first guidance scale)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the demo set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    timings: dict[str, float] = {}

    start = time.perf_counter()
    demo = load_demo_arrays(total=args.total, image_size=args.resolution, seed=args.seed,
                            workers=args.workers)
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=args.seed)
    train, held_out = next(folds.split(demo.images, demo.labels, groups=demo.groups))
    names = list(demo.class_names)
    timings["dataset_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if args.classifier_path is not None and args.classifier_path.exists():
        classifier = ImageClassifier.load(args.classifier_path, device=args.device)
    else:
        classifier = train_classifier(
            demo.images[train], demo.labels[train], names,
            ClassifierConfig(backbone="resnet10t", image_size=args.classifier_image_size,
                             epochs=args.classifier_epochs, batch_size=64, lr=2e-3,
                             device=args.device, balanced_sampling=True, vertical_flip=True,
                             seed=args.seed),
        )
        if args.classifier_path is not None:
            classifier.save(args.classifier_path)
    timings["classifier_train_s"] = time.perf_counter() - start
    real_accuracy, _ = per_class_classifier_accuracy(
        demo.images[held_out], demo.labels[held_out], classifier.predict_proba, len(names))
    logger.info("classifier on held-out real images: %s", real_accuracy)
    features = FeatureNetwork(
        lambda x: torch.from_numpy(classifier.features((x * 255).round().byte()
                                                       .permute(0, 2, 3, 1).numpy())),
        classifier.feature_dim,
    )
    # Reference point for the distances: real training images of the class vs held-out.
    real_reference = quality_report(demo.images[held_out], demo.labels[held_out],
                                    demo.images[train], demo.labels[train], names,
                                    feature_network=features)
    held_out_sharpness = log_laplacian_energy(demo.images[held_out])
    train_labels = demo.labels[train]
    grid_rows: list[tuple[str, list[np.ndarray]]] = [
        (f"{name} real", list(demo.images[train][train_labels == c][:GRID_COLUMNS]))
        for c, name in enumerate(names)
    ]

    checkpoint_dir = args.checkpoint_dir or Path(tempfile.mkdtemp(prefix="gen-demo-"))
    deadline = (time.monotonic() + args.time_budget_s if args.time_budget_s is not None
                else float("inf"))
    train_seconds, reports, steps_reached = 0.0, {}, 0
    for target in sorted(args.eval_steps or [args.train_steps]):
        if time.monotonic() > deadline:
            break
        config = GeneratorConfig(
            resolution=args.resolution, channels=3, num_classes=len(names),
            block_out_channels=(32, 64, 64), attention_levels=(2,), batch_size=args.batch_size,
            max_train_steps=target, checkpoint_every=max(target // 4, 1),
            learning_rate=args.learning_rate, lr_warmup_steps=50, ema_decay=args.ema_decay,
            seed=args.seed, class_balance=args.class_balance, modes=tuple(args.mode),
        )
        start = time.perf_counter()
        result = train_generator(
            demo.images[train], demo.masks[train], demo.labels[train], names, config,
            checkpoint_dir, device=args.device,
            progress=lambda done, total: done % 500 == 0 and logger.info("step %d/%d", done,
                                                                          total),
            should_cancel=lambda: time.monotonic() > deadline,
        )
        train_seconds += time.perf_counter() - start
        assert result.checkpoint is not None
        if result.step == steps_reached:
            break  # the time budget ran out before this stage made progress
        steps_reached = result.step
        generator = load_generator(result.checkpoint.path, device=args.device)
        reports[str(result.step)] = {
            "loss_mean_last_100": float(np.mean([v for _, v in result.loss_curve[-100:]])),
            "by_mode": {},
        }
        for mode in args.mode:
            policies = args.background_policy if mode == "inpaint" else ["none"]
            by_policy: dict[str, dict[str, list[dict[str, object]]]] = {}
            for policy in policies:
                by_policy[policy] = {}
                for guidance_scale in args.guidance_scale:
                    generated, sample_seconds = _sample(
                        generator, mode, policy, guidance_scale, demo, train, args)
                    timings[f"{mode}_{policy}_g{guidance_scale}_s"] = sample_seconds
                    if args.save_generated is not None:
                        np.savez_compressed(args.save_generated.with_name(
                            f"{args.save_generated.name}.{result.step}.{mode}.{policy}"
                            f".g{guidance_scale}.npz"),
                            images=generated.images, class_ids=generated.class_ids)
                    if guidance_scale == args.guidance_scale[0] and policy == policies[0]:
                        grid_rows += [
                            (f"{name} {mode} @{result.step}",
                             list(generated.images[generated.class_ids == c][:GRID_COLUMNS]))
                            for c, name in enumerate(names)
                        ]
                    report = quality_report(demo.images[held_out], demo.labels[held_out],
                                            generated.images, generated.class_ids, names,
                                            feature_network=features,
                                            predict_proba=classifier.predict_proba)
                    sharpness = log_laplacian_energy(generated.images)
                    by_policy[policy][str(guidance_scale)] = [
                        {
                            "class": q.class_name,
                            "train_count": int((train_labels == c).sum()),
                            "generated": q.n_generated,
                            "classifier_accuracy_on_generated": q.classifier_accuracy,
                            "mean_class_probability": q.mean_class_probability,
                            "classifier_accuracy_on_real_held_out": real_accuracy[c],
                            "frechet_distance_generated_vs_held_out": q.frechet_distance,
                            "frechet_distance_real_train_vs_held_out":
                                real_reference[c].frechet_distance,
                            # log Laplacian energy above the real held-out images of the
                            # class: > 0 residual noise, < 0 blur (services.ood_filter).
                            "sharpness_gap": _gap(
                                sharpness[generated.class_ids == c],
                                held_out_sharpness[demo.labels[held_out] == c]),
                        }
                        for c, q in enumerate(report)
                    ]
            reports[str(result.step)]["by_mode"][mode] = by_policy
    timings["generator_train_s"] = train_seconds
    if args.grid is not None:
        tile_rows(grid_rows, args.grid)
    print(json.dumps({  # noqa: T201
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                   if k not in ("checkpoint_dir", "save_generated", "classifier_path")},
        "demo_images_sha256": hashlib.sha256(demo.images.tobytes()).hexdigest(),
        "steps_reached": steps_reached,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "chance_accuracy": 1.0 / len(names),
        "per_step_mode_background_policy_and_guidance_scale": reports,
    }, indent=2))


def _gap(generated: np.ndarray, real: np.ndarray) -> float | None:
    """Mean of ``generated`` minus mean of ``real``; None when either is empty."""
    if len(generated) == 0 or len(real) == 0:
        return None
    return round(float(generated.mean() - real.mean()), 3)


def _sample(generator: TrainedGenerator, mode: str, policy: str, guidance_scale: float,
            demo: DemoArrays, train: np.ndarray, args: argparse.Namespace
            ) -> tuple[GenerationResult, float]:
    """``args.per_class`` candidates of every class: painted into real training images
    chosen by ``policy`` (inpaint), or drawn from noise (generate)."""
    sources, masks, class_ids = [], [], []
    mask_rng = np.random.default_rng(args.seed + 7)
    for class_id in range(len(demo.class_names)):
        if mode == "generate":
            class_ids += [class_id] * args.per_class
            continue
        picks = select_background_indices(demo.labels[train], class_id, args.per_class,
                                          policy=policy, seed=args.seed + class_id)
        for index in train[picks]:
            sources.append(demo.images[index])
            masks.append(jitter_mask(demo.masks[index], mask_rng, max_dilation=2))
            class_ids.append(class_id)
    seeds = np.arange(len(class_ids)) + 10_000 * args.seed
    sampling = {"scheduler": "ddim", "num_inference_steps": args.inference_steps,
                "guidance_scale": guidance_scale, "batch_size": 64}
    start = time.perf_counter()
    if mode == "generate":
        generated = generator.generate(np.array(class_ids), seeds, **sampling)
    else:
        generated = generator.inpaint(np.stack(sources), np.stack(masks), np.array(class_ids),
                                      seeds, **sampling)
    return generated, time.perf_counter() - start


if __name__ == "__main__":
    main()
