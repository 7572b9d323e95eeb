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
a class left short of its count is ``flagged`` with its ``dominant_rejection``, and so is
one whose kept images the dataset's classifier mostly puts below chance for it. When any
class is skipped or flagged the job ends ``partial`` (its result: ``partial: true`` and a
one-line ``summary``).

A curated set is what was asked (:func:`curation_rule`): at most the count asked per
class, best combined score first (the rest ``surplus``), no near-duplicate candidates
(``duplicate``) and no background carrying more than its share (``background``). A
class left short is topped up: the stage appends a round to the request's
``top_up_rounds`` (for the short classes only) and hands the job back to the generator;
every round re-decides all of a class's candidates, so a re-delivered stage does the
same again. After ``max_rounds`` the summary says the cap was reached. Once final, the
kept candidates are delivered at the request's ``resolution`` (:mod:`.delivery`). A kept
candidate the classifier scores below chance for its class is said so on its row and
counted (``kept_below_chance``).
"""

from __future__ import annotations

import io
import math
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
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
from services.ood_filter.delivery import curated_png
from services.ood_filter.detectors import OFF_CLASS_DETECTOR
from services.ood_filter.filter import DEFAULT_DETECTORS
from services.ood_filter.records import CandidateRecord, FilterMode, Reason
from services.trainer.classifier import ImageClassifier
from services.trainer.dataset_classifier import (
    classifier_config_from,
    dataset_classifier,
    health_of,
)
from shared.dataset_arrays import SplitArrays, dataset_channels, load_split
from shared.errors import InvalidInput, NotFound
from shared.imaging import decode_image, resize_square, sha256_bytes
from shared.jobs import PARTIAL, JobCanceled, JobContext, NextStage
from shared.models import CuratedSet, OodScore, Split, SynthesisRequest, SyntheticImage
from shared.runtime import Runtime
from shared.synthesis import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_RESIZE_METHOD,
    FILTER_MIN_TRAIN_PER_CLASS,
    FILTER_MIN_VALIDATION_PER_CLASS,
    candidate_rounds,
)

BATCH = 64
REJECTIONS = ("ood", "off_class", "near_copy", "surplus", "duplicate", "background")
DEFAULT_DUPLICATE_BITS = 4
#: A top-up round plans on at least this share of its candidates being kept, so a class
#: that kept nothing gets deficit x oversample / 0.25 candidates, not an unbounded number.
MIN_TOP_UP_KEEP_RATE = 0.25


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


def curation_rule(filter_params: dict[str, Any], requested: int) -> SelectionRule:
    """The request's rule held to what was asked: at most ``requested`` kept, no
    near-duplicates, no background over its share (each as the filter settings say)."""
    bits = filter_params.get("duplicate_bits", DEFAULT_DUPLICATE_BITS)
    return selection_rule(filter_params, requested).capped(
        requested,
        duplicate_bits=None if bits is None else int(bits),
        background_share=bool(filter_params.get("background_share", True)),
    )


def tops_up(filter_params: dict[str, Any]) -> bool:
    """Whether a class left short gets more rounds: not under ``keep_fraction``, whose
    count is the fraction of one round by definition."""
    return filter_params.get("rule", "calibrated") != "keep_fraction"


def top_up_size(deficit: int, kept: int, generated: int, oversample: float) -> int:
    """Candidates a top-up round generates for a class short by ``deficit``: the deficit
    x ``oversample`` over the share kept so far (at least :data:`MIN_TOP_UP_KEEP_RATE`)."""
    if generated and kept / generated >= MIN_TOP_UP_KEEP_RATE:
        wanted = deficit * oversample * generated / kept
    else:
        wanted = deficit * oversample / MIN_TOP_UP_KEEP_RATE
    return math.ceil(round(wanted, 9))  # 54.000000001 is 54


def _candidate_batches(
    runtime: Runtime, rows: list[SyntheticImage], size: int, channels: int
) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), BATCH):
        batch = []
        for row in rows[start : start + BATCH]:
            key = row.candidate_key or row.object_key  # scored as generated, never the copy
            pixels = resize_square(decode_image(runtime.store.get_bytes(key)).pixels, size)
            if channels == 3 and pixels.ndim == 2:
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            batch.append(pixels if channels == 3 else pixels.reshape(size, size, 1))
        yield np.stack(batch)


def _record(
    session: Session,
    rows: list[SyntheticImage],
    records: list[CandidateRecord],
    curated_set_id: uuid.UUID,
    rule: SelectionRule,
) -> None:
    scores = []
    for row, record in zip(rows, records, strict=True):
        values: dict[str, Any] = {
            "decision": record.reason.value,
            "decision_reason": _explain(record, rule),
            "curated_set_id": curated_set_id if record.kept else None,
        }
        if not record.kept:  # an earlier round may have delivered it: back to the candidate
            values.update(
                object_key=func.coalesce(SyntheticImage.candidate_key, SyntheticImage.object_key),
                sha256=func.coalesce(SyntheticImage.candidate_sha256, SyntheticImage.sha256),
                size=func.coalesce(SyntheticImage.candidate_size, SyntheticImage.size),
                resize_method=None,
            )
        session.execute(update(SyntheticImage).where(SyntheticImage.id == row.id).values(values))
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
    statement = dialect.insert(OodScore).values(scores)
    # A later round can change a decision (``combined`` passed), never add a row.
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["synthetic_image_id", "detector"],
            set_={
                "score": statement.excluded.score,
                "threshold": statement.excluded.threshold,
                "passed": statement.excluded.passed,
            },
        )
    )


def _explain(record: CandidateRecord, rule: SelectionRule) -> str:
    if record.reason == Reason.NEAR_COPY:
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
    # A rule without thresholds (keep_fraction) keeps by rank whatever failed.
    standing = (
        f"failed {', '.join(failed)} but ranked in" if failed else "passed every detector"
    ) + f" (combined percentile {record.combined_score:.2f})"
    if record.reason == Reason.KEPT:
        if record.below_chance:
            return (
                f"{standing}; kept below chance: its classifier gives the class "
                f"{record.class_probability:.2f}, under 1 / number of classes"
            )
        return standing
    if record.reason == Reason.SURPLUS:
        return f"{standing}, but the class already has the {rule.max_kept} asked, all better"
    if record.reason == Reason.DUPLICATE:
        return (
            f"{standing}, but its pHash is within {rule.duplicate_bits} bits of a better "
            "kept candidate of the class"
        )
    if record.reason == Reason.BACKGROUND:
        return f"{standing}, but its background already carries its share of the class"
    return f"failed: {', '.join(failed) or 'ranked below the keep cut'}"


def filter_candidates_job(ctx: JobContext, runtime: Runtime) -> dict[str, Any] | NextStage:
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
    rounds = candidate_rounds(request)
    if len(candidates) < sum(sum(round_.values()) for round_ in rounds):
        # Handed over before its round was generated in full (a lost or doubled
        # delivery): generation skips what is recorded and hands the job back.
        return NextStage("tailsynth.synthesize", "generating")
    total = len(candidates)
    ctx.progress(0, total, "filtering" if len(rounds) == 1 else f"filtering (round {len(rounds)})")
    summary: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    mode_reasons: dict[str, str] = {}  # the classes filtered, and how
    done = 0
    # Every class asked for, and those the POST already planned to skip (fill_to_max).
    for class_name in dict.fromkeys([*request.counts, *params.get("plan", {})]):
        rows = [row for row in candidates if row.label == class_name]
        requested = int(request.counts.get(class_name, 0))
        entry = _entry(requested, len(rows))
        entry["rounds"] = len({row.generation_round for row in rows})
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
        rule = curation_rule(params, requested)
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
        below_chance = 0
        offset = 0
        for outcome in ood.decide_chunks(chunks, rule, backgrounds=_backgrounds(rows)):
            chunk_rows = rows[offset : offset + len(outcome.records)]
            with runtime.sessions.begin() as session:
                _record(session, chunk_rows, outcome.records, curated_set_id, rule)
            reasons.update(record.reason.value for record in outcome.records)
            below_chance += sum(record.kept and record.below_chance for record in outcome.records)
            offset += len(outcome.records)
            done += len(outcome.records)
            ctx.progress(done)
            calibration = outcome.calibration
        thresholds[class_name] = {**asdict(calibration), "rule": rule.describe()}
        entry["kept"] = reasons.get("kept", 0)
        entry["rejected"] = {reason: reasons.get(reason, 0) for reason in REJECTIONS}
        entry["kept_below_chance"] = below_chance
        entry["filter_mode"] = plan.filter_mode.value
        mode_reasons[class_name] = plan.reason

    max_rounds = int(request.params.get("max_rounds", DEFAULT_MAX_ROUNDS))
    short = {
        name: entry["requested"] - entry["kept"]
        for name, entry in summary.items()
        if name in mode_reasons and entry["kept"] < entry["requested"]
    }
    if short and tops_up(params) and len(rounds) < max_rounds:
        oversample = float(request.params.get("oversample", 1.5))
        top_up = {
            "candidates": {
                name: top_up_size(
                    deficit, summary[name]["kept"], summary[name]["generated"], oversample
                )
                for name, deficit in short.items()
            },
            "deficit": short,
        }
        _add_top_up_round(runtime, synthesis_id, len(rounds) - 1, top_up)
        for name in mode_reasons:  # not judged yet: the short ones are being topped up
            summary[name]["status"] = "topping_up" if name in short else "kept"
        with runtime.sessions.begin() as session:
            curated = session.get(CuratedSet, curated_set_id)
            assert curated is not None
            curated.summary = summary  # how far it got, while the set is still pending
        return NextStage(
            "tailsynth.synthesize",
            f"generating (round {len(rounds) + 1} of {max_rounds})",
            {"rounds": len(rounds) + 1, "short": short},
        )

    for name, mode_reason in mode_reasons.items():
        _judge(summary[name], mode_reason, cap_reached=tops_up(params))
    resolution = int(request.params.get("resolution") or 0)
    if resolution:
        ctx.progress(0, sum(entry["kept"] for entry in summary.values()), "delivering")
        _deliver(
            ctx,
            runtime,
            synthesis_id,
            curated_set_id,
            resolution,
            str(request.params.get("resize_method", DEFAULT_RESIZE_METHOD)),
        )
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
        "rounds": len(rounds),
        # Replaces what an earlier round's hand-over said was short.
        "short": {name: e["short"] for name, e in summary.items() if e.get("short")},
        "kept_below_chance": sum(entry["kept_below_chance"] for entry in summary.values()),
        PARTIAL: bool(attention),
        "summary": _one_line(summary, attention),
        "classes": {name: entry["status"] for name, entry in summary.items()},
        "classifier_health": health,
    }


def _backgrounds(rows: list[SyntheticImage]) -> np.ndarray:
    """(N,) an int per distinct source image of the rows, -1 where there is none."""
    ids: dict[uuid.UUID, int] = {}
    return np.array(
        [
            -1 if row.source_image_id is None else ids.setdefault(row.source_image_id, len(ids))
            for row in rows
        ],
        dtype=np.int64,
    )


def _add_top_up_round(
    runtime: Runtime, synthesis_id: uuid.UUID, after_round: int, top_up: dict[str, Any]
) -> None:
    """Append ``top_up`` as the round after ``after_round`` (once: a re-delivered stage
    finds it there already)."""
    with runtime.sessions.begin() as session:
        request = session.get(SynthesisRequest, synthesis_id, with_for_update=True)
        assert request is not None
        if len(request.top_up_rounds or []) == after_round:
            request.top_up_rounds = [*(request.top_up_rounds or []), top_up]


def _deliver(
    ctx: JobContext,
    runtime: Runtime,
    synthesis_id: uuid.UUID,
    curated_set_id: uuid.UUID,
    resolution: int,
    method: str,
) -> None:
    """Put each kept candidate at ``resolution`` px and point its row at that copy."""
    with runtime.sessions() as session:
        kept = list(
            session.scalars(
                select(SyntheticImage)
                .where(
                    SyntheticImage.synthesis_id == synthesis_id,
                    SyntheticImage.curated_set_id == curated_set_id,
                )
                .order_by(SyntheticImage.index_in_request)
            )
        )
    for done, row in enumerate(kept, start=1):
        ctx.check_cancel()
        candidate_key = row.candidate_key or row.object_key
        key = f"synthesis/{synthesis_id}/curated/{row.index_in_request:07d}.png"
        if row.object_key == key and row.size == resolution and row.resize_method == method:
            continue  # delivered by an earlier attempt
        png, side = curated_png(runtime.store.get_bytes(candidate_key), resolution, method)
        resized = side != resolution
        if resized:
            runtime.store.put_bytes(key, png, "image/png")
        with runtime.sessions.begin() as session:
            session.execute(
                update(SyntheticImage)
                .where(SyntheticImage.id == row.id)
                .values(
                    object_key=key if resized else candidate_key,
                    sha256=sha256_bytes(png),
                    candidate_size=side,
                    size=resolution,
                    resize_method=method if resized else None,
                )
            )
        ctx.progress(done)


def _entry(requested: int, generated: int) -> dict[str, Any]:
    """A class's curated-set summary before filtering (filled in as it goes)."""
    return {
        "requested": requested,
        "generated": generated,
        "kept": 0,
        "rejected": dict.fromkeys(REJECTIONS, 0),
        "kept_below_chance": 0,
        "rounds": 0,
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


def _judge(entry: dict[str, Any], mode_reason: str, *, cap_reached: bool) -> None:
    """``kept`` with the count asked, else ``flagged`` with why it fell short (and that
    no round is left, when top-up rounds ran to their cap)."""
    kept, requested = entry["kept"], entry["requested"]
    entry["short"] = max(0, requested - kept)
    entry["cap_reached"] = bool(entry["short"]) and cap_reached
    below = (
        f"; {entry['kept_below_chance']} kept below chance for the class"
        if entry["kept_below_chance"]
        else ""
    )
    if kept >= requested and entry["kept_below_chance"] * 2 > kept:
        # Enough passed the detectors, but the dataset's classifier calls most of them
        # another class: say so rather than deliver them as the class asked for.
        entry.update(
            status="flagged",
            dominant_rejection=None,
            mostly_below_chance=True,
            reason=f"{entry['kept_below_chance']} of {kept} kept images are below chance "
            "for the class: the dataset's classifier does not recognise most of them as it"
            f"; filter: {mode_reason}",
        )
        return
    if kept >= requested:
        entry.update(status="kept", reason=mode_reason + below)
        return
    dominant, count = max(entry["rejected"].items(), key=lambda item: item[1])
    entry.update(
        status="flagged",
        dominant_rejection=dominant if count else None,
        reason=_shortfall(entry)
        + f" ({entry['generated']} generated); "
        + (f"most rejected as {dominant} ({count})" if count else "none rejected")
        + below
        + f"; filter: {mode_reason}",
    )


def _shortfall(entry: dict[str, Any]) -> str:
    """E.g. ``kept 12 of 24 asked after 3 rounds; cap reached``."""
    rounds = entry["rounds"]
    return (
        f"kept {entry['kept']} of {entry['requested']} asked after {rounds} "
        + ("round" if rounds == 1 else "rounds")
        + ("; cap reached" if entry.get("cap_reached") else "")
    )


def _one_line(summary: dict[str, Any], attention: list[str]) -> str:
    """E.g. ``2 of 3 classes kept; DF flagged (kept 12 of 24 asked after 3 rounds; cap
    reached; mostly ood)``."""
    head = f"{len(summary) - len(attention)} of {len(summary)} classes kept"
    if not attention:
        return head
    parts = []
    for name in attention:
        entry = summary[name]
        if entry.get("mostly_below_chance"):
            why = f"{entry['kept_below_chance']} of {entry['kept']} kept below chance"
        elif entry["status"] == "flagged":
            dominant = entry.get("dominant_rejection")
            why = _shortfall(entry) + (f"; mostly {dominant}" if dominant else "")
        else:
            why = entry["reason"]
        parts.append(f"{name} {entry['status']} ({why})")
    return head + "; " + "; ".join(parts)
