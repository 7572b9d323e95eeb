"""The generator worker's jobs: train (or register) a generator, generate candidates.

Thin glue between the job system, storage and Postgres on one side and the library
(:mod:`services.generator.training`, :mod:`.sampling`, :mod:`.pretrained`) on the
other. Everything is idempotent per job:

- training checkpoints are mirrored to storage as they are written, and a redelivered
  training task first pulls the newest one back, so a killed worker resumes (on any
  host); storage and scratch keep the newest ``generator_keep_checkpoints`` of them;
- each task first deletes what killed runs left on scratch (:mod:`.scratch`);
- each candidate has a fixed (request, index) with a fixed seed, source image and mask;
  its PNG key and row are keyed by that index, so a redelivered generation task skips
  what is recorded and redoes nothing twice.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.generator.checkpoint import (
    MANIFEST_FILE,
    CheckpointInfo,
    checkpoint_name,
    checkpoint_step,
    install_checkpoint,
    latest_checkpoint,
    retained_steps,
)
from services.generator.config import GeneratorConfig
from services.generator.masks import (
    BackgroundPolicy,
    auto_masks,
    jitter_mask,
    select_background_indices,
)
from services.generator.output import ImageOrigin, synthetic_image_record
from services.generator.quality import (
    FeatureNetwork,
    per_class_classifier_accuracy,
    per_class_copy_rate,
    quality_report,
)
from services.generator.sampling import load_generator
from services.generator.scratch import sweep_scratch
from services.generator.training import train_generator
from services.trainer.classifier import ImageClassifier, write_sha256_sidecar
from services.trainer.dataset_classifier import (
    classifier_config_from,
    dataset_classifier,
    health_of,
)
from shared.dataset_arrays import SplitArrays, dataset_channels, load_split, ready_dataset
from shared.errors import Conflict, InvalidInput, NotFound
from shared.imaging import encode_png, sha256_bytes
from shared.jobs import JobCanceled, JobContext, NextStage
from shared.models import Generator, Split, SynthesisRequest, SyntheticImage
from shared.runtime import Runtime
from shared.storage import download_verified
from shared.synthesis import (
    DEFAULT_BACKGROUND_POLICY,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INFERENCE_STEPS,
    DEFAULT_SCHEDULER,
    DEFAULT_TAIL_GUIDANCE_SCALE,
    candidate_rounds,
    class_guidance_scale,
)

log = logging.getLogger(__name__)
LOSS_CURVE_POINTS = 500
PROBE_IMG2IMG_STRENGTH = 0.6  # the synthesis default


def checkpoint_prefix(generator_id: uuid.UUID) -> str:
    return f"generators/{generator_id}/checkpoints"


def _scratch(runtime: Runtime, *parts: str) -> Path:
    path = (runtime.settings.data_dir / "scratch" / Path(*parts)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _download_prefix(runtime: Runtime, prefix: str, local: Path) -> None:
    for key in runtime.store.list_keys(prefix + "/"):
        target = local / key[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        runtime.store.download_to(key, target)


def _pull_checkpoint(runtime: Runtime, key: str, local: Path) -> CheckpointInfo:
    """Download the checkpoint stored under ``key`` to ``local``, verified and atomically
    (a killed or corrupt download leaves nothing at ``local``)."""
    return install_checkpoint(local, partial(_download_prefix, runtime, key))


class _CheckpointMirror:
    """Copies each new local checkpoint to storage (the manifest last, so a half-copied
    checkpoint in storage has no manifest and is never taken for a complete one), then
    deletes the stored checkpoints the retention policy no longer keeps: the ``keep``
    newest and those in ``protect`` (:func:`~.checkpoint.retained_steps`). A stored
    checkpoint is deleted only after a newer one is complete in storage, manifest first."""

    def __init__(
        self,
        runtime: Runtime,
        local_dir: Path,
        generator_id: uuid.UUID,
        *,
        keep: int,
        protect: Iterable[int] = (),
    ) -> None:
        self.runtime = runtime
        self.local_dir = local_dir
        self.prefix = checkpoint_prefix(generator_id)
        self.keep = keep
        self.protect = frozenset(protect)
        self.uploaded_step = -1

    def stored_steps(self) -> list[int]:
        """Steps of the checkpoints in storage with a manifest, newest first."""
        steps = set()
        for key in self.runtime.store.list_keys(self.prefix + "/"):
            name, _, rest = key[len(self.prefix) + 1 :].partition("/")
            step = checkpoint_step(name)
            if rest == MANIFEST_FILE and step is not None:
                steps.add(step)
        return sorted(steps, reverse=True)

    def restore(self) -> CheckpointInfo | None:
        """Pull the newest stored checkpoint that verifies, unless the local dir (this
        host's scratch, possibly empty) already has one as new; the pulled info or None."""
        local = latest_checkpoint(self.local_dir)
        for step in self.stored_steps():
            if local is not None and local.step >= step:
                self.uploaded_step = step
                return None
            name = checkpoint_name(step)
            try:
                pulled = _pull_checkpoint(
                    self.runtime, f"{self.prefix}/{name}", self.local_dir / name
                )
            except ValueError as exc:  # a stored copy that fails its manifest: the one before
                log.warning("stored checkpoint %s/%s is unusable: %s", self.prefix, name, exc)
                continue
            self.uploaded_step = step
            return pulled
        return None

    def sync(self) -> None:
        """Upload the newest local checkpoint if storage does not hold it yet (one a
        killed run wrote but did not upload, or the last of a run)."""
        newest = latest_checkpoint(self.local_dir)
        if newest is not None and newest.step > self.uploaded_step:
            self.upload(newest)

    def upload(self, checkpoint: CheckpointInfo) -> None:
        """Store ``checkpoint`` (manifest last), then prune storage to the retained ones."""
        name = checkpoint.path.name
        manifest = checkpoint.path / MANIFEST_FILE
        for file in sorted(checkpoint.path.rglob("*")):
            if file.is_file() and file != manifest:
                with file.open("rb") as handle:
                    self.runtime.store.put_stream(
                        f"{self.prefix}/{name}/{file.relative_to(checkpoint.path).as_posix()}",
                        handle,
                        file.stat().st_size,
                    )
        self.runtime.store.put_bytes(f"{self.prefix}/{name}/{MANIFEST_FILE}", manifest.read_bytes())
        self.uploaded_step = max(self.uploaded_step, checkpoint.step)
        self.prune()

    def prune(self) -> list[int]:
        """Delete the stored checkpoints the policy does not keep, each manifest first (one
        whose deletion is cut short is no longer complete), and the torn uploads of steps
        older than the newest complete one; the deleted steps."""
        keys: dict[int, list[str]] = {}
        for key in self.runtime.store.list_keys(self.prefix + "/"):
            step = checkpoint_step(key[len(self.prefix) + 1 :].partition("/")[0])
            if step is not None:
                keys.setdefault(step, []).append(key)
        complete = self.stored_steps()
        if not complete:
            return []
        kept = retained_steps(complete, self.keep, self.protect)
        deleted = sorted(
            step for step in keys if step not in kept and (step in complete or step < complete[0])
        )
        for step in deleted:
            manifest = f"{self.prefix}/{checkpoint_name(step)}/{MANIFEST_FILE}"
            for key in sorted(keys[step], key=lambda k: k != manifest):
                self.runtime.store.delete(key)
        if deleted:
            log.info("deleted stored checkpoints of steps %s (%s)", deleted, self.prefix)
        return deleted


def _config_for(generator: Generator, class_names: list[str], channels: int) -> GeneratorConfig:
    try:
        return GeneratorConfig(
            **{
                **generator.config.get("training", {}),
                "num_classes": len(class_names),
                "class_names": tuple(class_names),
                "channels": channels,
            }
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"training config: {exc}", field="training") from exc


def train_generator_job(ctx: JobContext, runtime: Runtime) -> dict[str, Any]:
    generator_id = uuid.UUID(ctx.params["generator_id"])
    with runtime.sessions() as session:
        generator = session.get(Generator, generator_id)
        if generator is None:
            raise NotFound(f"generator {generator_id} vanished")
        dataset = ready_dataset(session, generator.dataset_id)  # type: ignore[arg-type]
        class_names = list(dataset.class_names)
        channels = dataset_channels(session, dataset.id)
        config = _config_for(generator, class_names, channels)
    # Storage and scratch keep as many checkpoints (the last is the final one).
    config = replace(config, keep_checkpoints=runtime.settings.generator_keep_checkpoints)
    sweep_scratch(runtime.settings)
    ctx.progress(0, config.max_train_steps, "loading data")
    train = load_split(
        runtime.sessions,
        runtime.store,
        dataset.id,
        Split.TRAIN,
        config.resolution,
        channels=channels,
        progress=ctx.heartbeat,
    )
    local_dir = _scratch(runtime, "generators", str(generator_id))
    recorded = checkpoint_step(Path(generator.checkpoint_key or "").name)
    mirror = _CheckpointMirror(
        runtime,
        local_dir,
        generator_id,
        keep=config.keep_checkpoints,
        protect=() if recorded is None else (recorded,),
    )
    mirror.restore()
    mirror.sync()  # one this host wrote before it died, unuploaded
    ctx.progress(0, config.max_train_steps, "training")

    def on_step(step: int, total: int) -> None:
        if step % 10 == 0 or step == total:
            ctx.progress(step, total)

    result = train_generator(
        train.images,
        train.masks,
        train.labels,
        class_names,
        config,
        local_dir,
        progress=on_step,
        should_cancel=ctx.should_cancel,
        # Each checkpoint is in storage before training prunes the older local ones.
        on_checkpoint=mirror.upload,
    )
    mirror.sync()
    if result.status == "canceled" or result.checkpoint is None:
        raise JobCanceled()
    curve = result.loss_curve
    stride = max(1, math.ceil(len(curve) / LOSS_CURVE_POINTS))
    with runtime.sessions.begin() as session:
        record = session.get(Generator, generator_id)
        assert record is not None
        record.checkpoint_key = f"{checkpoint_prefix(generator_id)}/{result.checkpoint.path.name}"
        record.checkpoint_sha256 = result.checkpoint.sha256
        record.loss_curve = [[int(s), float(v)] for s, v in curve[::stride]]
        record.state = (
            "probing" if generator.config.get("quality_probe", {}).get("enabled", True) else "ready"
        )
    if generator.config.get("quality_probe", {}).get("enabled", True):
        quality = _quality_probe(ctx, runtime, generator, result.checkpoint.path, channels, train)
        with runtime.sessions.begin() as session:
            record = session.get(Generator, generator_id)
            assert record is not None
            record.quality = quality
            record.state = "ready"
    return {
        "generator_id": str(generator_id),
        "checkpoint_sha256": result.checkpoint.sha256,
        "steps": result.step,
        "resumed_from_step": result.resumed_from_step,
    }


def _quality_probe(
    ctx: JobContext,
    runtime: Runtime,
    generator: Generator,
    checkpoint: Path,
    channels: int,
    train: SplitArrays,
) -> dict[str, Any]:
    """Inpaint held-out real val images with every class (or, for a generator not trained
    to inpaint, re-synthesise or generate them in its first mode); measure per-class
    Fréchet distance to real val images, a real-data classifier's accuracy on them, and
    the share the memorisation guard would reject as copies of ``train`` images."""
    probe = generator.config.get("quality_probe", {})
    model = load_generator(checkpoint)
    size = model.config.resolution
    dataset_id = generator.dataset_id
    assert dataset_id is not None
    ctx.progress(0, stage="quality probe")
    # Balanced sampling: a probe trained as the data falls recognises almost no tail image,
    # real or generated, and would say nothing about the classes synthesis is for. It sees
    # images at the generator's resolution unless told otherwise.
    classifier_config = classifier_config_from(
        {"classifier_image_size": size, **probe, "classifier_balanced_sampling": True}, channels
    )
    classifier, classifier_key = dataset_classifier(
        runtime.sessions,
        runtime.store,
        runtime.settings,
        dataset_id,
        classifier_config,
        progress=ctx.heartbeat,
        should_cancel=ctx.should_cancel,
    )
    val = load_split(
        runtime.sessions,
        runtime.store,
        dataset_id,
        Split.VAL,
        size,
        channels=channels,
        progress=ctx.heartbeat,
    )
    if len(val) == 0:
        return {"skipped": "the dataset has no validation images"}
    images_per_class = int(probe.get("images_per_class", 16))
    steps = int(probe.get("num_inference_steps", DEFAULT_INFERENCE_STEPS))
    guidance_scale = float(probe.get("guidance_scale", DEFAULT_GUIDANCE_SCALE))
    # Each class at the guidance synthesis samples it with (the tail rule included), so
    # the probe scores the images a synthesis request would get.
    train_counts = np.bincount(train.labels, minlength=len(val.class_names))
    guidance_of = [class_guidance_scale(probe, int(n)) for n in train_counts]
    policy = cast(BackgroundPolicy, probe.get("background_policy", DEFAULT_BACKGROUND_POLICY))
    class_ids = np.repeat(np.arange(len(val.class_names)), images_per_class)
    per_class_sources = []
    for class_id in range(len(val.class_names)):
        # A class without val images can only be painted onto other classes' images.
        fallback = policy == "same_class" and class_id not in val.labels
        per_class_sources.append(
            select_background_indices(
                val.labels,
                class_id,
                images_per_class,
                policy="any_class" if fallback else policy,
                seed=class_id,
            )
        )
    sources = np.concatenate(per_class_sources)
    # Probe a mode the generator serves: its inpaint path is untrained without inpaint.
    mode = "inpaint" if "inpaint" in model.config.modes else model.config.modes[0]
    seeds = np.arange(len(class_ids))
    masks = None
    if mode == "inpaint":
        masks = val.masks[sources] if val.masks is not None else auto_masks(val.images[sources])
    generated: np.ndarray | None = None
    for scale in sorted(set(guidance_of)):
        rows = np.flatnonzero(np.asarray(guidance_of)[class_ids] == scale)
        sampling: dict[str, Any] = {
            "num_inference_steps": steps,
            "guidance_scale": scale,
            "should_cancel": ctx.should_cancel,
        }
        if mode == "inpaint":
            assert masks is not None
            result = model.inpaint(
                val.images[sources[rows]], masks[rows], class_ids[rows], seeds[rows], **sampling
            )
        elif mode == "img2img":
            result = model.img2img(
                val.images[sources[rows]], class_ids[rows], PROBE_IMG2IMG_STRENGTH,
                seeds[rows], **sampling
            )
        else:
            result = model.generate(class_ids[rows], seeds[rows], **sampling)
        if result.canceled:
            raise JobCanceled()
        if generated is None:
            generated = np.zeros((len(class_ids), *result.images.shape[1:]), np.uint8)
        generated[rows] = result.images
    assert generated is not None
    features = FeatureNetwork(
        lambda x: torch.from_numpy(
            classifier.features((x * 255).round().byte().permute(0, 2, 3, 1).numpy())
        ),
        classifier.feature_dim,
    )
    real_accuracy, _ = per_class_classifier_accuracy(
        val.images, val.labels, classifier.predict_proba, len(val.class_names)
    )
    per_class = quality_report(
        val.images,
        val.labels,
        generated,
        class_ids,
        val.class_names,
        feature_network=features,
        predict_proba=classifier.predict_proba,
    )
    copy_rate = per_class_copy_rate(
        train.images,
        train.labels,
        generated,
        class_ids,
        classifier.features,
        len(val.class_names),
    )
    health = health_of(classifier)
    return {
        "probe": f"{mode} held-out real val images; Frechet distance in the dataset "
        "classifier's feature space; that classifier's accuracy on the generated images; "
        "copy_rate: the share the memorisation guard rejects as copies of training images",
        "mode": mode,
        "classifier": asdict(classifier_config),
        # The synthesis filter's default asks for this same model (one cache entry).
        "classifier_key": classifier_key,
        # The probe's figures mean something only if it recognises real images first.
        "classifier_health": health,
        **({"warning": f"quality probe: {health['message']}"} if health["ok"] is False else {}),
        "sampling": {
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "tail_guidance_scale": probe.get("tail_guidance_scale", DEFAULT_TAIL_GUIDANCE_SCALE),
            "background_policy": policy,
        },
        "per_class": [
            {
                **asdict(q),
                "guidance_scale": guidance_of[c],
                "classifier_accuracy_on_real_val": real_accuracy[c],
                "copy_rate": copy_rate[c],
            }
            for c, q in enumerate(per_class)
        ],
    }


# ----------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class CandidatePlan:
    """What candidate ``index`` of a request is: its class, seed, source image and mask,
    and the generation round that asked for it (0 first, k the k-th top-up)."""

    index: int
    class_id: int
    seed: int
    source_row: int | None
    generation_round: int = 0


def _background_seed(request: SynthesisRequest, class_id: int, generation_round: int) -> int:
    if generation_round == 0:
        return request.seed + class_id  # as before top-up rounds existed
    sequence = np.random.SeedSequence([request.seed, class_id, generation_round])
    return int(sequence.generate_state(1)[0])


def candidate_seed(request_seed: int, index: int) -> int:
    """The seed of candidate ``index`` of a request seeded ``request_seed``: in
    [0, 2**63), so it fits the int64 arrays sampling takes and the BIGINT column that
    records it, for any request seed the API accepts (up to 2**62;
    ``request_seed * 1_000_003 + index`` overflowed into an object array). Distinct
    indices get independent seeds (numpy's SeedSequence hash)."""
    state = np.random.SeedSequence([request_seed, index]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def plan_candidates(request: SynthesisRequest, train: SplitArrays) -> list[CandidatePlan]:
    """The deterministic list of candidates of a request (same request → same list).

    Rounds follow one another in the index: a top-up round's candidates come after every
    earlier round's, so their indices, seeds (derived from the index) and rows never
    collide with an earlier round's; each round draws its backgrounds afresh.
    """
    plans: list[CandidatePlan] = []
    index = 0
    names = train.class_names
    for generation_round, candidates in enumerate(candidate_rounds(request)):
        for class_name in sorted(candidates, key=names.index):
            n = candidates[class_name]
            class_id = names.index(class_name)
            sources: list[int | None] = [None] * n
            if request.mode in ("inpaint", "img2img") and n:
                sources = [
                    int(i)
                    for i in select_background_indices(
                        train.labels,
                        class_id,
                        n,
                        policy=request.params.get("background_policy", DEFAULT_BACKGROUND_POLICY),
                        seed=_background_seed(request, class_id, generation_round),
                    )
                ]
            for k in range(n):
                plans.append(
                    CandidatePlan(
                        index,
                        class_id,
                        candidate_seed(request.seed, index),
                        sources[k],
                        generation_round,
                    )
                )
                index += 1
    return plans


def _batches(
    plans: list[CandidatePlan], size: int, key: Callable[[CandidatePlan], float]
) -> Iterator[list[CandidatePlan]]:
    """Consecutive runs of at most ``size`` plans that share ``key`` (one sampler call
    each: a call takes one guidance scale)."""
    for _, group in groupby(plans, key=key):
        run = list(group)
        for start in range(0, len(run), size):
            yield run[start : start + size]


def _insert_candidates(session: Session, rows: list[dict[str, Any]]) -> None:
    dialect = postgresql if session.bind and session.bind.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(SyntheticImage).values(rows)
    session.execute(
        statement.on_conflict_do_nothing(index_elements=["synthesis_id", "index_in_request"])
    )


def _load_model(runtime: Runtime, generator: Generator, class_names: list[str]) -> Any:
    if generator.kind == "pretrained":
        from services.generator.pretrained import PromptTemplates, load_pretrained

        return load_pretrained(
            generator.source or "",
            class_names,
            weights_roots=runtime.settings.weights_roots,
            prompts=PromptTemplates.for_modality(generator.config.get("modality", "dermoscopy")),
        )
    local = _scratch(runtime, "generators", str(generator.id), "sampling")
    key = generator.checkpoint_key or ""
    checkpoint = local / Path(key).name
    if (checkpoint / MANIFEST_FILE).is_file():
        try:  # verified on first load; a bad copy (left by an older version) is replaced
            cached = load_generator(checkpoint)
            if cached.sha256 == generator.checkpoint_sha256:
                return cached
        except (OSError, ValueError) as exc:
            log.warning(
                "cached checkpoint %s is unusable (%s); downloading it again", checkpoint, exc
            )
    pulled = _pull_checkpoint(runtime, key, checkpoint)
    if pulled.sha256 != generator.checkpoint_sha256:
        raise ValueError(
            f"stored checkpoint {key} has sha256 {pulled.sha256}, the generator "
            f"records {generator.checkpoint_sha256}"
        )
    return load_generator(checkpoint)


def generate_candidates_job(ctx: JobContext, runtime: Runtime) -> NextStage:
    synthesis_id = uuid.UUID(ctx.params["synthesis_id"])
    sweep_scratch(runtime.settings)
    with runtime.sessions() as session:
        request = session.get(SynthesisRequest, synthesis_id)
        if request is None:
            raise NotFound(f"synthesis {synthesis_id} vanished")
        generator = session.get(Generator, request.generator_id)
        if generator is None or generator.state != "ready":
            raise Conflict(f"generator {request.generator_id} is not ready")
        class_names = list(ready_dataset(session, request.dataset_id).class_names)
        channels = dataset_channels(session, request.dataset_id)
        recorded = set(
            session.scalars(
                select(SyntheticImage.index_in_request).where(
                    SyntheticImage.synthesis_id == synthesis_id
                )
            )
        )
    served = generator.config.get("modes")  # recorded when pretrained weights registered
    if generator.kind == "pretrained" and served and request.mode not in served:
        # The API refuses these at POST; a request queued before it did ends here.
        raise InvalidInput(
            f"generator {generator.id} is an inpainting pipeline: it serves "
            f"{', '.join(served)} only, not {request.mode}",
            field="mode",
        )
    model = _load_model(runtime, generator, class_names)
    size = model.config.resolution if generator.kind == "trained" else model.default_size
    ctx.progress(len(recorded), stage="loading data")
    train = load_split(
        runtime.sessions,
        runtime.store,
        request.dataset_id,
        Split.TRAIN,
        size,
        channels=channels,
        progress=ctx.heartbeat,
    )
    plans = plan_candidates(request, train)
    todo = [p for p in plans if p.index not in recorded]
    generation_round = len(request.top_up_rounds or [])
    stage = "generating" if generation_round == 0 else f"generating (round {generation_round + 1})"
    sampling = request.params.get("sampling", {})
    batch_size = int(sampling.get("batch_size", 16))
    guidance = _guidance_classifier(runtime, generator, request.params.get("classifier_guidance"))
    ctx.progress(len(plans) - len(todo), len(plans), stage)
    checkpoint_sha = generator.checkpoint_sha256 or ""
    train_counts = np.bincount(train.labels, minlength=len(train.class_names))
    guidance_of = {c: class_guidance_scale(sampling, int(n)) for c, n in enumerate(train_counts)}
    done = len(plans) - len(todo)
    for chunk in _batches(todo, batch_size, key=lambda p: guidance_of[p.class_id]):
        ctx.check_cancel()
        class_ids = np.array([p.class_id for p in chunk])
        seeds = np.array([p.seed for p in chunk], dtype=np.int64)
        # Every inpaint/img2img candidate has a source row; "generate" ones have none.
        sources = np.array(
            [p.source_row for p in chunk if p.source_row is not None], dtype=np.int64
        )
        masks = None
        kwargs = {
            "scheduler": sampling.get("scheduler", DEFAULT_SCHEDULER),
            "num_inference_steps": int(
                sampling.get("num_inference_steps", DEFAULT_INFERENCE_STEPS)
            ),
            "guidance_scale": guidance_of[chunk[0].class_id],
            "batch_size": batch_size,
            **guidance,
        }
        if request.mode == "inpaint":
            images = train.images[sources]
            base = train.masks[sources] if train.masks is not None else auto_masks(images)
            masks = np.stack(
                [
                    jitter_mask(m, np.random.default_rng(p.seed))
                    for m, p in zip(base, chunk, strict=True)
                ]
            )
            result = model.inpaint(images, masks, class_ids, seeds, **kwargs)
        elif request.mode == "img2img":
            result = model.img2img(
                train.images[sources],
                class_ids,
                float(sampling.get("strength", 0.6)),
                seeds,
                **kwargs,
            )
        else:
            result = model.generate(class_ids, seeds, **kwargs)
        rows = []
        for k, plan in enumerate(chunk):
            mask_key = None
            if masks is not None:
                mask_key = f"synthesis/{synthesis_id}/masks/{plan.index:07d}.png"
                runtime.store.put_bytes(mask_key, encode_png(masks[k]), "image/png")
            source_id = train.image_ids[plan.source_row] if plan.source_row is not None else None
            class_name = train.class_names[plan.class_id]
            prompt = model.prompts.prompt(class_name) if generator.kind == "pretrained" else None
            png, provenance = synthetic_image_record(
                result.images[k],
                ImageOrigin(
                    class_id=plan.class_id,
                    class_name=class_name,
                    seed=plan.seed,
                    checkpoint_sha256=result.checkpoint_sha256 or checkpoint_sha,
                    source_image_id=str(source_id) if source_id else None,
                    mask_id=mask_key,
                    prompt=prompt,
                    job_id=str(ctx.job_id),
                ),
                result.parameters,
            )
            key = f"synthesis/{synthesis_id}/candidates/{plan.index:07d}.png"
            runtime.store.put_bytes(key, png, "image/png")
            digest = sha256_bytes(png)
            side = int(result.images[k].shape[0])
            rows.append(
                {
                    "id": uuid.uuid5(synthesis_id, str(plan.index)),
                    "tenant_id": request.tenant_id,
                    "synthesis_id": synthesis_id,
                    "curated_set_id": None,
                    "index_in_request": plan.index,
                    "dataset_id": request.dataset_id,
                    "generator_id": generator.id,
                    "source_image_id": source_id,
                    "mask_key": mask_key,
                    "object_key": key,
                    "sha256": digest,
                    # Delivered as generated until the filter keeps (and resamples) it.
                    "candidate_key": key,
                    "candidate_sha256": digest,
                    "candidate_size": side,
                    "size": side,
                    "resize_method": None,
                    "generation_round": plan.generation_round,
                    "label": class_name,
                    "mode": request.mode,
                    "prompt": prompt,
                    "scheduler": result.parameters.scheduler,
                    "steps": result.parameters.num_inference_steps,
                    "guidance_scale": result.parameters.guidance_scale,
                    "strength": result.parameters.strength if request.mode == "img2img" else None,
                    "seed": plan.seed,
                    "checkpoint_sha256": provenance["checkpoint_sha256"],
                    "job_id": ctx.job_id,
                }
            )
        with runtime.sessions.begin() as session:
            _insert_candidates(session, rows)
        done += len(chunk)
        ctx.progress(done)
    return NextStage("tailsynth.filter_candidates", "filtering", {"candidates": len(plans)})


def _guidance_classifier(
    runtime: Runtime, generator: Generator, settings: dict[str, Any] | None
) -> dict[str, Any]:
    """Sampler arguments for classifier guidance (IOIS: the classifier being trained steers
    generation towards its class), from a stored classifier checkpoint; {} when off."""
    if not settings or float(settings.get("scale", 0.0)) <= 0:
        return {}
    if generator.kind != "trained":
        raise InvalidInput(
            "classifier guidance needs a generator trained by tailsynth; pretrained pipelines "
            "take prompts instead",
            field="classifier_guidance",
        )
    key = str(settings["checkpoint_key"])
    local = (runtime.settings.data_dir / "cache" / key).resolve()
    if local.is_file():  # checked on download; its sidecar is checked on every load
        try:
            classifier = ImageClassifier.load(local)
        except ValueError as exc:
            log.warning("cached classifier %s is unusable (%s); downloading it again", local, exc)
            local.unlink()
    if not local.is_file():
        write_sha256_sidecar(local, download_verified(runtime.store, key, local))
        classifier = ImageClassifier.load(local)
    return {
        "classifier": classifier.guidance_module(),
        "classifier_scale": float(settings["scale"]),
    }


def _fail_registration(runtime: Runtime, generator_id: uuid.UUID) -> None:
    with runtime.sessions.begin() as session:
        record = session.get(Generator, generator_id)
        assert record is not None
        record.state = "failed"


def register_pretrained_job(ctx: JobContext, runtime: Runtime) -> dict[str, Any]:
    """Load pretrained diffusers weights offline once, to check them and record their hash."""
    from services.generator.pretrained import (
        PretrainedWeightsError,
        PromptTemplates,
        load_pretrained,
    )

    generator_id = uuid.UUID(ctx.params["generator_id"])
    with runtime.sessions() as session:
        generator = session.get(Generator, generator_id)
        if generator is None:
            raise NotFound(f"generator {generator_id} vanished")
        class_names = list(ready_dataset(session, generator.dataset_id).class_names)  # type: ignore[arg-type]
    ctx.progress(0, 1, "loading weights")
    try:
        model = load_pretrained(
            generator.source or "",
            class_names,
            weights_roots=runtime.settings.weights_roots,
            prompts=PromptTemplates.for_modality(generator.config.get("modality", "dermoscopy")),
        )
    except PretrainedWeightsError as exc:  # its message is written for the tenant
        _fail_registration(runtime, generator_id)
        raise InvalidInput(str(exc), field="source") from exc
    except (ValueError, OSError) as exc:  # a loader's own words may name server paths
        _fail_registration(runtime, generator_id)
        log.warning("pretrained weights %r did not load", generator.source, exc_info=True)
        raise InvalidInput(
            f"pretrained weights {generator.source!r} could not be loaded as a Stable "
            f"Diffusion pipeline ({type(exc).__name__})",
            field="source",
        ) from exc
    with runtime.sessions.begin() as session:
        record = session.get(Generator, generator_id)
        assert record is not None
        record.checkpoint_sha256 = model.sha256
        record.state = "ready"
        record.config = {
            **record.config,
            "default_size": model.default_size,
            "lora": model.lora,
            # Synthesis requests for another mode are refused at POST (422 on mode).
            "modes": list(model.modes),
        }
    return {"generator_id": str(generator_id), "checkpoint_sha256": model.sha256}
