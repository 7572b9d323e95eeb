"""Experiment requests: check what can be known before training, then add the rows.

``POST /v1/experiments`` calls :func:`add_experiment`: every arm resolved to a plain
spec (the trainer's ``ArmSpec`` fields), every curated set checked to be this tenant's,
of this dataset and ready, the fold count checked against the rarest class's patients,
and the timm backbone checked to exist — all before a job row exists. Helpers never
commit; the caller does, then sends the job.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.dataset_arrays import ready_dataset
from shared.db import get_owned
from shared.errors import Conflict, InvalidInput, NotFound
from shared.jobs import create_job
from shared.models import CuratedSet, Experiment, Generator, Job, RealImage, Split

# name -> (loss, class-balanced sampling): the non-generative long-tail baselines.
BASELINE_ARMS: dict[str, tuple[str, bool]] = {
    "ce": ("ce", False),
    "weighted_ce": ("weighted_ce", False),
    "balanced_sampler": ("ce", True),
    "focal": ("focal", False),
    "logit_adjusted": ("logit_adjusted", False),
    "balanced_softmax": ("balanced_softmax", False),
}
LOSSES = ("ce", "weighted_ce", "focal", "logit_adjusted", "balanced_softmax")
REFERENCE_ARM = "ce"
#: Every baseline an experiment may ask for; the reference arm runs in any case.
OTHER_BASELINES = tuple(name for name in BASELINE_ARMS if name != REFERENCE_ARM)


@dataclass(frozen=True)
class ExperimentRows:
    experiment: Experiment
    job: Job
    arms: list[dict[str, Any]]


def resolve_arms(
    session: Session,
    tenant_id: uuid.UUID,
    dataset_id: uuid.UUID,
    arms: list[str | dict[str, Any]],
    *,
    adaptive: bool,
) -> list[dict[str, Any]]:
    """Arms as plain specs, ``ce`` first (every comparison needs it), adaptive arm next.

    A string names a baseline; an object with ``curated_set_ids`` is a curated arm
    (name defaults to "curated", or "curated+<loss>").
    """
    specs: list[dict[str, Any]] = []
    for position, arm in enumerate(arms):
        where = f"arms[{position}]"
        if isinstance(arm, str):
            if arm not in BASELINE_ARMS:
                raise InvalidInput(
                    f"unknown arm {arm!r}; baselines are {', '.join(BASELINE_ARMS)}, and a "
                    'curated arm is an object {"curated_set_ids": [...]}',
                    field=where,
                )
            loss, balanced = BASELINE_ARMS[arm]
            specs.append(_spec(arm, "baseline", loss, balanced))
            continue
        loss = arm.get("loss", "ce")
        if loss not in LOSSES:
            raise InvalidInput(
                f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}", field=f"{where}.loss"
            )
        ids = [str(value) for value in arm.get("curated_set_ids", [])]
        if not ids:
            raise InvalidInput(
                "a curated arm needs curated_set_ids", field=f"{where}.curated_set_ids"
            )
        for index, curated_id in enumerate(ids):
            _ready_curated_set(
                session, tenant_id, dataset_id, curated_id, f"{where}.curated_set_ids[{index}]"
            )
        name = arm.get("name") or ("curated" if loss == "ce" else f"curated+{loss}")
        specs.append(
            _spec(
                name,
                "curated",
                loss,
                bool(arm.get("balanced_sampling", False)),
                curated_set_ids=ids,
                synthetic_ratio_cap=arm.get("synthetic_ratio_cap"),
                synthetic_total=arm.get("synthetic_total"),
                match_adaptive=bool(arm.get("match_adaptive", False)),
            )
        )
    if adaptive:
        specs.append(_spec("adaptive", "adaptive", "ce", False))
    if REFERENCE_ARM not in {spec["name"] for spec in specs}:
        specs.insert(0, _spec(REFERENCE_ARM, "baseline", "ce", False))
    names = [spec["name"] for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInput(
            f"arm names must be unique; repeated: {', '.join(duplicates)}", field="arms"
        )
    if any(spec["match_adaptive"] for spec in specs) and not adaptive:
        raise InvalidInput("match_adaptive needs mode 'adaptive'", field="arms")
    order = {"baseline": 0, "adaptive": 1, "curated": 2}  # adaptive before match_adaptive arms
    return sorted(specs, key=lambda spec: (spec["name"] != REFERENCE_ARM, order[spec["kind"]]))


def _spec(name: str, kind: str, loss: str, balanced: bool, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "loss": loss,
        "balanced_sampling": balanced,
        "curated_set_ids": extra.get("curated_set_ids", []),
        "synthetic_ratio_cap": extra.get("synthetic_ratio_cap"),
        "synthetic_total": extra.get("synthetic_total"),
        "match_adaptive": extra.get("match_adaptive", False),
    }


def _ready_curated_set(
    session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID, curated_id: str, field: str
) -> CuratedSet:
    try:
        key = uuid.UUID(curated_id)
    except ValueError as exc:
        raise InvalidInput(f"{curated_id!r} is not a curated set id", field=field) from exc
    curated = get_owned(session, CuratedSet, key, tenant_id, "curated set", field=field)
    if curated.dataset_id != dataset_id:
        # Another dataset's images would be judged against the wrong real images.
        raise NotFound(f"curated set {curated_id} not found for dataset {dataset_id}", field=field)
    if curated.state != "ready":
        raise Conflict(f"curated set {curated_id} is {curated.state}, not ready", field=field)
    return curated


def check_backbone(name: str) -> None:
    """Refuse an unknown timm model name (timm is imported on first use, not at import)."""
    import timm

    if not timm.is_model(name):
        raise InvalidInput(
            f"unknown timm model {name!r} (e.g. resnet10t, resnet18, efficientnet_b0)",
            field="backbone",
        )


def check_folds(
    session: Session, dataset_id: uuid.UUID, class_names: list[str], folds: int
) -> None:
    """Every class needs a held-out image: k patients in train + val for k folds, or an
    image in the test split for folds = 0."""
    rows = session.execute(
        select(RealImage.label, RealImage.group_id, RealImage.id, RealImage.split).where(
            RealImage.dataset_id == dataset_id
        )
    ).all()
    patients: dict[str, set[str]] = defaultdict(set)
    tested: set[str] = set()
    trained: set[str] = set()
    for label, group, image_id, split in rows:
        if split == Split.TEST:
            tested.add(label)
        else:
            patients[label].add(group or str(image_id))
            if split == Split.TRAIN:
                trained.add(label)
    if folds == 0:
        for where, present in (("test", tested), ("train", trained)):
            missing = [name for name in class_names if name not in present]
            if missing:
                raise InvalidInput(
                    f"class(es) {', '.join(missing)} have no image in the {where} split; "
                    "use folds >= 2 (cross-validation over train + val) or re-split the dataset",
                    field="folds",
                )
        return
    for name in class_names:
        count = len(patients[name])
        if count < folds:
            raise InvalidInput(
                f"class {name!r} has {count} patient(s) in train + val; {folds}-fold "
                f"cross-validation needs at least {folds} (use folds <= {max(count, 0)} or 0)",
                field="folds",
            )


def add_experiment(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    dataset_id: uuid.UUID,
    arms: list[str | dict[str, Any]],
    training: dict[str, Any],
    folds: int,
    seeds: int,
    seed: int,
    n_resamples: int,
    adaptive: dict[str, Any] | None,
) -> ExperimentRows:
    """Validate an experiment request and add its experiment and job rows.

    ``adaptive`` (IOIS rounds) is None for an offline experiment, else the rounds'
    settings with ``generator_id``; it needs the dataset's own split (folds = 0), since
    its per-class accuracies come from the validation split.
    """
    dataset = ready_dataset(session, dataset_id, tenant_id)
    check_backbone(str(training["backbone"]))
    check_folds(session, dataset.id, list(dataset.class_names), folds)
    if adaptive is not None:
        if folds != 0:
            raise InvalidInput(
                "adaptive mode measures per-class accuracy on the validation split; use folds 0",
                field="folds",
            )
        generator = get_owned(
            session,
            Generator,
            uuid.UUID(str(adaptive["generator_id"])),
            tenant_id,
            "generator",
            field="adaptive.generator_id",
        )
        if generator.state != "ready":
            raise Conflict(
                f"generator {generator.id} is {generator.state}, not ready",
                field="adaptive.generator_id",
            )
        if generator.kind == "trained" and generator.dataset_id != dataset.id:
            raise InvalidInput(
                f"generator {generator.id} was trained on another dataset",
                field="adaptive.generator_id",
            )
    specs = resolve_arms(session, tenant_id, dataset.id, arms, adaptive=adaptive is not None)
    config = {
        "mode": "adaptive" if adaptive is not None else "offline",
        "arms": specs,
        "training": training,
        "folds": folds,
        "seeds": seeds,
        "seed": seed,
        "n_resamples": n_resamples,
        "adaptive": adaptive,
    }
    experiment = Experiment(
        tenant_id=tenant_id, dataset_id=dataset.id, config=config, state="queued", results={}
    )
    session.add(experiment)
    session.flush()
    runs = len(specs) * max(folds, 1) * seeds
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind="experiment",
        task_name="tailsynth.run_experiment",
        params={"experiment_id": str(experiment.id)},
        total=runs * int(training["epochs"]),
    )
    experiment.job_id = job.id
    session.flush()
    return ExperimentRows(experiment=experiment, job=job, arms=specs)
