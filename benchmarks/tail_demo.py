"""The extreme tail over HTTP: what synthesis does for classes with a handful of images.

Starts ``tailsynth serve``, builds the demo set at an extreme imbalance (by default the
rarest classes get 4-10 images in all, 2-7 for training), trains the generator as
``make demo`` does, asks for ``--per-class`` images of every class but the head class
(inpainted onto same-class backgrounds), and prints per class: training images, the
filter's mode and the class's status, the kept rate, the copy rate (``near_copy``
rejections per candidate), and the accuracy of the real-data probe classifier — the
model the filter shares with the generator's quality probe — on the kept images and on
the real validation images. It writes a PNG grid per class (rows: real training images,
kept candidates, rejected candidates with their reason) and, unless ``--no-experiment``,
runs ce, every other non-generative baseline (``--baselines``), the curated set and
curated + logit_adjusted over ``--seeds`` seeds and prints each class's recall gain of
the best curated arm over the best baseline with its paired 95 % interval. A second run with
``--dataset-id`` / ``--generator-id`` reuses what the first one made, so guidance can
be swept on one generator (``--classes DF,VASC --guidance-scale 3 --tail-guidance-scale
none``)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tail_demo.py --total 2000 --imbalance 400 \\
        --min-per-class 5 --per-class 40 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from grids import candidates_of, database, pixels, write_grids

from services.client import TailsynthClient
from services.demo import DemoPlan, embedded_server, ingest_demo, run_experiment, train_generator
from shared.experiments import OTHER_BASELINES
from shared.synthesis import TAIL_TRAIN_IMAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".bench-tail"))
    parser.add_argument("--port", type=int, default=8792)
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--imbalance", type=float, default=400.0)
    parser.add_argument("--min-per-class", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=DemoPlan.train_steps)
    parser.add_argument("--per-class", type=int, default=40, help="asked per non-head class")
    parser.add_argument(
        "--guidance-scale", type=float, default=DemoPlan.guidance_scale, help="synthesis"
    )
    parser.add_argument(
        "--tail-guidance-scale",
        default=None,
        help=f"guidance for classes with < {TAIL_TRAIN_IMAGES} training images (default: "
        "the API's; 'none': --guidance-scale for every class, as before the tail rule)",
    )
    parser.add_argument("--classes", help="comma-separated classes to ask for (default: all)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draws the demo set and seeds the generator and synthesis (a replication: 1)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--baselines",
        default=",".join(OTHER_BASELINES),
        help="comma-separated non-generative arms beside ce (default: every one the API has, "
        "so the curated arms meet the best of them)",
    )
    parser.add_argument("--no-experiment", action="store_true")
    parser.add_argument("--dataset-id", help="reuse a dataset of an earlier run in --data-dir")
    parser.add_argument("--generator-id", help="reuse a generator of an earlier run")
    parser.add_argument("--synthesis-id", help="reuse a finished synthesis of an earlier run")
    args = parser.parse_args()

    plan = DemoPlan(
        total=args.total,
        seed=args.seed,
        imbalance=args.imbalance,
        min_per_class=args.min_per_class,
        train_steps=args.train_steps,
        experiment_seeds=args.seeds,
        experiment_epochs=8,
        experiment_min_steps=300,
        baseline_arms=tuple(args.baselines.split(",")) if args.baselines else (),
    )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with (
        embedded_server(args.data_dir, args.port) as (url, key),
        TailsynthClient(url, key) as client,
    ):
        started = time.monotonic()
        if args.dataset_id:
            dataset = client.dataset(args.dataset_id)
        else:
            dataset = ingest_demo(client, plan)
        timings["ingest_s"] = time.monotonic() - started
        started = time.monotonic()
        generator_id = args.generator_id or train_generator(client, plan, dataset["id"])
        timings["generator_s"] = time.monotonic() - started
        train_counts = dataset["split_counts"]["train"]
        head = max(train_counts, key=train_counts.get)
        wanted = args.classes.split(",") if args.classes else [n for n in train_counts if n != head]
        counts = {name: args.per_class for name in wanted}
        started = time.monotonic()
        synthesis = reuse_synthesis(args.data_dir, args.synthesis_id) if args.synthesis_id else None
        synthesis = synthesis or client.request(
            "POST",
            "/v1/synthesis",
            json={
                "dataset_id": dataset["id"],
                "generator_id": generator_id,
                "counts": counts,
                "sampling": {
                    "num_inference_steps": plan.sampling_steps,
                    "guidance_scale": args.guidance_scale,
                    **tail_guidance(args.tail_guidance_scale),
                },
                "background_policy": plan.background_policy,
                "seed": args.seed,
                "filter": {
                    "classifier_epochs": plan.classifier_epochs,
                    "classifier_min_steps": plan.classifier_min_steps,
                },
            },
        )
        job = client.wait(synthesis["job_id"], timeout=6 * 3600)
        timings["synthesis_s"] = time.monotonic() - started
        curated = client.request("GET", f"/v1/curated-sets/{synthesis['curated_set_id']}")
        quality = client.request("GET", f"/v1/generators/{generator_id}")["quality"]
        rows = per_class_table(args.data_dir, synthesis["synthesis_id"], curated, quality)
        grid = write_grids(
            args.data_dir, dataset["id"], synthesis["synthesis_id"], list(counts), "tail-grid.png"
        )
        experiment = None
        if not args.no_experiment and curated["state"] == "ready":
            started = time.monotonic()
            experiment = run_experiment(
                client, args.data_dir, plan, dataset["id"], str(curated["id"])
            )
            timings["experiment_s"] = time.monotonic() - started
    print_table(rows, job)
    if experiment is not None:
        print_gains(experiment["results"], train_counts)  # noqa: T201
    print(f"grid: {grid}\ntimings: {json.dumps({k: round(v) for k, v in timings.items()})}")  # noqa: T201
    out = args.data_dir / "tail.json"
    ids = {
        "dataset": dataset["id"],
        "generator": generator_id,
        "synthesis": synthesis["synthesis_id"],
    }
    print(f"ids: {json.dumps(ids)}")  # noqa: T201
    out.write_text(
        json.dumps({"ids": ids, "classes": rows, "job": job, "timings": timings}, indent=1)
    )


def tail_guidance(value: str | None) -> dict[str, float | None]:
    """The request's ``tail_guidance_scale`` field for the flag (none: the API default)."""
    if value is None:
        return {}
    return {"tail_guidance_scale": None if value.lower() == "none" else float(value)}


def reuse_synthesis(data_dir: Path, synthesis_id: str) -> dict[str, Any]:
    from shared.models import SynthesisRequest

    with database(data_dir)() as session:
        request = session.get(SynthesisRequest, uuid.UUID(synthesis_id))
        assert request is not None, synthesis_id
        return {
            "synthesis_id": synthesis_id,
            "job_id": str(request.job_id),
            "curated_set_id": str(request.curated_set_id),
        }


def per_class_table(
    data_dir: Path, synthesis_id: str, curated: dict[str, Any], quality: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per class: status, kept rate, copy rate, and the probe's accuracy on kept images."""
    from services.trainer.classifier import ImageClassifier

    classifier = ImageClassifier.load(data_dir / "cache" / quality["classifier_key"])
    size = classifier.config.image_size
    by_class: dict[str, list[np.ndarray]] = {}
    for row in candidates_of(data_dir, synthesis_id):
        if row.decision == "kept":
            by_class.setdefault(row.label, []).append(pixels(data_dir, row.object_key, size))
    real_val = {q["class_name"]: q["classifier_accuracy_on_real_val"] for q in quality["per_class"]}
    names = classifier.class_names
    rows = []
    for name, entry in curated["summary"].items():
        kept = by_class.get(name, [])
        accuracy = None
        if kept:
            predicted = classifier.predict_proba(np.stack(kept)).argmax(axis=1)
            accuracy = float(np.mean(predicted == names.index(name)))
        generated = max(entry["generated"], 1)
        rows.append(
            {
                "class": name,
                "n_train": entry.get("n_train"),
                "filter_mode": entry["filter_mode"],
                "status": entry["status"],
                "asked": entry["requested"],
                "generated": entry["generated"],
                "kept": entry["kept"],
                "kept_rate": entry["kept"] / generated,
                "copy_rate": entry["rejected"].get("near_copy", 0) / generated,
                "probe_accuracy_on_kept": accuracy,
                "probe_accuracy_on_real_val": real_val.get(name),
                "reason": entry.get("reason", ""),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], job: dict[str, Any]) -> None:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    print(f"synthesis job: {job['state']}; {job['result'].get('summary', '')}")  # noqa: T201
    print(  # noqa: T201
        "| class | train images | filter mode | status | asked → generated → kept | kept rate | "
        "copy rate | probe on kept | probe on real val |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in sorted(rows, key=lambda r: r["n_train"] or 0):
        print(  # noqa: T201
            f"| {r['class']} | {r['n_train']} | {r['filter_mode']} | {r['status']} | "
            f"{r['asked']} → {r['generated']} → {r['kept']} | {pct(r['kept_rate'])} | "
            f"{pct(r['copy_rate'])} | {pct(r['probe_accuracy_on_kept'])} | "
            f"{pct(r['probe_accuracy_on_real_val'])} |"
        )


def print_gains(results: dict[str, Any], train_counts: dict[str, int]) -> None:
    """Per-class recall of the best curated arm against the best baseline, tail first."""
    arms = results["arms"]
    best = max(
        (n for n, a in arms.items() if a["spec"]["kind"] != "baseline"),
        key=lambda n: arms[n]["metrics"]["summary"]["balanced_accuracy"]["estimate"],
    )
    comparison = arms[best]["comparisons"]["vs_best_baseline"]
    d = comparison["summary"]["balanced_accuracy"]
    print(  # noqa: T201
        f"{best} vs {comparison['against']}: BA {100 * d['estimate']:+.1f} pts "
        f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
    )
    for name in sorted(train_counts, key=train_counts.get):
        r = comparison["per_class"][name]["recall"]
        print(  # noqa: T201
            f"  {name} ({train_counts[name]} train): recall {100 * r['estimate']:+.1f} pts "
            f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
        )


if __name__ == "__main__":
    main()
