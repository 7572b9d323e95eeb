"""Experiment cost on the demo set: seconds per arm x fold, and peak memory against arm count.

Draws the demo set in memory (``--total`` images at ``--image-size``), splits it like an
ingested dataset (``shared.ingest.splits.assign_splits``: stratified, grouped by patient,
~71/14/14 train/val/test) and runs the experiment library the way the trainer worker's
job does (``folds = 0``: train on train, keep the best epoch on val, score test):

1. **Timing** — one ``ce`` arm x fold (``train_run`` + its held-out scoring) with the
   ``TrainingPlan()`` defaults (resnet10t, ``--image-size``, 10 epochs, >= 300 steps).
   On a shared 2-core CPU that budget can take many minutes, so by default only
   ``--timing-epochs`` (2) epochs are trained and the full run is projected from them:
   measured wall + missing epochs x (last epoch + one validation pass at the measured
   scoring rate); the cosine schedule changes the learning rate, not the cost of a step.
   ``--timing-epochs 0`` trains the whole budget.
2. **Memory** — an experiment-like loop (load the arrays once, train arms one after
   another keeping only each ``RunResult``, as the job does) for each of ``--arm-counts``
   arms (the baselines in ``BASELINE_ARMS`` order), each in a fresh child process, with
   ``--epochs`` epochs and ``--min-train-steps`` per run. Peak RSS is the child's
   ``ru_maxrss`` as seen by ``os.wait4``, so cases cannot contaminate each other; the
   slope is (peak of the most arms - peak of the fewest) / extra arms.

The CPU is shared, so the 1-minute load average is sampled every 10 s and printed with
the numbers (and before / after each case): on 2 cores, a load above 2 means the
benchmark did not have both cores. Progress goes to stderr.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiment_throughput.py
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiment_throughput.py --image-size 32

Measured with the defaults (4,000 images, 2,856 train / 571 val / 573 test, resnet10t,
OMP_NUM_THREADS=2) on a shared 2-core CPU whose 1-minute load average stayed at 3.1-5.0,
so the benchmark never had both cores to itself:

- 64 px: 33 training images/s; 186 s per arm x fold for 2 epochs, ~890 s projected for
  the plan's 10 epochs. 32 px (``--image-size 32``): 60-63 images/s; the whole 10-epoch
  plan took 470 s measured (``--timing-epochs 0``), against 546 s projected from 2 epochs.
- Peak RSS at 64 px, 2 epochs per run: 1 arm 1561 MiB, 4 arms 1654, 6 arms 1677, of which
  ~1016 MiB is importing torch/timm and 47 MiB the images. Slope +23 MiB per extra arm
  (1 -> 6 arms); inside the 6-arm process, the peak rose only 8 MiB per arm after the
  first, while the first arm's peak differed by 74 MiB between the three processes, so
  memory is flat in the number of arms to within noise.

That default run took 37 min under that load. A 2-epoch run at 64 px took 39 s when the
machine was quieter, so on two free cores the defaults should take roughly 7-9 min;
``--epochs 1``, ``--arm-counts 1 6`` or ``--skip-timing`` shorten a run on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from shared.experiments import BASELINE_ARMS

logger = logging.getLogger("experiment_throughput")


def _load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _memory() -> dict[str, float | None]:
    rss, hwm = _status_kib("VmRSS"), _status_kib("VmHWM")
    return {
        "rss_mib": round(rss / 1024, 1) if rss is not None else None,
        "peak_mib": round(hwm / 1024, 1) if hwm is not None else None,
    }


# --------------------------------------------------------------------------- data


def build_data(total: int, image_size: int, seed: int, out: Path) -> dict[str, Any]:
    """Draw the demo set, split it like an ingest would, and save the arrays to ``out``."""
    from services.trainer.experiments import RealData, plan_folds
    from shared.demo_dataset import demo_image_id, load_demo_arrays
    from shared.ingest.splits import assign_splits

    started = time.perf_counter()
    demo = load_demo_arrays(total, image_size, seed)
    drawn_s = time.perf_counter() - started
    names = list(demo.class_names)
    splits = assign_splits([names[k] for k in demo.labels], demo.groups, seed)
    data = RealData(
        images=demo.images,
        labels=demo.labels,
        groups=np.array(demo.groups, dtype=str),
        splits=np.array(splits, dtype=str),
        image_ids=np.array([demo_image_id(i, seed) for i in range(total)], dtype=str),
        class_names=names,
    )
    try:
        plan_folds(data, 0, seed)  # fail here, not in every child
    except ValueError as exc:
        raise SystemExit(f"--total {total}: {exc}") from exc
    np.savez(
        out,
        images=data.images,
        labels=data.labels,
        groups=data.groups,
        splits=data.splits,
        image_ids=data.image_ids,
        class_names=np.array(names, dtype=str),
    )
    counts = {name: splits.count(name) for name in ("train", "val", "test")}
    return {"draw_s": round(drawn_s, 1), "split": counts, "patients": len(set(demo.groups))}


# --------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> None:
    """Load the arrays once, train the arms one after another like the job, print JSON."""
    import torch

    from services.trainer.experiments import (
        ArmSpec,
        RealData,
        RunResult,
        SyntheticData,
        TrainingPlan,
        plan_folds,
        synthetic_for_run,
        train_run,
    )

    checkpoints = [{"at": "imports", **_memory()}]
    with np.load(args.child) as stored:
        data = RealData(
            images=stored["images"],
            labels=stored["labels"],
            groups=stored["groups"],
            splits=stored["splits"],
            image_ids=stored["image_ids"],
            class_names=[str(name) for name in stored["class_names"]],
        )
    checkpoints.append({"at": "data loaded", **_memory()})
    plan = TrainingPlan(
        backbone=args.backbone,
        image_size=args.image_size,
        epochs=args.run_epochs,
        min_train_steps=args.run_min_steps,
        device=args.device,
    )
    synthetic = SyntheticData.empty(plan.image_size, plan.in_chans)
    folds = plan_folds(data, 0, args.seed)
    results: list[RunResult] = []
    runs = []
    for name in args.arms.split(","):
        arm = ArmSpec.baseline(name)
        for fold in folds:
            index = synthetic_for_run(arm, fold, data, synthetic, args.seed)
            started = time.perf_counter()
            # Like the job's ``result, _ = train_run(...)``: the classifier stays bound
            # until the next run replaces it, and only the RunResult is kept.
            result, classifier = train_run(arm, fold, args.seed, plan, data, synthetic, index)
            wall = time.perf_counter() - started
            results.append(result)
            epoch_s = [record.seconds for record in classifier.history.epochs]
            runs.append(
                {
                    "arm": name,
                    "fold": fold.index,
                    "wall_s": wall,
                    "train_run_s": result.seconds,
                    "epoch_s": epoch_s,
                    "train_images": result.train_images,
                    "val_images": 0 if fold.val is None else len(fold.val),
                    "held_out_images": len(fold.held_out),
                    "history_images_per_s": result.images_per_second,
                }
            )
            checkpoints.append({"at": f"after {name}", **_memory()})
    print(  # noqa: T201
        json.dumps(
            {
                "plan": asdict(plan),
                "torch_threads": torch.get_num_threads(),
                "runs": runs,
                "checkpoints": checkpoints,
                "self_maxrss_mib": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
                "results_kept": len(results),
            }
        )
    )
    sys.stdout.flush()
    # Skip interpreter teardown: freeing torch and the modules moves the peak RSS by tens
    # of MiB at random, which is noise against the slope per arm.
    os._exit(0)


def run_child(
    data_path: Path, arms: list[str], epochs: int, min_steps: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One case in a fresh interpreter; its peak RSS comes from the kernel via wait4."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(data_path),
        "--arms",
        ",".join(arms),
        "--run-epochs",
        str(epochs),
        "--run-min-steps",
        str(min_steps),
        "--image-size",
        str(args.image_size),
        "--backbone",
        args.backbone,
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    load_before = _load()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"child {arms} exited with {process.returncode}")
    report = json.loads(output.strip().splitlines()[-1])
    report |= {
        "arms": arms,
        "process_s": round(elapsed, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "load_before": load_before,
        "load_after": _load(),
    }
    return report


# --------------------------------------------------------------------------- report


def timing_row(report: dict[str, Any], plan_epochs_floor: int, plan_min_steps: int) -> dict:
    """Seconds of one arm x fold, and the plan's full budget projected from them."""
    run = report["runs"][0]
    epochs = len(run["epoch_s"])
    batch = report["plan"]["batch_size"]
    steps_per_epoch = -(-run["train_images"] // batch)
    plan_epochs = max(plan_epochs_floor, -(-plan_min_steps // steps_per_epoch))
    train_s = sum(run["epoch_s"])
    scoring_s = run["wall_s"] - run["train_run_s"]
    per_image_s = scoring_s / max(run["held_out_images"], 1)
    val_per_epoch_s = run["val_images"] * per_image_s
    projected = run["wall_s"] + (plan_epochs - epochs) * (run["epoch_s"][-1] + val_per_epoch_s)
    return {
        "image_size": report["plan"]["image_size"],
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "train_images": run["train_images"],
        "epoch_s": [round(s, 1) for s in run["epoch_s"]],
        "train_images_per_s": run["train_images"] * epochs / train_s,
        "last_epoch_images_per_s": run["train_images"] / run["epoch_s"][-1],
        "history_images_per_s": run["history_images_per_s"],
        "setup_and_val_s": run["train_run_s"] - train_s,
        "scoring_s": scoring_s,
        "held_out_images": run["held_out_images"],
        "wall_s": run["wall_s"],
        "plan_epochs": plan_epochs,
        "projected_wall_s": projected,
        "peak_rss_mib": report["peak_rss_mib"],
        "load_before": report["load_before"],
        "load_after": report["load_after"],
    }


def timing_table(row: dict[str, Any], backbone: str) -> list[str]:
    measured = "the whole plan" if row["epochs"] == row["plan_epochs"] else "projected"
    return [
        f"| {backbone}, {row['image_size']} px | value |",
        "|---|---|",
        f"| train images (real, train split) | {row['train_images']} "
        f"({row['steps_per_epoch']} steps/epoch) |",
        f"| epochs trained here | {row['epochs']} (seconds each: "
        f"{', '.join(str(s) for s in row['epoch_s'])}) |",
        f"| classifier training images/s | {row['train_images_per_s']:.1f} "
        f"(last epoch {row['last_epoch_images_per_s']:.1f}; with val "
        f"{row['history_images_per_s']:.1f}) |",
        f"| model build + per-epoch val (s) | {row['setup_and_val_s']:.1f} |",
        f"| held-out scoring (s) | {row['scoring_s']:.1f} ({row['held_out_images']} images) |",
        f"| wall per arm x fold, {row['epochs']} epoch(s) (s) | {row['wall_s']:.1f} |",
        f"| wall per arm x fold, plan budget of {row['plan_epochs']} epochs (s, {measured}) | "
        f"{row['projected_wall_s']:.0f} |",
        f"| peak RSS of that process (MiB) | {row['peak_rss_mib']:.0f} |",
        f"| load average before / after (1, 5, 15 min) | {row['load_before']} / "
        f"{row['load_after']} |",
    ]


def memory_table(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| arms | runs | peak RSS (MiB) | RSS after imports + data (MiB) "
        "| RSS after each arm (MiB) | mean s per run | load 1 min before / after |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        after = [c["rss_mib"] for c in case["checkpoints"] if c["at"].startswith("after ")]
        loaded = next(c["rss_mib"] for c in case["checkpoints"] if c["at"] == "data loaded")
        mean_s = statistics.fmean(run["wall_s"] for run in case["runs"])
        lines.append(
            f"| {len(case['arms'])} | {len(case['runs'])} | {case['peak_rss_mib']:.0f} | "
            f"{loaded:.0f} | "
            f"{', '.join(f'{v:.0f}' for v in after)} | {mean_s:.1f} | "
            f"{case['load_before'][0]} / {case['load_after'][0]} |"
        )
    return lines


def slopes(cases: list[dict[str, Any]]) -> dict[str, float]:
    """MiB of peak RSS per extra arm: first to last case, and between neighbours."""
    out = {}
    ordered = sorted(cases, key=lambda case: len(case["arms"]))
    pairs = list(zip(ordered, ordered[1:], strict=False))
    if len(ordered) > 2:
        pairs.append((ordered[0], ordered[-1]))
    for low, high in pairs:
        extra = len(high["arms"]) - len(low["arms"])
        if extra:
            key = f"{len(low['arms'])}->{len(high['arms'])}"
            out[key] = (high["peak_rss_mib"] - low["peak_rss_mib"]) / extra
    return out


def within_process(cases: list[dict[str, Any]]) -> list[str]:
    """Two checks on the slope: the same first arm's peak in every case (how much peak RSS
    differs between processes doing identical work), and the growth of the peak inside
    the case with the most arms (no process-to-process noise)."""
    firsts = [
        next(c["peak_mib"] for c in case["checkpoints"] if c["at"].startswith("after "))
        for case in cases
    ]
    lines = [
        f"peak RSS after the first arm (identical work) in each case: "
        f"{', '.join(f'{v:.0f}' for v in firsts)} MiB (spread {max(firsts) - min(firsts):.0f})"
    ]
    largest = max(cases, key=lambda case: len(case["arms"]))
    peaks = [c["peak_mib"] for c in largest["checkpoints"] if c["at"].startswith("after ")]
    if len(peaks) > 1:
        lines.append(
            f"inside the {len(peaks)}-arm process, peak RSS after each arm: "
            f"{', '.join(f'{v:.0f}' for v in peaks)} MiB, "
            f"{(peaks[-1] - peaks[0]) / (len(peaks) - 1):+.1f} MiB per extra arm"
        )
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=4000, help="demo images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timing-epochs",
        type=int,
        default=2,
        help="train only this many epochs and project the plan's budget (0 = the whole budget)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run of the memory cases")
    parser.add_argument(
        "--min-train-steps", type=int, default=0, help="step floor per run of the memory cases"
    )
    parser.add_argument("--arm-counts", type=int, nargs="+", default=[1, 4, 6])
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    # Internal: one case, run in a fresh interpreter by the parent.
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--arms", help=argparse.SUPPRESS)
    parser.add_argument("--run-epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-min-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if max(args.arm_counts) > len(BASELINE_ARMS) or min(args.arm_counts) < 1:
        parser.error(f"--arm-counts must be between 1 and {len(BASELINE_ARMS)}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from services.trainer.experiments import TrainingPlan

    defaults = TrainingPlan()
    started = time.perf_counter()
    loads = [_load()]
    sampled: list[float] = []
    stop = threading.Event()

    def sample_load() -> None:
        while not stop.is_set():
            sampled.append(os.getloadavg()[0])
            stop.wait(10.0)

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    lines = []
    with tempfile.TemporaryDirectory(prefix="experiment-throughput-") as scratch:
        data_path = Path(scratch) / "demo.npz"
        logger.info("drawing %d demo images at %d px", args.total, args.image_size)
        figures["data"] = build_data(args.total, args.image_size, args.seed, data_path)
        split = figures["data"]["split"]
        lines.append(
            f"demo set: {args.total} images at {args.image_size} px, "
            f"{figures['data']['patients']} patients, drawn in {figures['data']['draw_s']} s; "
            f"split by patient (assign_splits) train {split['train']} / val {split['val']} / "
            f"test {split['test']}"
        )
        if not args.skip_timing:
            epochs = args.timing_epochs or defaults.epochs
            min_steps = 0 if args.timing_epochs else defaults.min_train_steps
            logger.info("timing: ce, %d epoch(s), load %s", epochs, _load())
            report = run_child(data_path, ["ce"], epochs, min_steps, args)
            loads.append(report["load_after"])
            row = timing_row(report, defaults.epochs, defaults.min_train_steps)
            figures["timing"] = {"row": row, "child": report}
            lines += ["", *timing_table(row, args.backbone)]
        if not args.skip_memory:
            cases = []
            for count in args.arm_counts:
                arms = list(BASELINE_ARMS)[:count]
                logger.info("memory: %d arm(s), load %s", count, _load())
                cases.append(run_child(data_path, arms, args.epochs, args.min_train_steps, args))
                loads.append(cases[-1]["load_after"])
            figures["memory"] = {"cases": cases, "slopes_mib_per_arm": slopes(cases)}
            lines += [
                "",
                f"peak RSS, experiment-like loop ({args.epochs} epoch(s), min steps "
                f"{args.min_train_steps}, {args.image_size} px, each case a fresh process):",
                "",
                *memory_table(cases),
                "",
                "slope of peak RSS per extra arm: "
                + ", ".join(
                    f"{key} arms {value:+.1f} MiB"
                    for key, value in figures["memory"]["slopes_mib_per_arm"].items()
                ),
                *within_process(cases),
            ]
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    ones = [load[0] for load in loads] + sampled
    figures |= {
        "seconds": elapsed,
        "loads": loads,
        "load_1min_samples": sampled,
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
    }
    lines += [
        "",
        f"{elapsed:.0f} s in all; {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}; load average (1 min) mean "
        f"{statistics.fmean(ones):.1f}, range {min(ones):.1f}-{max(ones):.1f} over the run "
        f"(sampled every 10 s); (1, 5, 15 min) at the start {loads[0]}, at the end {loads[-1]}",
    ]
    print("\n".join(lines))  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
