"""Synthesis requests: check what can be known before any GPU work, then add the rows.

Both the API (``POST /v1/synthesis``) and the trainer's adaptive (IOIS) rounds ask for
synthetic images through :func:`add_synthesis`, so a round's request is validated and
recorded exactly like a user's. Helpers here never commit: the caller does, then sends
the job (rows first, then tasks).
"""

from __future__ import annotations

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

MAX_COUNT_PER_CLASS = 100_000


@dataclass(frozen=True)
class SynthesisRows:
    """What :func:`add_synthesis` added (flushed, not committed)."""

    synthesis: SynthesisRequest
    curated_set: CuratedSet
    job: Job
    counts: dict[str, int]


def train_class_counts(session: Session, dataset_id: uuid.UUID) -> Counter[str]:
    """Real **train** images per class name."""
    rows = session.execute(
        select(RealImage.label, func.count())
        .where(RealImage.dataset_id == dataset_id, RealImage.split == Split.TRAIN)
        .group_by(RealImage.label)
    ).all()
    return Counter({str(label): int(count) for label, count in rows})


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
            ``classifier_guidance``).
        filter_params: the OOD filter's settings (see the API's ``FilterSettings``).

    Raises:
        NotFound: unknown dataset or generator (or another tenant's).
        Conflict: dataset or generator not ready.
        InvalidInput: unknown class, out-of-range count, nothing to generate, or a
            trained generator of another dataset.
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
    resolved = resolve_counts(session, dataset.id, list(dataset.class_names), counts, target)
    synthesis = SynthesisRequest(
        tenant_id=tenant_id,
        dataset_id=dataset.id,
        generator_id=generator.id,
        mode=mode,
        counts=resolved,
        params=params,
        filter_params=filter_params,
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
    return SynthesisRows(synthesis=synthesis, curated_set=curated, job=job, counts=resolved)
