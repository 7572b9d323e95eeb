"""The OOD filter: fit on real images, score candidates in a stream, select the curated set.

Typical use (the lead wraps this in a Celery task; nothing here touches DB or storage)::

    train = embed_images(classifier, iter_image_batches(train_images, 256))
    val = embed_images(classifier, iter_image_batches(val_images, 256))
    ood_filter = OodFilter.fit(train, train_labels, val, val_labels)
    scores = [chunk for chunk in ood_filter.score_batches(classifier, batches, "DF")]
    outcome = ood_filter.decide(CandidateScores.concatenate(scores), SelectionRule.calibrated())

Detectors are fitted on the real **training** split; thresholds and percentiles come
from the real **validation** split of the class; the test split is never used. Scores
follow one convention: higher = more in-distribution (see :mod:`.records`).

Every class is served in the best mode it can have (:meth:`OodFilter.plan`):

* ``per_class``: at least ``min_train_per_class`` training and
  ``min_validation_per_class`` validation images: thresholds from its own images.
* ``pooled``: fewer (down to one training image and no validation image): the
  detectors borrow strength from all classes (see :mod:`.detectors`) and the thresholds
  come from the validation images of all classes, each scored against its own class
  model, class-adjusted (see :mod:`.calibration`).
* ``skipped``: no training image, or fewer than ``min_validation_per_class`` validation
  images even pooled; asking to score it raises a ValueError with the reason.

One small class never stops the others from being filtered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.ood_filter.calibration import (
    combined_score,
    joint_thresholds,
    percentile_scores,
    shrunken_class_offsets,
)
from services.ood_filter.detectors import (
    OFF_CLASS_DETECTOR,
    ClassProbabilityDetector,
    Detector,
    build_detector,
)
from services.ood_filter.features import (
    FeatureExtractor,
    ImageEmbeddings,
    OodFilterCanceled,
    embed_batch,
    image_shape_of,
)
from services.ood_filter.memorisation import CopyCheck, MemorisationGuard
from services.ood_filter.records import (
    CandidateRecord,
    ClassCalibration,
    ClassPlan,
    FilterMode,
    FilterOutcome,
    Reason,
)
from services.ood_filter.selection import SelectionRule, decide

# Energy and maximum softmax are available but off by default: on the demo set they rate
# colour-shifted, blurred and other-class images as *more* in-distribution than real
# ones (AUROC 0.36-0.39, see benchmarks/ood_filter_demo_eval.py).
DEFAULT_DETECTORS: tuple[str, ...] = (
    "mahalanobis",
    "relative_mahalanobis",
    "knn",
    "class_probability",
    "sharpness",
)


@dataclass(frozen=True)
class OodFilterConfig:
    """Knobs of the filter (defaults are what the demo evaluation measured).

    Attributes:
        detectors: Detector names, all must pass; include ``class_probability`` for the
            ``off_class`` reason.
        knn_k: Neighbours for the KNN detector (capped by the class size).
        target_keep_rate: Fraction of real images of a class that must pass all detectors
            at the calibrated thresholds (estimated held-out on validation images), in
            (0, 1]. 0.97 rather than 0.95 because new patients differ from the validation
            ones more than the estimate can see: on the demo set 0.95 kept 90.0 % of
            held-out real images and 0.97 kept 94.2 %.
        min_train_per_class: Real training images a class needs for statistics of its own
            (``per_class`` mode, and the copy guard's own similarity statistic); a class
            with fewer but at least one is filtered ``pooled``.
        min_validation_per_class: Real validation images a class needs for thresholds of
            its own; fewer means ``pooled``, and the pooled validation set (images of
            all classes with a training image) needs at least this many too.
        pooled_validation_per_class: At most this many validation images of each class
            enter the pooled reference set (a random subset), so large classes do not
            drown the others and calibration stays cheap.
        class_prior_correction: Score ``class_probability`` on prior-corrected logits
            (see :class:`~services.ood_filter.detectors.ClassProbabilityDetector`): on
            for a classifier trained with plain cross-entropy on the imbalanced training
            split. On the demo set with SCC, VASC and DF cut to 5, 3 and 2 training
            images it raised the tail's other-class rejection from 36 % to 45 % on one
            draw of the kept images and changed nothing on another (shrink_classes seed
            0); the other figures moved by under 0.5 points.
        copy_similarity_percentile: Percentile of train-to-nearest-other-train cosine
            similarities above which a candidate is a near copy.
        copy_similarity_margin: Fraction of the gap from that similarity to 1 (identical)
            added to it, in [0, 1].
        max_phash_distance: Upper bound (bits) of the pHash near-copy threshold.
        seed: Seed for the subsample that calibrates the pHash threshold.
    """

    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    knn_k: int = 5
    target_keep_rate: float = 0.97
    min_train_per_class: int = 10
    min_validation_per_class: int = 10
    pooled_validation_per_class: int = 200
    class_prior_correction: bool = False
    copy_similarity_percentile: float = 99.0
    copy_similarity_margin: float = 0.5
    max_phash_distance: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ValueError("at least one detector is needed")
        if len(set(self.detectors)) != len(self.detectors):
            raise ValueError(f"detectors repeat: {self.detectors}")
        if self.min_train_per_class < 2:
            raise ValueError("min_train_per_class must be >= 2 (the copy guard needs pairs)")
        if self.min_validation_per_class < 2:
            raise ValueError("min_validation_per_class must be >= 2 (leave-one-out calibration)")
        if self.pooled_validation_per_class < 1:
            raise ValueError("pooled_validation_per_class must be >= 1")


def plan_class(
    n_train: int, n_validation: int, n_pooled_validation: int, config: OodFilterConfig
) -> tuple[FilterMode, str]:
    """The filter mode a class with these real image counts gets, and why.

    ``n_pooled_validation`` counts the validation images of every class that has a
    training image. ``shared.synthesis`` states the same rule at ``POST /v1/synthesis``
    (a test keeps the two in step).
    """
    if n_train >= config.min_train_per_class and n_validation >= config.min_validation_per_class:
        return FilterMode.PER_CLASS, (
            f"{n_train} real training and {n_validation} validation images of its own"
        )
    if n_train == 0:
        return FilterMode.SKIPPED, (
            "no real training image: there is nothing to compare its candidates with"
        )
    short = (
        f"{n_train} real training image(s) (its own statistics need {config.min_train_per_class})"
        if n_train < config.min_train_per_class
        else f"{n_validation} real validation image(s) (its own thresholds need "
        f"{config.min_validation_per_class})"
    )
    if n_pooled_validation < config.min_validation_per_class:
        return FilterMode.SKIPPED, (
            f"{short}, and all classes together have only {n_pooled_validation} validation "
            f"image(s) to calibrate on, fewer than {config.min_validation_per_class}"
        )
    return FilterMode.POOLED, (
        f"{short}: borrows the covariance, neighbour distances and spreads of all classes, "
        f"thresholds from {n_pooled_validation} validation images of all classes"
    )


@dataclass(frozen=True)
class CandidateScores:
    """Scores of a run of consecutive candidates for one class (arrays of shape (N,)).

    Attributes:
        class_index: The class the candidates were generated for.
        start_index: Stream position of the first candidate.
        scores: Detector name -> raw scores (higher = more in-distribution).
        percentiles: Detector name -> percentile among real validation images, (0, 1).
        combined: Lowest percentile over detectors, (0, 1).
        copy_check: Memorisation-guard results.
        phashes: (N,) uint64 pHash of each candidate as given (for the duplicate guard).
        class_probability: (N,) the classifier's probability of the class, [0, 1].
    """

    class_index: int
    start_index: int
    scores: dict[str, np.ndarray]
    percentiles: dict[str, np.ndarray]
    combined: np.ndarray
    copy_check: CopyCheck
    phashes: np.ndarray
    class_probability: np.ndarray

    def __len__(self) -> int:
        return int(self.combined.shape[0])

    @staticmethod
    def concatenate(chunks: Sequence[CandidateScores]) -> CandidateScores:
        """Join consecutive chunks of one class into one (only floats, no images)."""
        if not chunks:
            raise ValueError("no candidate scores to concatenate")
        if len({chunk.class_index for chunk in chunks}) != 1:
            raise ValueError("chunks belong to different classes")

        def join(arrays: Iterable[np.ndarray]) -> np.ndarray:
            return np.concatenate(list(arrays))

        names = list(chunks[0].scores)
        checks = [chunk.copy_check for chunk in chunks]
        return CandidateScores(
            class_index=chunks[0].class_index,
            start_index=chunks[0].start_index,
            scores={name: join(chunk.scores[name] for chunk in chunks) for name in names},
            percentiles={name: join(chunk.percentiles[name] for chunk in chunks) for name in names},
            combined=join(chunk.combined for chunk in chunks),
            copy_check=CopyCheck(
                nearest_similarity=join(check.nearest_similarity for check in checks),
                nearest_index=join(check.nearest_index for check in checks),
                similarity_threshold=join(check.similarity_threshold for check in checks),
                phash_distance=join(check.phash_distance for check in checks),
                phash_threshold=checks[0].phash_threshold,
                is_copy=join(check.is_copy for check in checks),
            ),
            phashes=join(chunk.phashes for chunk in chunks),
            class_probability=join(chunk.class_probability for chunk in chunks),
        )


@dataclass
class _ClassReference:
    """Per-class state fitted from real images."""

    calibration: ClassCalibration
    sorted_validation_scores: dict[str, np.ndarray] = field(default_factory=dict)


class OodFilter:
    """A fitted filter; build with :meth:`fit`."""

    def __init__(
        self,
        config: OodFilterConfig,
        detectors: dict[str, Detector],
        guard: MemorisationGuard,
        image_shape: tuple[int, int, int],
        n_logits: int,
        train_counts: dict[int, int],
        validation_counts: dict[int, int],
        references: dict[int, _ClassReference],
        class_names: Sequence[str] | None,
        plans: dict[int, ClassPlan] | None = None,
        class_probability: Detector | None = None,
    ) -> None:
        self.config = config
        self.detectors = detectors
        self.guard = guard
        self.image_shape = image_shape
        self.n_logits = n_logits
        self.train_counts = train_counts
        self.validation_counts = validation_counts
        self.references = references
        self.class_names = list(class_names) if class_names is not None else None
        #: Class index -> how it is filtered, for every output of the classifier.
        self.plans = plans or {}
        #: The classifier's probability of a class, reported with every candidate (and
        #: compared with chance) even when ``class_probability`` is not a detector.
        self.class_probability = class_probability or ClassProbabilityDetector()

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        train: ImageEmbeddings,
        train_labels: np.ndarray,
        validation: ImageEmbeddings,
        validation_labels: np.ndarray,
        config: OodFilterConfig | None = None,
        *,
        class_names: Sequence[str] | None = None,
        validation_groups: Sequence[str] | np.ndarray | None = None,
    ) -> OodFilter:
        """Fit detectors and the copy guard on train, thresholds on validation.

        Args:
            train: Embeddings of the real training images (hashed in all orientations).
            train_labels: (N_train,) int class labels, 0 <= label < number of logits.
            validation: Embeddings of real validation images, same image shape.
            validation_labels: (N_val,) int class labels.
            config: Filter settings; defaults when None.
            class_names: Names by class index, used in messages only.
            validation_groups: Optional (N_val,) patient/lesion id per validation image;
                when given, keep rates are estimated leave-one-patient-out, which is
                what matters when several images share a patient (ISIC, HAM10000).

        Never refuses a class for being small: each class gets the best mode it can
        have (see the module docstring and :attr:`plans`); asking to score a
        ``skipped`` class raises a ValueError with its reason.

        Raises:
            ValueError: Inconsistent inputs (shapes, labels), or no training image at all.
        """
        config = config or OodFilterConfig()
        train_labels = _check_labels(train_labels, len(train), "train")
        validation_labels = _check_labels(validation_labels, len(validation), "validation")
        groups = None if validation_groups is None else np.asarray(validation_groups)
        if groups is not None and groups.shape != validation_labels.shape:
            raise ValueError(
                f"validation_groups must have shape {validation_labels.shape}, got {groups.shape}"
            )
        if train.image_shape != validation.image_shape:
            raise ValueError(
                f"validation images are {validation.image_shape}, training images are "
                f"{train.image_shape}; both must be resampled to the same size and channels"
            )
        if len(train) == 0:
            raise ValueError("the OOD filter needs real training images; got none")
        n_logits = int(train.logits.shape[1])
        for name, labels in (("train", train_labels), ("validation", validation_labels)):
            if len(labels) and (labels.min() < 0 or labels.max() >= n_logits):
                raise ValueError(
                    f"{name} labels must lie in [0, {n_logits}) (the classifier has "
                    f"{n_logits} outputs), got range [{labels.min()}, {labels.max()}]"
                )
        train_counts = _counts(train_labels)
        validation_counts = _counts(validation_labels)
        detectors = {
            name: build_detector(
                name, knn_k=config.knn_k, prior_correction=config.class_prior_correction
            ).fit(train, train_labels)
            for name in config.detectors
        }
        guard = MemorisationGuard(
            percentile=config.copy_similarity_percentile,
            margin=config.copy_similarity_margin,
            max_phash_distance=config.max_phash_distance,
            min_own_images=config.min_train_per_class,
            seed=config.seed,
        ).fit(train.features, train_labels, train.phashes)
        poolable = np.isin(validation_labels, list(train_counts))
        plans: dict[int, ClassPlan] = {}
        for c in range(n_logits):
            mode, reason = plan_class(
                train_counts.get(c, 0), validation_counts.get(c, 0), int(poolable.sum()), config
            )
            plans[c] = ClassPlan(
                c, mode, reason, train_counts.get(c, 0), validation_counts.get(c, 0)
            )
        references: dict[int, _ClassReference] = {}
        for c in (c for c, plan in plans.items() if plan.filter_mode == FilterMode.PER_CLASS):
            members = validation.subset(validation_labels == c)
            raw = {name: detector.score(members, c) for name, detector in detectors.items()}
            class_groups = None if groups is None else groups[validation_labels == c]
            references[c] = _reference(
                raw, config, class_groups, c, train_counts[c], validation_counts[c]
            )
        pooled = [c for c, plan in plans.items() if plan.filter_mode == FilterMode.POOLED]
        if pooled:
            references |= _pooled_references(
                pooled,
                detectors,
                validation,
                validation_labels,
                groups,
                poolable,
                config,
                train_counts,
                validation_counts,
            )
        return cls(
            config,
            detectors,
            guard,
            train.image_shape,
            n_logits,
            train_counts,
            validation_counts,
            references,
            class_names,
            plans,
            detectors.get(OFF_CLASS_DETECTOR)
            or build_detector(
                OFF_CLASS_DETECTOR, prior_correction=config.class_prior_correction
            ).fit(train, train_labels),
        )

    # ----------------------------------------------------------------- lookup
    def class_label(self, class_index: int) -> str:
        """``'DF' (index 5)`` when names are known, else ``index 5``."""
        if self.class_names is not None and 0 <= class_index < len(self.class_names):
            return f"{self.class_names[class_index]!r} (index {class_index})"
        return f"index {class_index}"

    def plan(self, requested: int | str) -> ClassPlan:
        """How a class is filtered (``per_class``, ``pooled`` or ``skipped``) and why.

        Raises:
            ValueError: The class is unknown to the classifier.
        """
        return self.plans[self._class_index(requested)]

    def _class_index(self, requested: int | str) -> int:
        if isinstance(requested, str):
            if self.class_names is None or requested not in self.class_names:
                raise ValueError(
                    f"class {requested!r} is unknown to the feature model; known classes: "
                    f"{self.class_names or list(range(self.n_logits))}"
                )
            class_index = self.class_names.index(requested)
        else:
            class_index = int(requested)
        if not 0 <= class_index < self.n_logits:
            raise ValueError(
                f"class index {class_index} was never seen by the feature model, which has "
                f"{self.n_logits} classes (0..{self.n_logits - 1})"
            )
        return class_index

    def resolve_class(self, requested: int | str) -> int:
        """The class index for a name or index, checked to be filterable.

        Raises:
            ValueError: Unknown to the classifier, or ``skipped`` (the reason says why).
        """
        class_index = self._class_index(requested)
        if class_index not in self.references:
            raise ValueError(
                f"class {self.class_label(class_index)} cannot be filtered: "
                f"{self.plans[class_index].reason}"
            )
        return class_index

    def calibration(self, requested: int | str) -> ClassCalibration:
        """The thresholds in force for a class."""
        return self.references[self.resolve_class(requested)].calibration

    # ----------------------------------------------------------------- scoring
    def score(
        self, candidates: ImageEmbeddings, requested: int | str, *, start_index: int = 0
    ) -> CandidateScores:
        """Score embedded candidates generated for one class.

        Args:
            candidates: Embeddings of the candidates (any number of hash columns).
            requested: Class name or index they were generated for.
            start_index: Stream position of the first candidate (for record indices).
        """
        class_index = self.resolve_class(requested)
        if candidates.image_shape != self.image_shape:
            raise ValueError(
                f"candidates are {candidates.image_shape} (H, W, C) but the filter was fitted "
                f"on {self.image_shape}; resample candidates to the fitted size and channels"
            )
        if candidates.logits.shape[1] != self.n_logits:
            raise ValueError(
                f"candidate logits have {candidates.logits.shape[1]} classes, the fitted "
                f"classifier has {self.n_logits}; use the same feature model"
            )
        reference = self.references[class_index]
        scores = {
            name: detector.score(candidates, class_index)
            for name, detector in self.detectors.items()
        }
        percentiles = {
            name: percentile_scores(reference.sorted_validation_scores[name], values)
            for name, values in scores.items()
        }
        return CandidateScores(
            class_index=class_index,
            start_index=start_index,
            scores=scores,
            percentiles=percentiles,
            combined=combined_score(percentiles),
            copy_check=self.guard.check(candidates.features, candidates.phashes),
            phashes=np.ascontiguousarray(candidates.phashes[:, 0]),
            class_probability=self.class_probability.score(candidates, class_index),
        )

    def score_batches(
        self,
        extractor: FeatureExtractor,
        batches: Iterable[np.ndarray],
        requested: int | str,
        *,
        total: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[CandidateScores]:
        """Embed and score candidate image batches lazily, one chunk per batch.

        Only one batch of images is alive at a time, so memory stays bounded however
        many candidates stream through; record each yielded chunk as it arrives.

        Args:
            extractor: The same feature model the filter was fitted with.
            batches: Iterable of uint8 arrays (n_i, H, W[, C]) at the fitted shape.
            requested: Class name or index the candidates were generated for.
            total: Expected number of candidates, for ``progress`` (0 when unknown).
            progress: ``progress(done, total)`` after each batch.
            should_cancel: Polled before each batch; True raises :class:`OodFilterCanceled`
                (chunks already yielded stay valid).
        """
        self.resolve_class(requested)  # fail before any work on a bad class
        done = 0
        for batch in batches:
            if should_cancel is not None and should_cancel():
                raise OodFilterCanceled(f"canceled after scoring {done} candidates")
            shape = image_shape_of(batch)
            if shape != self.image_shape:
                raise ValueError(
                    f"candidate batch is {shape} (H, W, C) but the filter was fitted on "
                    f"{self.image_shape}; resample candidates to the fitted size and channels"
                )
            embedded = embed_batch(extractor, batch, all_orientations=False)
            yield self.score(embedded, requested, start_index=done)
            done += len(batch)
            if progress is not None:
                progress(done, total or 0)

    # ----------------------------------------------------------------- decisions
    def decide(
        self,
        scored: CandidateScores,
        rule: SelectionRule | None = None,
        *,
        backgrounds: np.ndarray | None = None,
    ) -> FilterOutcome:
        """Keep/reject every scored candidate and record why.

        With the default calibrated rule each chunk can be decided on its own as it is
        scored; ranked rules (keep fraction, target count) and capped ones
        (:meth:`SelectionRule.capped`) rank all candidates of the class, so pass them all
        (joined with :meth:`CandidateScores.concatenate`), or use :meth:`decide_chunks`
        to get the records one chunk at a time. ``backgrounds``: (N,) source image id per
        candidate (< 0 for none), for a rule with ``background_share``.
        """
        rule = rule or SelectionRule.calibrated()
        kept, reasons = self._decisions(scored, rule, backgrounds)
        return self._outcome(scored, rule, kept, reasons)

    def decide_chunks(
        self,
        chunks: Sequence[CandidateScores],
        rule: SelectionRule | None = None,
        *,
        backgrounds: np.ndarray | None = None,
    ) -> Iterator[FilterOutcome]:
        """Decide all chunks of one class together, yielding one outcome per chunk.

        The ranking behind a keep-fraction, target-count or capped rule needs every
        candidate's scores (a few floats each), but the records are built one chunk at a
        time, so 100,000 candidates never hold 100,000 record objects at once.
        """
        rule = rule or SelectionRule.calibrated()
        kept, reasons = self._decisions(CandidateScores.concatenate(chunks), rule, backgrounds)
        offset = 0
        for chunk in chunks:
            rows = slice(offset, offset + len(chunk))
            yield self._outcome(chunk, rule, kept[rows], reasons[rows])
            offset += len(chunk)

    def _decisions(
        self, scored: CandidateScores, rule: SelectionRule, backgrounds: np.ndarray | None
    ) -> tuple[np.ndarray, list[Reason]]:
        thresholds = self.references[scored.class_index].calibration.thresholds
        failed = {name: scored.scores[name] < thresholds[name] for name in scored.scores}
        off_class = failed.get(OFF_CLASS_DETECTOR, np.zeros(len(scored), dtype=bool))
        other = [mask for name, mask in failed.items() if name != OFF_CLASS_DETECTOR]
        ood = np.any(np.stack(other), axis=0) if other else np.zeros(len(scored), dtype=bool)
        return decide(
            rule,
            combined=scored.combined,
            is_copy=scored.copy_check.is_copy,
            off_class=off_class,
            ood=ood,
            phashes=scored.phashes,
            backgrounds=backgrounds,
        )

    def _outcome(
        self,
        scored: CandidateScores,
        rule: SelectionRule,
        kept: np.ndarray,
        reasons: list[Reason],
    ) -> FilterOutcome:
        calibration = self.references[scored.class_index].calibration
        thresholds = calibration.thresholds
        check = scored.copy_check
        names = list(scored.scores)
        chance = 1.0 / self.n_logits
        records = [
            CandidateRecord(
                index=scored.start_index + row,
                class_index=scored.class_index,
                scores={name: float(scored.scores[name][row]) for name in names},
                thresholds={name: thresholds[name] for name in names},
                percentiles={name: float(scored.percentiles[name][row]) for name in names},
                combined_score=float(scored.combined[row]),
                nearest_train_similarity=float(check.nearest_similarity[row]),
                nearest_train_index=int(check.nearest_index[row]),
                copy_similarity_threshold=float(check.similarity_threshold[row]),
                phash_distance=int(check.phash_distance[row]),
                phash_threshold=int(check.phash_threshold),
                kept=bool(kept[row]),
                reason=reasons[row],
                class_probability=float(scored.class_probability[row]),
                below_chance=bool(scored.class_probability[row] < chance),
            )
            for row in range(len(scored))
        ]
        counts = {reason.value: 0 for reason in Reason}
        for reason in reasons:
            counts[reason.value] += 1
        return FilterOutcome(
            class_index=scored.class_index,
            rule=rule.describe(),
            calibration=calibration,
            records=records,
            counts=counts,
        )


def _check_labels(labels: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise ValueError(f"{name} labels must have shape ({n_rows},), got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


def _counts(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


def _reference(
    raw: dict[str, np.ndarray],
    config: OodFilterConfig,
    groups: np.ndarray | None,
    class_index: int,
    n_train: int,
    n_validation: int,
    *,
    filter_mode: FilterMode = FilterMode.PER_CLASS,
    class_offsets: dict[str, float] | None = None,
) -> _ClassReference:
    """Thresholds and percentile references from real scores (M,) per detector."""
    thresholds, level, expected, in_sample = joint_thresholds(raw, config.target_keep_rate, groups)
    return _ClassReference(
        calibration=ClassCalibration(
            class_index=class_index,
            thresholds=thresholds,
            level=level,
            target_keep_rate=config.target_keep_rate,
            expected_keep_rate=expected,
            validation_keep_rate=in_sample,
            n_train=n_train,
            n_validation=n_validation,
            filter_mode=filter_mode.value,
            n_reference=len(next(iter(raw.values()))),
            class_offsets=class_offsets or {},
        ),
        sorted_validation_scores={name: np.sort(values) for name, values in raw.items()},
    )


def _pooled_references(
    classes: list[int],
    detectors: dict[str, Detector],
    validation: ImageEmbeddings,
    validation_labels: np.ndarray,
    groups: np.ndarray | None,
    poolable: np.ndarray,
    config: OodFilterConfig,
    train_counts: dict[int, int],
    validation_counts: dict[int, int],
) -> dict[int, _ClassReference]:
    """References of ``pooled`` classes from the validation images of all classes.

    The pooled set holds up to ``pooled_validation_per_class`` validation images of each
    class that has a training image, each scored against its own class model; a
    count-sensitive detector (KNN) scores it as if each class had the tail class's
    number of training images. Each tail class's reference is that set shifted by its
    shrunken offset (:func:`shrunken_class_offsets`).
    """
    rng = np.random.default_rng(config.seed)
    rows = np.flatnonzero(poolable)
    labels_of_rows = validation_labels[rows]
    chosen = []
    for c in np.unique(labels_of_rows):
        members = rows[labels_of_rows == c]
        if len(members) > config.pooled_validation_per_class:
            members = rng.choice(members, config.pooled_validation_per_class, replace=False)
        chosen.append(np.sort(members))
    pool_rows = np.sort(np.concatenate(chosen))
    pool = validation.subset(pool_rows)
    pool_labels = validation_labels[pool_rows]
    pool_groups = None if groups is None else groups[pool_rows]
    fixed = {
        name: detector.reference_scores(pool, pool_labels)
        for name, detector in detectors.items()
        if not detector.count_sensitive
    }
    by_size: dict[int, dict[str, np.ndarray]] = {}
    references: dict[int, _ClassReference] = {}
    for c in classes:
        n_train = train_counts[c]
        if n_train not in by_size:
            by_size[n_train] = {
                name: detector.reference_scores(
                    pool,
                    pool_labels,
                    reference_size=n_train,
                    rng=np.random.default_rng(config.seed + n_train),
                )
                for name, detector in detectors.items()
                if detector.count_sensitive
            }
        scores = {
            name: fixed[name] if name in fixed else by_size[n_train][name] for name in detectors
        }
        offsets = {
            name: shrunken_class_offsets(values, pool_labels).get(c, 0.0)
            for name, values in scores.items()
        }
        references[c] = _reference(
            {name: values + offsets[name] for name, values in scores.items()},
            config,
            pool_groups,
            c,
            n_train,
            validation_counts.get(c, 0),
            filter_mode=FilterMode.POOLED,
            class_offsets=offsets,
        )
    return references
