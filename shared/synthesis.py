"""Synthesis requests: check what can be known before any GPU work, then add the rows.

Both the API (``POST /v1/synthesis``) and the trainer's adaptive (IOIS) rounds ask for
synthetic images through :func:`add_synthesis`, so a round's request is validated and
recorded exactly like a user's. Helpers here never commit: the caller does, then sends
the job (rows first, then tasks).

Before any GPU second is spent, :func:`add_synthesis` states how the OOD filter will
serve each class (:func:`filter_mode`, the rule ``services.ood_filter.filter.plan_class``
applies after generation): ``per_class`` with enough real images of its own, ``pooled``
(borrowing strength from all classes) with at least one training image, ``skipped``
otherwise. A class named in ``counts`` that would be skipped is refused (422, naming the
classes and their counts); under ``fill_to_max`` it is left out of the counts, stays in
the plan as ``skipped`` and the job ends ``partial`` with the reason.

It also fixes what the curated set will be: at most the counts asked per class, topped
up in at most ``max_rounds`` generation rounds, with images at ``resolution`` px (the
dataset's own by default, :func:`dataset_resolution`) resampled by ``resize_method``.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.dataset_arrays import ready_dataset
from shared.db import get_owned
from shared.errors import Conflict, InvalidInput
from shared.jobs import create_job
from shared.models import CuratedSet, Generator, Job, RealImage, Split, SynthesisRequest

# Re-exported: the API's schemas and tests name them as part of a synthesis request.
from shared.sampling_params import MIN_INFERENCE_STEPS as MIN_INFERENCE_STEPS
from shared.sampling_params import SCHEDULER_NAMES as SCHEDULER_NAMES
from shared.sampling_params import SchedulerName, min_inference_steps, prediction_type_for

MAX_COUNT_PER_CLASS = 100_000
#: Sampling defaults, one place for the API's schemas and the workers' fallbacks: the
#: settings benchmarks/generator_demo_quality.py measured best on the demo set (guidance
#: 6 over 3 and 2; lesions painted onto images of their own class; see the README).
DEFAULT_SCHEDULER: SchedulerName = "ddim"
DEFAULT_INFERENCE_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 6.0
DEFAULT_BACKGROUND_POLICY = "same_class"
#: Guidance for the extreme tail: classes with fewer than TAIL_TRAIN_IMAGES training
#: images. Guidance extrapolates from the unconditional towards the class prediction, and
#: a class model learnt from 3 images is mostly its error: at 6 the demo set's 3-image DF
#: came out saturated green (real ones are light brown with a white centre) and 5-image
#: VASC kept 8-16 % of its candidates; at 3 they look like the real ones and keep 23 % /
#: 67 %, recognised by the real-data probe as often (DF .97 vs .80-.92, VASC 1.00 vs
#: 1.00; benchmarks/tail_demo.py, README). Larger classes keep guidance_scale: there
#: lower guidance costs recognisability (AK, 28 images: .78 at 3 vs .90-.97 at 6).
DEFAULT_TAIL_GUIDANCE_SCALE = 3.0
TAIL_TRAIN_IMAGES = 10
#: Generation rounds when a caller does not say: the API asks for 3 by default; callers
#: with rounds of their own (the trainer's adaptive experiments) get one, as before.
DEFAULT_MAX_ROUNDS = 1
MAX_ROUNDS = 10
#: Resampling filters a request may name for its curated images (PIL's, by name).
RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos")
DEFAULT_RESIZE_METHOD = "bicubic"
# The OOD filter's defaults (services.ood_filter.service reads its settings with these).
FILTER_MIN_TRAIN_PER_CLASS = 10
FILTER_MIN_VALIDATION_PER_CLASS = 5


@dataclass(frozen=True)
class SynthesisRows:
    """What :func:`add_synthesis` added (flushed, not committed)."""

    synthesis: SynthesisRequest
    curated_set: CuratedSet
    job: Job
    counts: dict[str, int]
    #: Class -> ``per_class`` | ``pooled`` | ``skipped``: how the filter will serve it.
    plan: dict[str, str]


def train_class_counts(session: Session, dataset_id: uuid.UUID) -> Counter[str]:
    """Real **train** images per class name."""
    return split_class_counts(session, dataset_id, Split.TRAIN)


def split_class_counts(session: Session, dataset_id: uuid.UUID, split: Split) -> Counter[str]:
    """Real images of one split per class name."""
    rows = session.execute(
        select(RealImage.label, func.count())
        .where(RealImage.dataset_id == dataset_id, RealImage.split == split)
        .group_by(RealImage.label)
    ).all()
    return Counter({str(label): int(count) for label, count in rows})


def filter_mode(
    n_train: int,
    n_validation: int,
    n_pooled_validation: int,
    *,
    min_train: int = FILTER_MIN_TRAIN_PER_CLASS,
    min_validation: int = FILTER_MIN_VALIDATION_PER_CLASS,
) -> str:
    """How the OOD filter will serve a class with these real image counts.

    ``n_pooled_validation`` counts the validation images of every class that has a
    training image (what a ``pooled`` class is calibrated on).
    """
    if n_train >= min_train and n_validation >= min_validation:
        return "per_class"
    if n_train == 0 or n_pooled_validation < min_validation:
        return "skipped"
    return "pooled"


def plan_filter(
    session: Session,
    dataset_id: uuid.UUID,
    class_names: list[str],
    filter_params: dict[str, Any],
) -> tuple[dict[str, str], dict[str, str]]:
    """Filter mode of every class, and why each ``skipped`` one is skipped.

    Returns:
        (class -> mode, class -> reason for the skipped ones).
    """
    train = split_class_counts(session, dataset_id, Split.TRAIN)
    val = split_class_counts(session, dataset_id, Split.VAL)
    min_train = int(filter_params.get("min_train_per_class", FILTER_MIN_TRAIN_PER_CLASS))
    min_validation = int(
        filter_params.get("min_validation_per_class", FILTER_MIN_VALIDATION_PER_CLASS)
    )
    pooled = sum(n for name, n in val.items() if train[name] > 0)
    modes: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for name in class_names:
        modes[name] = filter_mode(
            train[name], val[name], pooled, min_train=min_train, min_validation=min_validation
        )
        if modes[name] != "skipped":
            continue
        if train[name] == 0:
            reasons[name] = f"{name!r} has 0 real training images (val {val[name]})"
        else:
            reasons[name] = (
                f"{name!r} has {train[name]} training and {val[name]} validation images, and "
                f"all classes together have {pooled} validation images, fewer than the "
                f"{min_validation} the filter needs to calibrate"
            )
    return modes, reasons


def resolve_counts(
    session: Session,
    dataset_id: uuid.UUID,
    class_names: list[str],
    counts: dict[str, int] | None,
    target: str | None,
) -> dict[str, int]:
    """Images asked per class: ``counts`` checked against the dataset, or fill-to-max
    (every class towards the head class of the real training split)."""
    if (counts is None) == (target is None):
        raise InvalidInput(
            'give either counts (e.g. {"DF": 500}) or target: "fill_to_max"', field="counts"
        )
    if counts is not None:
        for name, count in counts.items():
            if name not in class_names:
                raise InvalidInput(
                    f"unknown class {name!r}; the dataset has {', '.join(class_names)}",
                    field=f"counts.{name}",
                )
            if not 0 <= count <= MAX_COUNT_PER_CLASS:
                raise InvalidInput(
                    f"count must be in [0, {MAX_COUNT_PER_CLASS}], got {count}",
                    field=f"counts.{name}",
                )
        resolved = {name: n for name, n in counts.items() if n > 0}
    else:
        train = train_class_counts(session, dataset_id)
        head = max(train.values())
        resolved = {name: head - train[name] for name in class_names if head - train[name] > 0}
    if not resolved:
        raise InvalidInput("nothing to generate: every count is zero", field="counts")
    return resolved


def dataset_resolution(session: Session, dataset_id: uuid.UUID) -> int:
    """Side in px of the dataset's images as ingest recorded them: the most common image
    size (its shorter side when not square; the larger size on a tie)."""
    row = session.execute(
        select(RealImage.width, RealImage.height)
        .where(RealImage.dataset_id == dataset_id)
        .group_by(RealImage.width, RealImage.height)
        .order_by(func.count().desc(), RealImage.width.desc(), RealImage.height.desc())
        .limit(1)
    ).first()
    if row is None:
        raise Conflict(f"dataset {dataset_id} has no images", field="dataset_id")
    return int(min(row.width, row.height))


def curation_params(
    session: Session, dataset_id: uuid.UUID, params: dict[str, Any]
) -> dict[str, Any]:
    """``params`` with ``max_rounds``, ``resolution`` and ``resize_method`` checked and
    filled in (the dataset's resolution when none is named).

    Raises:
        InvalidInput: out-of-range rounds or resolution, or an unknown resize method.
    """
    max_rounds = params.get("max_rounds")
    max_rounds = DEFAULT_MAX_ROUNDS if max_rounds is None else int(max_rounds)
    if not 1 <= max_rounds <= MAX_ROUNDS:
        raise InvalidInput(
            f"max_rounds must be in [1, {MAX_ROUNDS}], got {max_rounds}", field="max_rounds"
        )
    resolution = params.get("resolution")
    resolution = dataset_resolution(session, dataset_id) if resolution is None else int(resolution)
    if not 8 <= resolution <= 4096:
        raise InvalidInput(
            f"resolution must be in [8, 4096] px, got {resolution}", field="resolution"
        )
    method = params.get("resize_method") or DEFAULT_RESIZE_METHOD
    if method not in RESIZE_METHODS:
        raise InvalidInput(
            f"unknown resize_method {method!r}; use one of {', '.join(RESIZE_METHODS)}",
            field="resize_method",
        )
    return {**params, "max_rounds": max_rounds, "resolution": resolution, "resize_method": method}


def filter_image_size(generator: Generator) -> int:
    """The filter's classifier sees candidates at the trained generator's resolution,
    like its quality probe (so both use one classifier); 64 px for pretrained weights."""
    if generator.kind == "trained":
        return int(generator.config.get("training", {}).get("resolution", 32))
    return 64


def check_generator_mode(generator: Generator, mode: str) -> None:
    """Refuse a synthesis mode a trained generator was not trained for (422 on ``mode``).

    ``img2img`` and ``generate`` sample with nothing known, a path an inpaint-only
    generator saw in a tenth of its training examples: its candidates are noise the
    filter rejects, so they are refused before any GPU second. Pretrained weights serve
    the modes recorded when they were registered (an inpainting pipeline: inpaint only).
    Generators trained before ``training.modes`` existed, and pretrained ones registered
    before ``modes`` was recorded, keep serving every mode they did.
    """
    every = ["inpaint", "img2img", "generate"]
    if generator.kind != "trained":
        served = generator.config.get("modes", every)
        if mode not in served:
            raise InvalidInput(
                f"generator {generator.id} is an inpainting pipeline: it serves "
                f"{', '.join(served)} only, not {mode}",
                field="mode",
            )
        return
    served = generator.config.get("training", {}).get("modes", every)
    if mode not in served:
        raise InvalidInput(
            f"generator {generator.id} was trained for {', '.join(served)}, not {mode}; ask "
            f"for one of those, or train a generator with {mode!r} in training.modes",
            field="mode",
        )


def check_generator_steps(generator: Generator, sampling: dict[str, Any]) -> None:
    """Refuse fewer inference steps than the scheduler needs with this generator (422 on
    ``sampling.num_inference_steps``): a trained generator that serves ``generate``
    predicts v and samples from the last timestep, where PNDM needs 8 steps, not 3
    (:func:`shared.sampling_params.min_inference_steps`)."""
    if generator.kind != "trained":
        return
    training = generator.config.get("training", {})
    prediction = training.get("prediction_type") or prediction_type_for(
        training.get("modes", ["inpaint"]))
    scheduler = str(sampling.get("scheduler", DEFAULT_SCHEDULER))
    steps = int(sampling.get("num_inference_steps", DEFAULT_INFERENCE_STEPS))
    fewest = min_inference_steps(scheduler, prediction)
    if steps < fewest:
        raise InvalidInput(
            f"num_inference_steps must be >= {fewest} with {scheduler} for generator "
            f"{generator.id}, which predicts {prediction}; got {steps}",
            field="sampling.num_inference_steps",
        )


def candidate_rounds(request: SynthesisRequest) -> list[dict[str, int]]:
    """Candidates per class of each generation round so far: ``counts`` x ``oversample``
    first, then the top-ups the filter stage asked for (``top_up_rounds``)."""
    oversample = float(request.params.get("oversample", 1.5))
    first = {name: math.ceil(int(n) * oversample) for name, n in request.counts.items()}
    top_ups = [
        {str(name): int(n) for name, n in round_["candidates"].items()}
        for round_ in request.top_up_rounds or []
    ]
    return [first, *top_ups]


def add_synthesis(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    dataset_id: uuid.UUID,
    generator_id: uuid.UUID,
    counts: dict[str, int] | None,
    target: str | None,
    mode: str,
    params: dict[str, Any],
    filter_params: dict[str, Any],
    seed: int,
) -> SynthesisRows:
    """Validate a synthesis request and add its request, curated set and job rows.

    Args:
        params: sampling settings as stored with the request (``sampling``,
            ``background_policy``, ``oversample``, and for adaptive rounds
            ``classifier_guidance``), and the curated set's ``max_rounds``,
            ``resolution`` and ``resize_method`` (checked and completed by
            :func:`curation_params`, which raises InvalidInput on out-of-range values).
        filter_params: the OOD filter's settings (see the API's ``FilterSettings``).

    Raises:
        NotFound: unknown dataset or generator (or another tenant's).
        Conflict: dataset or generator not ready.
        InvalidInput: unknown class, out-of-range count, nothing to generate, a class
            the OOD filter cannot serve named in ``counts`` (no real training image, or
            too few validation images even pooled), a trained generator of another
            dataset, or a mode the generator was not trained for.
    """
    dataset = ready_dataset(session, dataset_id, tenant_id)
    generator = get_owned(
        session, Generator, generator_id, tenant_id, "generator", field="generator_id"
    )
    if generator.state != "ready":
        raise Conflict(
            f"generator {generator.id} is {generator.state}, not ready", field="generator_id"
        )
    if generator.dataset_id != dataset.id and generator.kind == "trained":
        raise InvalidInput(
            f"generator {generator.id} was trained on another dataset; its candidates "
            "cannot be filtered against this one",
            field="generator_id",
        )
    check_generator_mode(generator, mode)
    check_generator_steps(generator, params.get("sampling", {}))
    params = curation_params(session, dataset.id, params)
    resolved = resolve_counts(session, dataset.id, list(dataset.class_names), counts, target)
    modes, reasons = plan_filter(session, dataset.id, list(dataset.class_names), filter_params)
    unservable = [name for name in resolved if modes[name] == "skipped"]
    if unservable and counts is not None:
        raise InvalidInput(
            "the OOD filter cannot serve "
            + "; ".join(reasons[name] for name in unservable)
            + ". Ask for the other classes, or add real images of these",
            field=f"counts.{unservable[0]}",
        )
    plan = {name: modes[name] for name in resolved}
    resolved = {name: n for name, n in resolved.items() if modes[name] != "skipped"}
    if not resolved:
        raise InvalidInput(
            "nothing the OOD filter can serve: " + "; ".join(reasons[n] for n in unservable),
            field="target",
        )
    synthesis = SynthesisRequest(
        tenant_id=tenant_id,
        dataset_id=dataset.id,
        generator_id=generator.id,
        mode=mode,
        counts=resolved,
        params=params,
        filter_params={
            **filter_params,
            "classifier_image_size": filter_params.get("classifier_image_size")
            or filter_image_size(generator),
            "plan": plan,
        },
        seed=seed,
    )
    session.add(synthesis)
    session.flush()
    curated = CuratedSet(
        tenant_id=tenant_id,
        dataset_id=dataset.id,
        synthesis_id=synthesis.id,
        thresholds={},
        summary={},
    )
    session.add(curated)
    session.flush()
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind="synthesis",
        task_name="tailsynth.synthesize",
        params={"synthesis_id": str(synthesis.id), "curated_set_id": str(curated.id)},
    )
    synthesis.job_id = job.id
    synthesis.curated_set_id = curated.id
    session.flush()
    return SynthesisRows(
        synthesis=synthesis, curated_set=curated, job=job, counts=resolved, plan=plan
    )


def class_guidance_scale(sampling: dict[str, Any], n_train: int) -> float:
    """The classifier-free guidance scale for a class with ``n_train`` training images.

    ``sampling`` is a request's sampling parameters: ``tail_guidance_scale`` (None = no
    separate tail setting) applies below :data:`TAIL_TRAIN_IMAGES` images, capped by
    ``guidance_scale``, which applies to every other class.
    """
    scale = float(sampling.get("guidance_scale", DEFAULT_GUIDANCE_SCALE))
    tail = sampling.get("tail_guidance_scale", DEFAULT_TAIL_GUIDANCE_SCALE)
    if tail is None or n_train >= TAIL_TRAIN_IMAGES:
        return scale
    return min(scale, float(tail))
