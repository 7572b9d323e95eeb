"""The trainer worker's job: run an experiment's arms, fold by fold, and report.

Every finished arm x fold x seed run is recorded as it completes (its held-out
probabilities in storage, its history in the experiment row), so a killed worker resumes
from the last finished run without re-training what was recorded, and a cancel stops
between epochs. Arms train one after another: memory holds the real images once, the
synthetic images once, and one model at a time.

Adaptive (IOIS) arms run rounds: per-class accuracy on the **validation** split → an
accuracy-adaptive allocation → a synthesis job through the real generator and filter
workers (this task waits for it) → the kept images join the next round's training.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from services.trainer.classifier import TrainingCanceled
from services.trainer.experiments import (
    ArmSpec,
    Fold,
    RealData,
    RunResult,
    SyntheticData,
    TrainingPlan,
    plan_folds,
    run_key,
    summarise,
    synthetic_for_run,
    train_run,
)
from services.trainer.report import render_report
from services.trainer.sampling import aas_allocation, initial_class_accuracy, per_class_accuracy
from shared.dataset_arrays import dataset_channels, load_split, to_channels
from shared.errors import InvalidInput, NotFound, TailsynthError
from shared.imaging import decode_image, resize_square
from shared.jobs import JobCanceled, JobContext, dispatch, request_cancel
from shared.models import Experiment, Job, JobState, Split, SyntheticImage
from shared.runtime import Runtime
from shared.storage import put_file_with_sha256
from shared.synthesis import DEFAULT_BACKGROUND_POLICY, add_synthesis

log = logging.getLogger(__name__)

SAMPLES_PER_CLASS = 8
SYNTHESIS_POLL_S = 2.0


# --------------------------------------------------------------------------- data


def load_real(
    runtime: Runtime,
    dataset_id: uuid.UUID,
    size: int,
    channels: int,
    heartbeat: Callable[..., None],
) -> RealData:
    """Every real image of the dataset at ``size``, with its split (test included: it is
    only ever scored, never trained on)."""
    parts = {
        split: load_split(
            runtime.sessions,
            runtime.store,
            dataset_id,
            split,
            size,
            channels=channels,
            progress=heartbeat,
        )
        for split in (Split.TRAIN, Split.VAL, Split.TEST)
    }
    return RealData(
        images=np.concatenate([part.images for part in parts.values()]),
        labels=np.concatenate([part.labels for part in parts.values()]),
        groups=np.array([group for part in parts.values() for group in part.groups], dtype=str),
        splits=np.array(
            [split.value for split, part in parts.items() for _ in range(len(part))], dtype=str
        ),
        image_ids=np.array(
            [str(image_id) for part in parts.values() for image_id in part.image_ids], dtype=str
        ),
        class_names=parts[Split.TRAIN].class_names,
    )


def load_synthetic(
    runtime: Runtime,
    curated_set_ids: list[str],
    class_names: list[str],
    size: int,
    channels: int,
    heartbeat: Callable[..., None],
) -> SyntheticData:
    """Kept images of the curated sets, resampled to the classifier's size and channels."""
    if not curated_set_ids:
        return SyntheticData.empty(size, channels)
    with runtime.sessions() as session:
        rows = list(
            session.scalars(
                select(SyntheticImage)
                .where(SyntheticImage.curated_set_id.in_([uuid.UUID(v) for v in curated_set_ids]))
                .order_by(SyntheticImage.curated_set_id, SyntheticImage.index_in_request)
            )
        )
    index = {name: k for k, name in enumerate(class_names)}
    images = np.zeros((len(rows), size, size, channels), dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels = decode_image(runtime.store.get_bytes(row.object_key)).pixels
        images[i] = to_channels(resize_square(pixels, size), channels)
        if i % 100 == 99:
            heartbeat()
    return SyntheticData(
        images=images,
        labels=np.array([index[row.label] for row in rows], dtype=np.int64),
        curated_set_ids=np.array([str(row.curated_set_id) for row in rows], dtype=str),
        source_image_ids=np.array([str(row.source_image_id or "") for row in rows], dtype=str),
    )


def sample_pngs(
    runtime: Runtime, curated_set_ids: list[str], per_class: int = SAMPLES_PER_CLASS
) -> dict[str, list[bytes]]:
    """A few kept images per class as PNG bytes, for the report's sample grid."""
    if not curated_set_ids:
        return {}
    with runtime.sessions() as session:
        rows = session.scalars(
            select(SyntheticImage)
            .where(SyntheticImage.curated_set_id.in_([uuid.UUID(v) for v in curated_set_ids]))
            .order_by(SyntheticImage.label, SyntheticImage.index_in_request)
        )
        keys: dict[str, list[str]] = {}
        for row in rows:
            if len(keys.setdefault(row.label, [])) < per_class:
                keys[row.label].append(row.object_key)
    return {label: [runtime.store.get_bytes(key) for key in found] for label, found in keys.items()}


# --------------------------------------------------------------------------- records


class RunStore:
    """Finished runs of one experiment: arrays in object storage, metadata in its row."""

    def __init__(self, runtime: Runtime, experiment_id: uuid.UUID) -> None:
        self.runtime = runtime
        self.experiment_id = experiment_id
        with runtime.sessions() as session:
            experiment = session.get(Experiment, experiment_id)
            assert experiment is not None
            self.recorded: dict[str, Any] = dict((experiment.results or {}).get("runs", {}))
            self.rounds: dict[str, Any] = dict((experiment.results or {}).get("rounds", {}))

    def key(self, name: str) -> str:
        return f"experiments/{self.experiment_id}/{name}"

    def restore(self, key: str) -> RunResult | None:
        meta = self.recorded.get(key)
        if meta is None or not self.runtime.store.exists(meta["object_key"]):
            return None
        with np.load(io.BytesIO(self.runtime.store.get_bytes(meta["object_key"]))) as stored:
            arrays = {name: stored[name] for name in stored.files}
        fields = {k: v for k, v in meta.items() if k != "object_key"}
        return RunResult.restore(fields, arrays)

    def record(self, result: RunResult) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **result.arrays())  # type: ignore[arg-type]
        object_key = self.key(f"runs/{result.key.replace('/', '-')}.npz")
        self.runtime.store.put_bytes(object_key, buffer.getvalue())
        self.recorded[result.key] = {**result.meta(), "object_key": object_key}
        self._save()

    def record_round(self, key: str, values: dict[str, Any]) -> None:
        self.rounds[key] = values
        self._save()

    def _save(self) -> None:
        with self.runtime.sessions.begin() as session:
            experiment = session.get(Experiment, self.experiment_id, with_for_update=True)
            assert experiment is not None
            # A new dict, so SQLAlchemy sees the JSON column change.
            experiment.results = {
                **(experiment.results or {}),
                "runs": dict(self.recorded),
                "rounds": dict(self.rounds),
            }


class Progress:
    """Progress in epochs across all runs, written at most every ``every_s`` seconds."""

    def __init__(self, ctx: JobContext, epochs_per_run: int, every_s: float = 2.0) -> None:
        self.ctx = ctx
        self.epochs_per_run = epochs_per_run
        self.every_s = every_s
        self.base = 0
        self._written = -1e9

    def run_callback(self) -> Callable[[int, int], None]:
        def report(step: int, total: int) -> None:
            now = time.monotonic()
            if now - self._written >= self.every_s or step == total:
                self._written = now
                self.ctx.progress(self.base + (self.epochs_per_run * step) // max(total, 1))

        return report

    def finish_run(self) -> None:
        self.base += self.epochs_per_run
        self.ctx.progress(self.base)


# --------------------------------------------------------------------------- the job


def run_experiment_job(ctx: JobContext, runtime: Runtime) -> dict[str, Any]:
    experiment_id = uuid.UUID(ctx.params["experiment_id"])
    with runtime.sessions.begin() as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None:
            raise NotFound(f"experiment {experiment_id} vanished")
        experiment.state = "running"
        config = dict(experiment.config)
        dataset_id = experiment.dataset_id
        tenant_id = experiment.tenant_id
        channels = dataset_channels(session, dataset_id)

    training = dict(config["training"])
    plan = TrainingPlan(**training, in_chans=channels)
    if channels == 1:
        # Chest X-rays have an up and a down (and a left and a right: no flips at all
        # would be stricter; the trainer's augmentation keeps horizontal flips).
        plan = replace(plan, vertical_flip=False)
    arms = [ArmSpec.from_dict(spec) for spec in config["arms"]]
    seeds = [int(config["seed"]) + i for i in range(int(config["seeds"]))]

    ctx.progress(0, stage="loading images")
    data = load_real(runtime, dataset_id, plan.image_size, channels, ctx.heartbeat)
    curated_ids = sorted({cid for arm in arms for cid in arm.curated_set_ids})
    synthetic = load_synthetic(
        runtime, curated_ids, data.class_names, plan.image_size, channels, ctx.heartbeat
    )
    try:
        folds = plan_folds(data, int(config["folds"]), int(config["seed"]))
    except ValueError as exc:
        raise InvalidInput(str(exc), field="folds") from exc

    store = RunStore(runtime, experiment_id)
    epochs_per_run = plan.epochs
    runs_total = len(arms) * len(folds) * len(seeds)
    progress = Progress(ctx, epochs_per_run)
    ctx.progress(0, runs_total * epochs_per_run, "training")
    results: list[RunResult] = []
    adaptive_totals: dict[int, int] = {}
    adaptive_pool: dict[int, SyntheticData] = {}
    for arm in arms:
        for fold in folds:
            for seed in seeds:
                key = run_key(arm.name, fold.index, seed)
                restored = store.restore(key)
                if restored is not None:
                    results.append(restored)
                    if arm.kind == "adaptive":
                        adaptive_totals[seed] = sum(restored.synthetic_images.values())
                    progress.finish_run()
                    continue
                ctx.check_cancel()
                ctx.progress(progress.base, stage=f"training {arm.name}")
                if arm.kind == "adaptive":
                    result, pool = run_adaptive_arm(
                        ctx,
                        runtime,
                        store,
                        arm,
                        fold,
                        seed,
                        plan,
                        data,
                        config["adaptive"],
                        tenant_id=tenant_id,
                        dataset_id=dataset_id,
                        channels=channels,
                        progress=progress,
                    )
                    adaptive_totals[seed] = sum(result.synthetic_images.values())
                    adaptive_pool[seed] = pool
                else:
                    effective = arm
                    if arm.match_adaptive:
                        effective = replace(arm, synthetic_total=adaptive_totals.get(seed, 0))
                    index = synthetic_for_run(effective, fold, data, synthetic, seed)
                    try:
                        result, _ = train_run(
                            effective,
                            fold,
                            seed,
                            plan,
                            data,
                            synthetic,
                            index,
                            progress=progress.run_callback(),
                            should_cancel=ctx.should_cancel,
                        )
                    except TrainingCanceled as exc:
                        raise JobCanceled() from exc
                store.record(result)
                results.append(result)
                progress.finish_run()

    ctx.progress(progress.base, stage="scoring")
    summary = summarise(
        arms,
        results,
        data,
        folds=int(config["folds"]),
        seeds=seeds,
        n_resamples=int(config.get("n_resamples", 1000)),
        bootstrap_seed=int(config["seed"]),
    )
    if store.rounds:
        summary["adaptive"] = {
            "rounds": [store.rounds[key] for key in sorted(store.rounds, key=_round_order)]
        }
    adaptive_sets = [r["curated_set_id"] for r in store.rounds.values() if r.get("curated_set_id")]
    samples = sample_pngs(runtime, curated_ids or adaptive_sets)
    html = render_report(summary, samples, title=f"tailsynth experiment {experiment_id}")
    report_key = store.key("report.html")
    runtime.store.put_bytes(report_key, html.encode(), "text/html; charset=utf-8")
    with runtime.sessions.begin() as session:
        experiment = session.get(Experiment, experiment_id, with_for_update=True)
        assert experiment is not None
        experiment.results = {
            **summary,
            "runs": dict(store.recorded),
            "rounds": dict(store.rounds),
        }
        experiment.report_key = report_key
        experiment.state = "succeeded"
    return {
        "experiment_id": str(experiment_id),
        "best_baseline": summary["best_baseline"],
        "verdicts": summary["verdicts"],
    }


def _round_order(key: str) -> tuple[str, int]:
    prefix, _, number = key.rpartition("round")
    return prefix, int(number or 0)


# --------------------------------------------------------------------------- adaptive


def run_adaptive_arm(
    ctx: JobContext,
    runtime: Runtime,
    store: RunStore,
    arm: ArmSpec,
    fold: Fold,
    seed: int,
    plan: TrainingPlan,
    data: RealData,
    settings: dict[str, Any],
    *,
    tenant_id: uuid.UUID,
    dataset_id: uuid.UUID,
    channels: int,
    progress: Progress,
) -> tuple[RunResult, SyntheticData]:
    """IOIS rounds for one seed: allocate by validation accuracy, synthesize through the
    real workers, train on real + everything kept so far (continuing from the previous
    round's weights), repeat. Returns the last round's run and the synthetic pool."""
    if fold.val is None:
        raise InvalidInput("adaptive rounds need the dataset's validation split", field="folds")
    names = data.class_names
    rounds = int(settings["rounds"])
    per_round = replace(plan, epochs=int(settings.get("epochs_per_round", plan.epochs)))
    accuracy = initial_class_accuracy(names)
    kept_sets: list[str] = []
    pool = SyntheticData.empty(plan.image_size, channels)
    epochs: list[dict[str, Any]] = []
    result: RunResult | None = None
    with tempfile.TemporaryDirectory(prefix="tailsynth-adaptive-") as scratch:
        checkpoint: Path | None = None
        for number in range(1, rounds + 1):
            key = f"{arm.name}/seed{seed}/round{number}"
            recorded = store.rounds.get(key, {})
            allocation = recorded.get("allocation") or aas_allocation(
                int(settings["budget_per_round"]), accuracy, accuracy_source="validation"
            )
            guidance = None
            if checkpoint is not None and float(settings.get("classifier_guidance_scale", 0)):
                guidance = {
                    "checkpoint_key": store.key(
                        f"adaptive/seed{seed}-round{number - 1}.safetensors"
                    ),
                    "scale": float(settings["classifier_guidance_scale"]),
                }
            curated_set_id = recorded.get("curated_set_id") or _synthesize_round(
                ctx,
                runtime,
                store,
                key,
                {**settings, "classifier_guidance": guidance},
                allocation,
                seed,
                number,
                tenant_id,
                dataset_id,
            )
            ctx.progress(progress.base, stage=f"adaptive {number}/{rounds}: synthesis")
            outcome = _wait_for_synthesis(ctx, runtime, store.rounds[key]["job_id"])
            if curated_set_id and outcome in ("succeeded", "partial"):
                kept_sets.append(curated_set_id)
            pool = load_synthetic(
                runtime, kept_sets, names, plan.image_size, channels, ctx.heartbeat
            )
            kept = np.bincount(
                pool.labels[pool.curated_set_ids == curated_set_id], minlength=len(names)
            )
            round_arm = replace(arm, curated_set_ids=tuple(kept_sets))
            index = synthetic_for_run(round_arm, fold, data, pool, seed)
            ctx.progress(progress.base, stage=f"adaptive {number}/{rounds}: training")
            try:
                result, classifier = train_run(
                    round_arm,
                    fold,
                    seed,
                    per_round,
                    data,
                    pool,
                    index,
                    should_cancel=ctx.should_cancel,
                    progress=ctx.heartbeat,
                    pretrained_path=str(checkpoint) if checkpoint else None,
                )
            except TrainingCanceled as exc:
                raise JobCanceled() from exc
            checkpoint = Path(scratch) / f"round{number}.safetensors"
            sha256 = classifier.save(checkpoint)
            put_file_with_sha256(  # the next round's guidance reads it, checked
                runtime.store,
                store.key(f"adaptive/seed{seed}-round{number}.safetensors"),
                checkpoint,
                sha256,
            )
            assert fold.val is not None
            val_pred = classifier.predict(data.images[fold.val])
            used_accuracy = dict(accuracy)
            accuracy = per_class_accuracy(data.labels[fold.val], val_pred, names, previous=accuracy)
            epochs.extend(
                {**record, "epoch": len(epochs) + 1, "round": number} for record in result.epochs
            )
            store.record_round(
                key,
                {
                    "round": number,
                    "seed": seed,
                    "accuracy": used_accuracy,
                    "allocation": allocation,
                    "kept": {name: int(kept[k]) for k, name in enumerate(names)},
                    "synthesis_state": outcome,
                    "curated_set_id": curated_set_id,
                    "job_id": store.rounds[key]["job_id"],
                    "balanced_accuracy": float(np.mean([accuracy[name] for name in names])),
                    "validation_accuracy_after": accuracy,
                },
            )
    assert result is not None
    result.epochs = epochs
    return result, pool


def _synthesize_round(
    ctx: JobContext,
    runtime: Runtime,
    store: RunStore,
    key: str,
    settings: dict[str, Any],
    allocation: dict[str, int],
    seed: int,
    number: int,
    tenant_id: uuid.UUID,
    dataset_id: uuid.UUID,
) -> str | None:
    """Ask for this round's images like a user would (validated, recorded, then sent);
    the round's ids are recorded with the request in one transaction, so a resumed
    experiment waits for the same synthesis instead of asking again."""
    counts = {name: n for name, n in allocation.items() if n > 0}
    if not counts:
        store.record_round(key, {"allocation": allocation, "curated_set_id": None, "job_id": None})
        return None
    with runtime.sessions.begin() as session:
        try:
            rows = add_synthesis(
                session,
                tenant_id=tenant_id,
                dataset_id=dataset_id,
                generator_id=uuid.UUID(str(settings["generator_id"])),
                counts=counts,
                target=None,
                mode=settings.get("mode", "inpaint"),
                params={
                    "sampling": settings.get("sampling", {}),
                    "background_policy": settings.get(
                        "background_policy", DEFAULT_BACKGROUND_POLICY
                    ),
                    "oversample": settings.get("oversample", 1.5),
                    "classifier_guidance": settings.get("classifier_guidance"),
                },
                filter_params=settings.get("filter", {}),
                seed=seed * 1_000 + number,
            )
        except TailsynthError as exc:
            raise InvalidInput(f"adaptive round {number}: {exc.detail}") from exc
        experiment = session.get(Experiment, store.experiment_id, with_for_update=True)
        assert experiment is not None
        store.rounds[key] = {
            "allocation": allocation,
            "curated_set_id": str(rows.curated_set.id),
            "job_id": str(rows.job.id),
        }
        experiment.results = {**(experiment.results or {}), "rounds": dict(store.rounds)}
        job_id = rows.job.id
    dispatch(runtime.celery, runtime.sessions, job_id)
    return str(store.rounds[key]["curated_set_id"])


def _wait_for_synthesis(ctx: JobContext, runtime: Runtime, job_id: str | None) -> str:
    """Wait for a round's synthesis job (run by the generate and filter workers); a cancel
    of the experiment cancels it too. Returns its final state."""
    if job_id is None:
        return "skipped"
    while True:
        with runtime.sessions() as session:
            job = session.get(Job, uuid.UUID(job_id))
            if job is None:
                raise NotFound(f"synthesis job {job_id} vanished")
            state = job.state
            if ctx.should_cancel() and not state.is_final:
                request_cancel(session, job)
                session.commit()
                raise JobCanceled()
        if state.is_final:
            if state == JobState.FAILED:
                log.warning("adaptive round's synthesis job %s failed: %s", job_id, job.error)
            return state.value
        ctx.heartbeat()
        time.sleep(SYNTHESIS_POLL_S)
