"""``tailsynth demo``: the whole service on the embedded default, driven over HTTP.

It starts ``tailsynth serve`` as a child process (API + one Celery worker process per
queue), issues an API key, and runs the campaign a user would run, printing each
result. Everything lands in ``data_dir``; run it again to start over. A data directory
the demo made carries a marker file; the demo deletes no other non-empty directory unless
told to (``force``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from services.api.schemas import JobRead
from services.client import FINAL_STATES, TailsynthClient
from shared.synthesis import DEFAULT_BACKGROUND_POLICY, DEFAULT_GUIDANCE_SCALE


@contextmanager
def embedded_server(data_dir: Path, port: int) -> Iterator[tuple[str, str]]:
    """Start ``tailsynth serve`` on ``port``; yield (url, api key); stop it afterwards."""
    cli = [sys.executable, "-m", "services.cli"]
    key = subprocess.run(
        [*cli, "keys", "create", "--name", "demo", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = (data_dir / "serve.log").open("ab")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise click.ClickException(f"tailsynth serve exited; see {data_dir / 'serve.log'}")
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise click.ClickException("tailsynth serve did not become healthy in 120 s")
            time.sleep(0.5)
        yield url, key
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


class _Progress:
    """Job progress on one self-rewriting line on a terminal; in a log, one line per
    stage and per tenth of the work."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, int] | None = None

    def __call__(self, job: JobRead) -> None:
        p = job.progress
        line = f"  {job.kind:<16} {job.stage:<14} {p.done:>6}/{p.total:<6} {p.percent:5.1f}%"
        if self.tty:
            click.echo("\r" + line, nl=job.state in FINAL_STATES, err=True)
            return
        mark = (job.stage, int(p.percent // 10))
        if mark != self.last:
            click.echo(line, err=True)
            self.last = mark


def _table(title: str, rows: dict[str, Any]) -> None:
    click.echo(f"\n{title}")
    width = max([8, *(len(name) for name in rows)])
    for name, value in rows.items():
        click.echo(f"  {name:<{width}} {value}")


def _quality_line(quality: dict[str, Any]) -> str:
    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (
        f"generated {number(quality['classifier_accuracy'], 2)}  "
        f"real val {number(quality.get('classifier_accuracy_on_real_val'), 2)}  "
        f"FD {number(quality['frechet_distance'], 1)}"
    )


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo campaign is (defaults finish in minutes on a laptop CPU)."""

    total: int = 4000  # the smallest size whose rarest classes have 5 validation images
    image_size: int = 64
    # Draws the demo set (images, patients, split) and seeds the generator's training: a
    # second value replicates a benchmark on new data with a new generator.
    seed: int = 0
    # 1,000 steps at lr 5e-4 with EMA decay 0.995 (a horizon of ~200 steps, not ~1,000:
    # a short run's EMA must not average in its first, untrained weights) paints lesions
    # the probe recognises about as well as 2,400 steps at the API defaults (README,
    # generator quality), in 40 % of the time.
    train_steps: int = 1000
    learning_rate: float = 5e-4
    ema_decay: float = 0.995
    rare_classes: tuple[str, ...] = ("AK", "SCC", "VASC", "DF")
    # "chest_xray": the binary grayscale variant (normal vs opacity), where synthesis runs
    # in img2img mode as in the chest X-ray paper.
    variant: str = "dermoscopy"
    positive_fraction: float | None = None
    # An extreme tail (benchmarks/tail_demo.py): head/rarest ratio and the per-class floor.
    imbalance: float | None = None
    min_per_class: int | None = None
    synthesis_mode: str = "inpaint"
    per_class: int = 24
    sampling_steps: int = 20  # DDIM; the steps of the README's generator-quality figures
    # The API's defaults (shared.synthesis): guidance 6, the best of 3 and 6 in
    # benchmarks/generator_demo_quality.py; rare lesions painted into same-class images
    # read as their class far more reliably than ones painted into head-class images.
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    background_policy: str = DEFAULT_BACKGROUND_POLICY
    classifier_backbone: str = "resnet18"
    classifier_epochs: int = 6
    classifier_min_steps: int = 300
    # The closing experiment: every arm on the dataset's split, scored on its test images.
    experiment_backbone: str = "resnet10t"
    experiment_image_size: int = 32
    # 7 epochs / 300 steps per arm keeps `make demo` under 10 minutes on 2 cores; the
    # README's 3-seed benchmark trains 8 epochs / 300 steps.
    experiment_epochs: int = 7
    experiment_min_steps: int = 300
    experiment_seeds: int = 1
    baseline_arms: tuple[str, ...] = ("weighted_ce", "logit_adjusted")
    # Losses the curated set is also tried with: the better of the two baseline losses on
    # the 3-seed demo benchmark (logit_adjusted BA .589 vs weighted_ce .557, README).
    curated_losses: tuple[str, ...] = ("logit_adjusted",)


DEMO_MARKER = ".tailsynth-demo"


def prepare_data_dir(data_dir: Path, *, force: bool = False) -> None:
    """Empty ``data_dir`` for a new demo run and mark it as the demo's.

    A missing or empty directory, or one a previous demo marked, is (re)made; any other
    non-empty directory is the user's and is refused unless ``force``. The working
    directory, the home directory and their ancestors are refused even with ``force``.
    """
    resolved = data_dir.resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise click.ClickException(f"--data-dir {data_dir} is a file, not a directory")
    protected = {Path.home().resolve(), *Path.cwd().resolve().parents, Path.cwd().resolve()}
    if resolved in protected:
        raise click.ClickException(
            f"--data-dir {data_dir} would delete {resolved}; choose a directory of its own"
        )
    if (
        data_dir.is_dir()
        and any(data_dir.iterdir())
        and not (data_dir / DEMO_MARKER).is_file()
        and not force
    ):
        raise click.ClickException(
            f"--data-dir {data_dir} is not empty and no earlier demo made it; the demo "
            f"starts by deleting its data directory, so choose another one or pass --force"
        )
    if data_dir.is_symlink():
        data_dir.unlink()  # the link, never what it points to
    elif data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / DEMO_MARKER).write_text("made by tailsynth demo; deleted by its next run\n")


def run_demo(data_dir: Path, plan: DemoPlan, *, port: int, force: bool = False) -> None:
    prepare_data_dir(data_dir, force=force)
    started = time.monotonic()
    with embedded_server(data_dir, port) as (url, key), TailsynthClient(url, key) as client:
        click.echo(f"tailsynth demo: embedded server at {url}, data in {data_dir.resolve()}")
        with _timed("ingest"):
            dataset = ingest_demo(client, plan)
        with _timed("generator training and quality probe"):
            generator_id = train_generator(client, plan, dataset["id"])
        counts = {name: plan.per_class for name in plan.rare_classes}
        with _timed("synthesis and filtering"):
            curated = synthesize(client, plan, dataset["id"], generator_id, counts)
        archive = client.curated_sets.download(curated["id"], data_dir / "curated.zip")
        click.echo(
            f"\ncurated set downloaded to {archive.path} (ImageFolder layout + manifest.csv; "
            f"verified by {', '.join(archive.verified_by)})"
        )
        with _timed("experiment"):
            run_experiment(client, data_dir, plan, dataset["id"], curated["id"])
    click.echo(f"\ndemo finished in {_minutes(time.monotonic() - started)}")


@contextmanager
def _timed(step: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    click.echo(f"  [{step}: {_minutes(time.monotonic() - started)}]")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def ingest_demo(client: TailsynthClient, plan: DemoPlan) -> dict[str, Any]:
    """Step 1: build and ingest the long-tailed demo set; returns the dataset."""
    click.echo(
        f"1. building and ingesting the demo dataset ({plan.total} images, {plan.image_size} px)"
    )
    extra: dict[str, Any] = {"variant": plan.variant}
    for name in ("positive_fraction", "imbalance", "min_per_class"):
        if getattr(plan, name) is not None:
            extra[name] = getattr(plan, name)
    created = client.datasets.create_demo(
        name="demo", total=plan.total, image_size=plan.image_size, seed=plan.seed, **extra
    )
    client.jobs.wait(created.job_id, on_progress=_Progress())
    dataset = client.datasets.get(created.dataset_id)
    _table("class counts:", dataset.class_counts)
    click.echo(f"  imbalance ratio {dataset.imbalance_ratio or 0:.1f}")
    _table(
        "split sizes (grouped by patient, seed-fixed):",
        {split: sum(c.values()) for split, c in dataset.split_counts.items()},
    )
    return dataset.model_dump(mode="json")


def train_generator(client: TailsynthClient, plan: DemoPlan, dataset_id: str) -> str:
    """Step 2: train the inpainting generator with its quality probe; returns its id."""
    click.echo(
        f"\n2. training the inpainting diffusion generator ({plan.train_steps} steps, 32 px)"
    )
    generator = client.generators.create(
        {
            "dataset_id": dataset_id,
            "training": {
                "resolution": 32,
                "max_train_steps": plan.train_steps,
                "learning_rate": plan.learning_rate,
                "ema_decay": plan.ema_decay,
                "batch_size": 16,
                "class_balance": 1.0,  # every class as often: the tail is the point
                "seed": plan.seed,
                # A generator is trained for the modes it must serve (img2img for the
                # chest X-ray variant: half its examples then have nothing known).
                "modes": sorted({"inpaint", plan.synthesis_mode}),
            },
            "quality_probe": {
                "images_per_class": 16,
                "num_inference_steps": plan.sampling_steps,
                "guidance_scale": plan.guidance_scale,
                "background_policy": plan.background_policy,
                "classifier_epochs": plan.classifier_epochs,
                "classifier_min_steps": plan.classifier_min_steps,
            },
        },
    )
    client.jobs.wait(generator.job_id, on_progress=_Progress())
    trained = client.generators.get(generator.generator_id)
    curve = trained.loss_curve
    click.echo(
        f"\n  checkpoint sha256 {(trained.checkpoint_sha256 or '')[:16]}…, loss "
        f"{curve[0][1]:.3f} → {curve[-1][1]:.3f}"
    )
    _table(
        "quality probe (a real-data classifier's accuracy per class, on inpainted and on "
        "real val images):",
        {q["class_name"]: _quality_line(q) for q in trained.quality["per_class"]},
    )
    health = trained.quality.get("classifier_health")
    if health:
        click.echo(f"  the probe's own classifier: {health['message']}")
    return str(generator.generator_id)


def synthesize(
    client: TailsynthClient,
    plan: DemoPlan,
    dataset_id: str,
    generator_id: str,
    counts: dict[str, int],
) -> dict[str, Any]:
    """Step 3: inpaint candidates of the rare classes and OOD-filter them; returns the
    curated set."""
    click.echo(
        f"\n3. synthesizing {counts} ({plan.synthesis_mode}), then OOD-filtering the candidates"
    )
    synthesis = client.synthesis.create(
        {
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "counts": counts,
            "mode": plan.synthesis_mode,
            "sampling": {
                "num_inference_steps": plan.sampling_steps,
                "guidance_scale": plan.guidance_scale,
            },
            "background_policy": plan.background_policy,
            "filter": {
                "classifier_backbone": plan.classifier_backbone,
                "classifier_epochs": plan.classifier_epochs,
                "classifier_min_steps": plan.classifier_min_steps,
            },
        },
    )
    client.jobs.wait(synthesis.job_id, on_progress=_Progress())
    curated = client.curated_sets.get(synthesis.curated_set_id)
    _table(
        "curated set (generated → kept; rejected by reason):",
        {
            name: f"{e['generated']:>4} → {e['kept']:>4} kept; {e['rejected']}"
            for name, e in curated.summary.items()
        },
    )
    return curated.model_dump(mode="json")


def run_experiment(
    client: TailsynthClient,
    data_dir: Path,
    plan: DemoPlan,
    dataset_id: str,
    curated_id: str,
    *,
    baselines: tuple[str, ...] | None = None,
    folds: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """Step 4: does the curated set help? Baselines, the curated set alone and with each
    of ``plan.curated_losses``, on the same split and seeds; prints verdicts, writes the
    HTML report, returns the experiment."""
    baselines = plan.baseline_arms if baselines is None else baselines
    curated_arms = [{"curated_set_ids": [curated_id]}] + [
        {"curated_set_ids": [curated_id], "loss": loss} for loss in plan.curated_losses
    ]
    body = {
        "dataset_id": dataset_id,
        "arms": [*baselines, *curated_arms],
        "backbone": plan.experiment_backbone,
        "image_size": plan.experiment_image_size,
        "epochs": plan.experiment_epochs,
        "min_train_steps": plan.experiment_min_steps,
        "seeds": plan.experiment_seeds,
        "folds": folds,
        **overrides,
    }
    protocol = f"{folds}-fold cross-validation" if folds else "scored on the real test split"
    click.echo(
        f"\n4. experiment: ce, {', '.join(baselines)} vs real + curated "
        f"({body['backbone']}, {body['image_size']} px, {body['epochs']} epochs, "
        f"{body['seeds']} seed(s); {protocol})"
    )
    created = client.experiments.create(body)
    client.jobs.wait(created.job_id, on_progress=_Progress())
    experiment = client.experiments.get(created.experiment_id)
    results = experiment.results
    rare = results["task"]["rarest_classes"]
    _table(
        f"balanced accuracy and {' / '.join(rare)} recall per arm (95 % bootstrap intervals):",
        {name: _arm_line(arm, rare) for name, arm in results["arms"].items()},
    )
    click.echo(f"\n  best non-generative arm: {results['best_baseline']}")
    click.echo("\nverdicts:")
    for line in results["verdicts"]:
        click.echo(f"  {line}")
    report = data_dir / "experiment-report.html"
    report.write_text(client.experiments.report(created.experiment_id), encoding="utf-8")
    click.echo(f"\nreport: {report.resolve()} (GET /v1/experiments/{created.experiment_id}/report)")
    return experiment.model_dump(mode="json")


def _arm_line(arm: dict[str, Any], rare: list[str]) -> str:
    def interval(value: dict[str, float]) -> str:
        return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"

    parts = [f"BA {interval(arm['metrics']['summary']['balanced_accuracy'])}"]
    parts += [f"{name} {interval(arm['metrics']['per_class'][name]['recall'])}" for name in rare]
    return "  ".join(parts)
