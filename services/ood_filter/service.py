"""The filter worker's job: score a synthesis request's candidates and curate them.

Fits :class:`OodFilter` on the dataset's real **train** split and calibrates it on the
real **val** split (never test), through the dataset's fine-tuned classifier. Reference
embeddings are cached in storage per dataset and classifier. Candidates stream through
in batches; each gets its scores per detector, thresholds, decision and reason in
Postgres, written idempotently, and the curated set is the kept ones.

Classes are isolated: each is filtered in the best mode it can have (``per_class`` or
``pooled``, see :mod:`services.ood_filter.filter`) or ends ``skipped`` with its reason,
and one class's trouble never fails the others. The curated set's ``summary[class]``
says ``status`` (``kept`` | ``flagged`` | ``skipped``), ``filter_mode`` and ``reason``;
a class that keeps nothing, or under half of what was asked, is ``flagged`` with its
``dominant_rejection``. When any class is skipped or flagged the job ends ``partial``
(its result: ``partial: true`` and a one-line ``summary``).
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.ood_filter import (
    ImageEmbeddings,
    OodFilter,
    OodFilterCanceled,
    OodFilterConfig,
    SelectionRule,
    embed_images,
    iter_image_batches,
)
from services.ood_filter.detectors import OFF_CLASS_DETECTOR
from services.ood_filter.filter import DEFAULT_DETECTORS
from services.ood_filter.records import CandidateRecord, FilterMode
from services.trainer.classifier import ImageClassifier
from services.trainer.dataset_classifier import (
    classifier_config_from,
    dataset_classifier,
    health_of,
)
from shared.dataset_arrays import SplitArrays, dataset_channels, load_split
from shared.errors import InvalidInput, NotFound
from shared.imaging import decode_image, resize_square
from shared.jobs import PARTIAL, JobCanceled, JobContext
from shared.models import CuratedSet, OodScore, Split, SynthesisRequest, SyntheticImage
from shared.runtime import Runtime
from shared.synthesis import FILTER_MIN_TRAIN_PER_CLASS, FILTER_MIN_VALIDATION_PER_CLASS

BATCH = 64
REJECTIONS = ("ood", "off_class", "near_copy")


def _cached_embeddings(
    runtime: Runtime,
    classifier: ImageClassifier,
    classifier_key: str,
    split: SplitArrays,
    name: str,
) -> ImageEmbeddings:
    """Reference embeddings of a real split, cached in storage beside the classifier."""
    key = classifier_key.replace(".safetensors", f"-{name}-embeddings-v2.npz")
    if runtime.store.exists(key):
        data = np.load(io.BytesIO(runtime.store.get_bytes(key)))
        cached = ImageEmbeddings(
            features=data["features"],
            logits=data["logits"],
            phashes=data["phashes"],
            image_shape=tuple(int(v) for v in data["image_shape"]),  # type: ignore[arg-type]
            sharpness=data["sharpness"],
        )
        if len(cached) == len(split):
            return cached
    embeddings = embed_images(
        classifier, iter_image_batches(split.images, BATCH), all_orientations=name == "train"
    )
    assert embeddings.sharpness is not None  # embed_images always measures it
    buffer = io.BytesIO()
    np.savez(
        buffer,
        features=embeddings.features,
        logits=embeddings.logits,
        phashes=embeddings.phashes,
        image_shape=np.array(embeddings.image_shape),
        sharpness=embeddings.sharpness,
    )
    runtime.store.put_bytes(key, buffer.getvalue())
    return embeddings


def selection_rule(filter_params: dict[str, Any], requested: int) -> SelectionRule:
    rule = filter_params.get("rule", "calibrated")
    if rule == "keep_fraction":
        return SelectionRule.best_fraction(float(filter_params.get("keep_fraction", 0.4)))
    if rule == "target_count":
        return SelectionRule.best_count(requested)
    return SelectionRule.calibrated()


def _candidate_batches(
    runtime: Runtime, rows: list[SyntheticImage], size: int, channels: int
) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), BATCH):
        batch = []
        for row in rows[start : start + BATCH]:
            pixels = resize_square(
                decode_image(runtime.store.get_bytes(row.object_key)).pixels, size
            )
            if channels == 3 and pixels.ndim == 2:
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            batch.append(pixels if channels == 3 else pixels.reshape(size, size, 1))
        yield np.stack(batch)


def _record(
    session: Session,
    rows: list[SyntheticImage],
    records: list[CandidateRecord],
    curated_set_id: uuid.UUID,
) -> None:
    scores = []
    for row, record in zip(rows, records, strict=True):
        session.execute(
            update(SyntheticImage)
            .where(SyntheticImage.id == row.id)
            .values(
                decision=record.reason.value,
                decision_reason=_explain(record),
                curated_set_id=curated_set_id if record.kept else None,
            )
        )
        for detector, score in record.scores.items():
            threshold = record.thresholds.get(detector)
            scores.append(
                {
                    "id": uuid.uuid5(row.id, detector),
                    "synthetic_image_id": row.id,
                    "detector": detector,
                    "score": float(score),
                    "threshold": threshold,
                    "passed": threshold is None or score >= threshold,
                }
            )
        scores.append(
            {
                "id": uuid.uuid5(row.id, "copy_guard"),
                "synthetic_image_id": row.id,
                "detector": "nearest_train_cosine",
                "score": record.nearest_train_similarity,
                "threshold": record.copy_similarity_threshold,
                "passed": record.nearest_train_similarity < record.copy_similarity_threshold,
            }
        )
        scores.append(
            {
                "id": uuid.uuid5(row.id, "phash"),
                "synthetic_image_id": row.id,
                "detector": "phash_distance",
                "score": float(record.phash_distance),
                "threshold": float(record.phash_threshold),
                "passed": record.phash_distance > record.phash_threshold,
            }
        )
        scores.append(
            {
                "id": uuid.uuid5(row.id, "combined"),
                "synthetic_image_id": row.id,
                "detector": "combined",
                "score": record.combined_score,
                "threshold": None,
                "passed": record.kept,
            }
        )
    dialect = postgresql if session.bind and session.bind.dialect.name == "postgresql" else sqlite
    session.execute(
        dialect.insert(OodScore)
        .values(scores)
        .on_conflict_do_nothing(index_elements=["synthetic_image_id", "detector"])
    )


def _explain(record: CandidateRecord) -> str:
    if record.reason.value == "near_copy":
        return (
            f"nearest real training image: cosine {record.nearest_train_similarity:.3f} "
            f"(limit {record.copy_similarity_threshold:.3f}), "
            f"pHash distance {record.phash_distance} (limit {record.phash_threshold})"
        )
    failed = [
        name
        for name, score in record.scores.items()
        if score < record.thresholds.get(name, -np.inf)
    ]
    if record.reason.value == "kept":
        return f"passed every detector (combined percentile {record.combined_score:.2f})"
    return f"failed: {', '.join(failed) or 'ranked below the keep cut'}"


def filter_candidates_job(ctx: JobContext, runtime: Runtime) -> dict[str, Any]:
    synthesis_id = uuid.UUID(ctx.params["synthesis_id"])
    with runtime.sessions() as session:
        request = session.get(SynthesisRequest, synthesis_id)
        if request is None:
            raise NotFound(f"synthesis {synthesis_id} vanished")
        channels = dataset_channels(session, request.dataset_id)
        curated_set_id = request.curated_set_id
        assert curated_set_id is not None
    params = request.filter_params
    config = classifier_config_from(params, channels)
    ctx.progress(0, stage="fitting filter")
    train = load_split(
        runtime.sessions,
        runtime.store,
        request.dataset_id,
        Split.TRAIN,
        config.image_size,
        channels=channels,
        progress=ctx.heartbeat,
    )
    val = load_split(
        runtime.sessions,
        runtime.store,
        request.dataset_id,
        Split.VAL,
        config.image_size,
        channels=channels,
        progress=ctx.heartbeat,
    )
    classifier, key = dataset_classifier(
        runtime.sessions,
        runtime.store,
        runtime.settings,
        request.dataset_id,
        config,
        train=train,
        val=val,
        progress=ctx.heartbeat,
        should_cancel=ctx.should_cancel,
    )
    train_embeddings = _cached_embeddings(runtime, classifier, key, train, "train")
    val_embeddings = _cached_embeddings(runtime, classifier, key, val, "val")
    # A classifier that does not recognise real images cannot say a candidate is off-class:
    # without it the filter keeps the detectors that do not read its class scores.
    health = health_of(classifier)
    detectors = DEFAULT_DETECTORS
    if health["ok"] is False:
        detectors = tuple(name for name in DEFAULT_DETECTORS if name != OFF_CLASS_DETECTOR)
        health = {
            **health,
            "fallback": "class_probability dropped (no off_class rejections); distribution "
            "and copy checks kept",
        }
    try:
        ood = OodFilter.fit(
            train_embeddings,
            train.labels,
            val_embeddings,
            val.labels,
            OodFilterConfig(
                detectors=detectors,
                target_keep_rate=float(params.get("target_keep_rate", 0.97)),
                min_train_per_class=int(
                    params.get("min_train_per_class", FILTER_MIN_TRAIN_PER_CLASS)
                ),
                min_validation_per_class=int(
                    params.get("min_validation_per_class", FILTER_MIN_VALIDATION_PER_CLASS)
                ),
                # Plain cross-entropy on the long-tailed split: the class priors are in
                # the logits, and the tail's real images would look off-class.
                class_prior_correction=config.loss == "ce" and not config.balanced_sampling,
            ),
            class_names=train.class_names,
            validation_groups=val.groups,
        )
    except ValueError as exc:  # nothing to fit at all (no training image)
        raise InvalidInput(f"OOD filter: {exc}") from exc

    with runtime.sessions() as session:
        candidates = list(
            session.scalars(
                select(SyntheticImage)
                .where(SyntheticImage.synthesis_id == synthesis_id)
                .order_by(SyntheticImage.index_in_request)
            )
        )
    total = len(candidates)
    ctx.progress(0, total, "filtering")
    summary: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    done = 0
    # Every class asked for, and those the POST already planned to skip (fill_to_max).
    for class_name in dict.fromkeys([*request.counts, *params.get("plan", {})]):
        rows = [row for row in candidates if row.label == class_name]
        requested = int(request.counts.get(class_name, 0))
        entry = _entry(requested, len(rows))
        summary[class_name] = entry
        try:
            plan = ood.plan(class_name)
        except ValueError as exc:  # unknown to the classifier
            _skip(runtime, entry, rows, str(exc))
            continue
        entry.update(n_train=plan.n_train, n_validation=plan.n_validation)
        if plan.filter_mode == FilterMode.SKIPPED:
            _skip(runtime, entry, rows, plan.reason)
            continue
        if not rows:
            _skip(runtime, entry, rows, "no candidates were generated for this class")
            continue
        rule = selection_rule(params, requested)
        try:
            chunks = list(
                ood.score_batches(
                    classifier,
                    _candidate_batches(runtime, rows, config.image_size, channels),
                    class_name,
                    progress=ctx.heartbeat,
                    should_cancel=ctx.should_cancel,
                )
            )
        except OodFilterCanceled as exc:
            raise JobCanceled() from exc
        except ValueError as exc:  # this class's candidates cannot be scored; others can
            _skip(runtime, entry, rows, f"candidates could not be scored: {exc}")
            done += len(rows)
            ctx.progress(done)
            continue
        reasons: Counter[str] = Counter()
        offset = 0
        for outcome in ood.decide_chunks(chunks, rule):
            chunk_rows = rows[offset : offset + len(outcome.records)]
            with runtime.sessions.begin() as session:
                _record(session, chunk_rows, outcome.records, curated_set_id)
            reasons.update(record.reason.value for record in outcome.records)
            offset += len(outcome.records)
            done += len(outcome.records)
            ctx.progress(done)
            calibration = outcome.calibration
        thresholds[class_name] = {**asdict(calibration), "rule": rule.describe()}
        entry["kept"] = reasons.get("kept", 0)
        entry["rejected"] = {reason: reasons.get(reason, 0) for reason in REJECTIONS}
        entry["filter_mode"] = plan.filter_mode.value
        _judge(entry, plan.reason)
    with runtime.sessions.begin() as session:
        curated = session.get(CuratedSet, curated_set_id)
        assert curated is not None
        curated.summary = summary
        curated.thresholds = {
            "classifier": key,
            "classifier_health": health,
            "classes": thresholds,
        }
        curated.state = "ready"
    kept = sum(entry["kept"] for entry in summary.values())
    attention = [name for name, entry in summary.items() if entry["status"] != "kept"]
    return {
        "curated_set_id": str(curated_set_id),
        "generated": total,
        "kept": kept,
        PARTIAL: bool(attention),
        "summary": _one_line(summary, attention),
        "classes": {name: entry["status"] for name, entry in summary.items()},
        "classifier_health": health,
    }


def _entry(requested: int, generated: int) -> dict[str, Any]:
    """A class's curated-set summary before filtering (filled in as it goes)."""
    return {
        "requested": requested,
        "generated": generated,
        "kept": 0,
        "rejected": dict.fromkeys(REJECTIONS, 0),
        "status": "skipped",
        "filter_mode": FilterMode.SKIPPED.value,
        "reason": "",
    }


def _skip(runtime: Runtime, entry: dict[str, Any], rows: list[SyntheticImage], reason: str) -> None:
    """End a class ``skipped``; its candidates stay out of the curated set, saying why."""
    entry.update(status="skipped", filter_mode=FilterMode.SKIPPED.value, reason=reason)
    if rows:
        with runtime.sessions.begin() as session:
            session.execute(
                update(SyntheticImage)
                .where(SyntheticImage.id.in_([row.id for row in rows]))
                .values(decision_reason=f"not filtered: {reason}", curated_set_id=None)
            )


def _judge(entry: dict[str, Any], mode_reason: str) -> None:
    """``kept``, or ``flagged`` when nothing or under half of what was asked was kept."""
    kept, requested = entry["kept"], entry["requested"]
    if kept > 0 and 2 * kept >= requested:
        entry.update(status="kept", reason=mode_reason)
        return
    dominant, count = max(entry["rejected"].items(), key=lambda item: item[1])
    entry.update(
        status="flagged",
        dominant_rejection=dominant if count else None,
        reason=(
            f"kept {kept} of {requested} asked ({entry['generated']} generated); "
            + (f"most rejected as {dominant} ({count})" if count else "none rejected")
            + f"; filter: {mode_reason}"
        ),
    )


def _one_line(summary: dict[str, Any], attention: list[str]) -> str:
    """E.g. ``2 of 3 classes kept; DF flagged (kept 0 of 9 asked; mostly ood)``."""
    head = f"{len(summary) - len(attention)} of {len(summary)} classes kept"
    if not attention:
        return head
    parts = []
    for name in attention:
        entry = summary[name]
        if entry["status"] == "flagged":
            dominant = entry.get("dominant_rejection")
            why = f"kept {entry['kept']} of {entry['requested']} asked" + (
                f"; mostly {dominant}" if dominant else ""
            )
        else:
            why = entry["reason"]
        parts.append(f"{name} {entry['status']} ({why})")
    return head + "; " + "; ".join(parts)
