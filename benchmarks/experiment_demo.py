"""Does the curated set help? The whole campaign over HTTP on the demo set, with every arm.

Starts ``tailsynth serve`` (embedded: API + one worker process per queue), builds the demo
set, trains the generator, synthesizes the rarest classes, filters them, then runs one
experiment with every non-generative baseline and the curated set (alone and with each
baseline loss) over several seeds or folds. Prints the table the closing note needs —
balanced accuracy, macro-F1 and the two rarest classes' recall per arm with 95 %
intervals, and the best curated arm against the best non-generative arm — and writes the
experiment JSON, the HTML report and a PNG grid (real, kept and rejected images per class).

A second run with the same ``--data-dir`` and ``--dataset-id`` / ``--generator-id``
reuses what the first one made (to try other synthesis or experiment settings)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiment_demo.py --total 4000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from grids import synthesis_of, write_grids

from services.client import TailsynthClient
from services.demo import (
    DemoPlan,
    embedded_server,
    ingest_demo,
    run_experiment,
    synthesize,
    train_generator,
)
from shared.experiments import OTHER_BASELINES


def fmt(value: dict[str, float]) -> str:
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def table(results: dict[str, Any]) -> str:
    rare = results["task"]["rarest_classes"]
    lines = [
        "| arm | balanced accuracy | macro-F1 | "
        + " | ".join(f"{name} recall" for name in rare)
        + " | classifier ok |",
        "|---|---|---|" + "---|" * len(rare) + "---|",
    ]
    for name, arm in results["arms"].items():
        summary, per_class = arm["metrics"]["summary"], arm["metrics"]["per_class"]
        lines.append(
            f"| {name} | {fmt(summary['balanced_accuracy'])} | {fmt(summary['macro_f1'])} | "
            + " | ".join(fmt(per_class[c]["recall"]) for c in rare)
            + f" | {'yes' if arm['classifier_health']['ok'] else 'NO'} |"
        )
    return "\n".join(lines)


def best_curated_vs_best_baseline(results: dict[str, Any]) -> str:
    arms = results["arms"]
    synthetic = [n for n, a in arms.items() if a["spec"]["kind"] != "baseline"]
    if not synthetic:
        return "no synthetic arm"
    best = max(
        synthetic, key=lambda n: arms[n]["metrics"]["summary"]["balanced_accuracy"]["estimate"]
    )
    comparison = arms[best]["comparisons"]["vs_best_baseline"]
    if comparison is None:
        return f"{best}: no baseline to compare with"
    lines = [f"best synthetic arm {best} vs best non-generative arm {comparison['against']}:"]
    for metric in ("balanced_accuracy", "macro_f1"):
        d = comparison["summary"][metric]
        lines.append(
            f"  {metric}: {100 * d['estimate']:+.1f} pts "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}], bootstrap p = {d['p_value']:.3f}"
        )
    for name in results["task"]["rarest_classes"]:
        d = comparison["per_class"][name]["recall"]
        lines.append(
            f"  {name} recall: {100 * d['estimate']:+.1f} pts "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        )
    m = comparison["mcnemar"]
    lines.append(
        f"  McNemar (seed-ensemble predictions): {m['a_only']} images only the baseline gets "
        f"right, {m['b_only']} only {best}; exact p = {m['p_value']:.3g}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".bench-experiment"))
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--total", type=int, default=4000)
    parser.add_argument("--train-steps", type=int, default=2400)
    parser.add_argument("--per-class", type=int, default=150, help="asked per rare class")
    parser.add_argument("--rare-classes", nargs="+", default=["AK", "SCC", "VASC", "DF"])
    parser.add_argument("--variant", default="dermoscopy", choices=["dermoscopy", "chest_xray"])
    parser.add_argument("--positive-fraction", type=float, default=None)
    parser.add_argument("--mode", default="inpaint", choices=["inpaint", "img2img", "generate"])
    parser.add_argument("--guidance-scale", type=float, default=6.0)
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--background-policy", default="same_class")
    parser.add_argument("--target-keep-rate", type=float, default=0.97)
    parser.add_argument("--ratio-cap", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--dataset-id", help="reuse a dataset of an earlier run in --data-dir")
    parser.add_argument("--generator-id", help="reuse a generator of an earlier run")
    parser.add_argument("--curated-set-id", help="reuse a curated set of an earlier run")
    parser.add_argument(
        "--no-experiment", action="store_true", help="stop after the synthesis and its grid"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default in data dir)")
    args = parser.parse_args()

    plan = DemoPlan(
        total=args.total,
        variant=args.variant,
        positive_fraction=args.positive_fraction,
        synthesis_mode=args.mode,
        train_steps=args.train_steps,
        sampling_steps=args.sampling_steps,
        guidance_scale=args.guidance_scale,
        background_policy=args.background_policy,
        experiment_backbone=args.backbone,
        experiment_image_size=args.image_size,
        experiment_epochs=args.epochs,
        experiment_seeds=args.seeds,
        baseline_arms=OTHER_BASELINES,
    )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with (
        embedded_server(args.data_dir, args.port) as (url, key),
        TailsynthClient(url, key) as client,
    ):
        started = time.monotonic()
        dataset_id = args.dataset_id or ingest_demo(client, plan)["id"]
        timings["ingest_s"] = time.monotonic() - started
        started = time.monotonic()
        generator_id = args.generator_id or train_generator(client, plan, dataset_id)
        timings["generator_s"] = time.monotonic() - started
        started = time.monotonic()
        if args.curated_set_id:
            curated_id = args.curated_set_id
        else:
            counts = {name: args.per_class for name in args.rare_classes}
            curated_id = synthesize(client, plan, dataset_id, generator_id, counts)["id"]
        timings["synthesis_s"] = time.monotonic() - started
        ids = {"dataset": dataset_id, "generator": generator_id, "curated": curated_id}
        grid = write_grids(
            args.data_dir,
            dataset_id,
            synthesis_of(args.data_dir, curated_id),
            list(args.rare_classes),
            "grid.png",
        )
        print(f"ids: {json.dumps(ids)}\ngrid (real / kept / rejected per class): {grid}")  # noqa: T201
        if args.no_experiment:
            return
        started = time.monotonic()
        experiment = run_experiment(
            client,
            args.data_dir,
            plan,
            dataset_id,
            curated_id,
            folds=args.folds,
            arms=[
                *OTHER_BASELINES,
                {"curated_set_ids": [curated_id], "synthetic_ratio_cap": args.ratio_cap},
                *(
                    {
                        "curated_set_ids": [curated_id],
                        "loss": loss,
                        "synthetic_ratio_cap": args.ratio_cap,
                    }
                    # balanced_softmax equals logit_adjusted at tau = 1 (the loss form).
                    for loss in ("weighted_ce", "logit_adjusted")
                ),
            ],
        )
        timings["experiment_s"] = time.monotonic() - started
    results = experiment["results"]
    out = args.out or args.data_dir / "experiment.json"
    out.write_text(json.dumps({"experiment": experiment, "timings": timings}, indent=1))
    lines = [
        table(results),
        best_curated_vs_best_baseline(results),
        f"ids: {json.dumps(ids)}",
        f"timings: {json.dumps({k: round(v) for k, v in timings.items()})}",
        f"results: {out}",
        f"grid (real / kept / rejected per class): {grid}",
    ]
    print("\n\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
