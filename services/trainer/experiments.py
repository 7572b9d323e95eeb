"""Experiments: does a curated synthetic set help a classifier on real held-out images?

An experiment trains one timm classifier per *arm* x fold x seed, all arms on the same
splits, seeds and augmentation, and scores every model on real held-out images only:

- ``folds = 0``: the dataset's own split — train on **train**, select the best epoch on
  **val**, score on **test**.
- ``folds = k``: patient-grouped stratified k-fold over train + val (the inpainting
  paper's 5-fold protocol): each fold's model is scored on its held-out part (pooled
  over folds, every real image is scored once per seed), and also on the untouched
  **test** split. No epoch is selected on held-out images: models train to their budget.

Arms are the non-generative long-tail baselines (:data:`BASELINE_ARMS`) and ``curated``
arms (real + curated synthetic images, capped per class at ``synthetic_ratio_cap``
synthetic images per real one, with any of the baseline losses). Synthetic images enter
training folds only; one whose real background image is held out in a fold is left out
of that fold, so no held-out image reaches training through its background.

Nothing here touches the database, Celery or storage: inputs are arrays, outputs are
:class:`RunResult` records and the JSON-ready summary of :func:`summarise`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from services.trainer.classifier import (
    ClassifierConfig,
    ImageClassifier,
    LossName,
    train_classifier,
)
from services.trainer.health import classifier_health
from services.trainer.metrics import (
    bootstrap_intervals,
    ensemble_predictions,
    mcnemar_exact,
    paired_bootstrap_difference,
    pooled_report,
)
from shared.experiments import BASELINE_ARMS, REFERENCE_ARM

ArmKind = Literal["baseline", "curated", "adaptive"]
# A classifier is called "learned something" at twice chance, capped at a quarter of the
# way from chance to perfect (so a binary task's bar is 0.625, not an impossible 1.0).
HEALTH_FACTOR = 2.0
HEALTH_CAP_SHARE = 0.25


@dataclass(frozen=True)
class ArmSpec:
    """One arm of an experiment.

    Attributes:
        name: unique within the experiment, e.g. "weighted_ce" or "curated+logit_adjusted".
        kind: "baseline" (real images only), "curated" (real + curated synthetic sets) or
            "adaptive" (IOIS rounds; synthetic images made while it trains).
        loss: training loss (see :class:`ClassifierConfig`).
        balanced_sampling: draw every class equally often.
        curated_set_ids: curated sets whose kept images join training ("curated").
        synthetic_ratio_cap: at most this many synthetic images per real training image
            of the same class (> 0; None = no cap).
        synthetic_total: at most this many synthetic images in all, taken from every class
            in proportion (to compare arms at equal synthetic totals; None = no limit).
        match_adaptive: set ``synthetic_total`` to what the experiment's adaptive arm
            added, so offline fill-to-max and IOIS rounds compare at equal totals.
    """

    name: str
    kind: ArmKind = "baseline"
    loss: LossName = "ce"
    balanced_sampling: bool = False
    curated_set_ids: tuple[str, ...] = ()
    synthetic_ratio_cap: float | None = None
    synthetic_total: int | None = None
    match_adaptive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "loss": self.loss,
            "balanced_sampling": self.balanced_sampling,
            "curated_set_ids": list(self.curated_set_ids),
            "synthetic_ratio_cap": self.synthetic_ratio_cap,
            "synthetic_total": self.synthetic_total,
            "match_adaptive": self.match_adaptive,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ArmSpec:
        return cls(**{**values, "curated_set_ids": tuple(values.get("curated_set_ids", ()))})

    @classmethod
    def baseline(cls, name: str) -> ArmSpec:
        loss, balanced = BASELINE_ARMS[name]
        return cls(
            name=name, kind="baseline", loss=cast(LossName, loss), balanced_sampling=balanced
        )


@dataclass(frozen=True)
class TrainingPlan:
    """How every classifier of an experiment is trained (the same for all arms)."""

    backbone: str = "resnet10t"
    image_size: int = 64
    in_chans: int = 3
    epochs: int = 10
    min_train_steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    vertical_flip: bool = True
    device: str = "auto"

    def classifier_config(self, arm: ArmSpec, seed: int, *, keep_best: bool) -> ClassifierConfig:
        return ClassifierConfig(
            backbone=self.backbone,
            image_size=self.image_size,
            in_chans=self.in_chans,
            epochs=self.epochs,
            min_train_steps=self.min_train_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            device=self.device,
            loss=arm.loss,
            balanced_sampling=arm.balanced_sampling,
            vertical_flip=self.vertical_flip,
            keep_best=keep_best,
        )


@dataclass
class RealData:
    """The dataset's real images, all splits, resampled to one size.

    ``images`` uint8 (N, S, S, C); ``labels`` (N,) int64 into ``class_names``; ``groups``
    patient ids (N,); ``splits`` (N,) "train" | "val" | "test"; ``image_ids`` (N,) str.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    splits: np.ndarray
    image_ids: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SyntheticData:
    """Kept synthetic images of the curated sets an experiment uses.

    ``images`` uint8 (M, S, S, C); ``labels`` (M,) int64; ``curated_set_ids`` (M,) str;
    ``source_image_ids`` (M,) str, "" when the image has no real background (generate mode).
    """

    images: np.ndarray
    labels: np.ndarray
    curated_set_ids: np.ndarray
    source_image_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, size: int, channels: int) -> SyntheticData:
        return cls(
            images=np.zeros((0, size, size, channels), dtype=np.uint8),
            labels=np.zeros(0, dtype=np.int64),
            curated_set_ids=np.zeros(0, dtype=str),
            source_image_ids=np.zeros(0, dtype=str),
        )


@dataclass(frozen=True)
class Fold:
    """Index arrays into :class:`RealData`: ``train`` (fits), ``val`` (epoch selection, or
    None), ``held_out`` (scored and pooled), ``test`` (also scored, k-fold only, or None)."""

    index: int
    train: np.ndarray
    val: np.ndarray | None
    held_out: np.ndarray
    test: np.ndarray | None


@dataclass
class RunResult:
    """One trained classifier: arm x fold x seed, scored on its held-out (and test) images.

    ``held_out_proba`` float32 (len(held_out_index), K) softmax probabilities, rows in the
    order of ``held_out_index`` (indices into :class:`RealData`); likewise for test.
    """

    arm: str
    fold: int
    seed: int
    held_out_index: np.ndarray
    held_out_proba: np.ndarray
    test_index: np.ndarray | None
    test_proba: np.ndarray | None
    epochs: list[dict[str, Any]]
    seconds: float
    images_per_second: float
    train_images: int
    synthetic_images: dict[str, int] = field(default_factory=dict)
    validation_balanced_accuracy: float | None = None

    @property
    def key(self) -> str:
        return run_key(self.arm, self.fold, self.seed)

    def meta(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready (stored with the experiment)."""
        return {
            "arm": self.arm,
            "fold": self.fold,
            "seed": self.seed,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "train_images": self.train_images,
            "synthetic_images": self.synthetic_images,
            "validation_balanced_accuracy": self.validation_balanced_accuracy,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"held_out_index": self.held_out_index, "held_out_proba": self.held_out_proba}
        if self.test_index is not None and self.test_proba is not None:
            arrays |= {"test_index": self.test_index, "test_proba": self.test_proba}
        return arrays

    @classmethod
    def restore(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> RunResult:
        return cls(
            **meta,
            held_out_index=arrays["held_out_index"],
            held_out_proba=arrays["held_out_proba"],
            test_index=arrays.get("test_index"),
            test_proba=arrays.get("test_proba"),
        )


def run_key(arm: str, fold: int, seed: int) -> str:
    return f"{arm}/fold{fold}/seed{seed}"


# --------------------------------------------------------------------------- splits


def plan_folds(data: RealData, folds: int, seed: int) -> list[Fold]:
    """The folds every arm shares.

    Raises:
        ValueError: a class missing from the held-out images (which class), or a class
            with fewer patients than ``folds`` in train + val (which class, how many).
    """
    names = data.class_names
    if folds == 0:
        train = np.flatnonzero(data.splits == "train")
        val = np.flatnonzero(data.splits == "val")
        test = np.flatnonzero(data.splits == "test")
        _require_every_class(data, test, "the test split")
        _require_every_class(data, train, "the train split")
        return [Fold(0, train, val if len(val) else None, test, None)]
    if folds < 2:
        raise ValueError(f"folds must be 0 (the dataset's split) or at least 2, got {folds}")
    pool = np.flatnonzero(data.splits != "test")
    test = np.flatnonzero(data.splits == "test")
    for k, name in enumerate(names):
        patients = len(set(data.groups[pool][data.labels[pool] == k]))
        if patients < folds:
            raise ValueError(
                f"class {name!r} has {patients} patient(s) in train + val; "
                f"{folds}-fold cross-validation needs at least {folds}"
            )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = []
    for index, (train_part, held_part) in enumerate(
        splitter.split(np.zeros(len(pool)), data.labels[pool], data.groups[pool])
    ):
        held_out = pool[held_part]
        _require_every_class(data, held_out, f"held-out fold {index}")
        result.append(Fold(index, pool[train_part], None, held_out, test if len(test) else None))
    return result


def _require_every_class(data: RealData, index: np.ndarray, where: str) -> None:
    present = set(np.unique(data.labels[index]).tolist())
    missing = [name for k, name in enumerate(data.class_names) if k not in present]
    if missing:
        raise ValueError(f"class(es) {', '.join(missing)} have no image in {where}")


# --------------------------------------------------------------------------- synthetic


def synthetic_for_run(
    arm: ArmSpec, fold: Fold, data: RealData, synthetic: SyntheticData, seed: int
) -> np.ndarray:
    """Indices into ``synthetic`` that join this arm's training in this fold.

    Only the arm's curated sets; never an image painted into a real image that is
    held out, used for validation or tested in this fold; at most
    ``synthetic_ratio_cap`` x (real training images of the class) per class and
    ``synthetic_total`` in all (taken in proportion per class). Which images survive a
    cap is a seeded draw, the same for every arm with the same seed.
    """
    if not arm.curated_set_ids or len(synthetic) == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.isin(synthetic.curated_set_ids, np.array(arm.curated_set_ids, dtype=str))
    not_training = [fold.held_out] + [part for part in (fold.val, fold.test) if part is not None]
    excluded = set(data.image_ids[np.concatenate(not_training)].tolist())
    chosen &= ~np.isin(synthetic.source_image_ids, np.array(sorted(excluded), dtype=str))
    rng = np.random.default_rng([seed, fold.index, 7])
    real_counts = np.bincount(data.labels[fold.train], minlength=len(data.class_names))
    picked: list[np.ndarray] = []
    for k in range(len(data.class_names)):
        members = np.flatnonzero(chosen & (synthetic.labels == k))
        members = members[rng.permutation(len(members))]
        if arm.synthetic_ratio_cap is not None:
            members = members[: int(math.floor(arm.synthetic_ratio_cap * real_counts[k]))]
        picked.append(members)
    if arm.synthetic_total is not None:
        available = sum(len(members) for members in picked)
        if available > arm.synthetic_total:
            share = arm.synthetic_total / available
            picked = [members[: int(math.floor(len(members) * share))] for members in picked]
    return np.sort(np.concatenate(picked)).astype(np.int64)


# --------------------------------------------------------------------------- training


def train_run(
    arm: ArmSpec,
    fold: Fold,
    seed: int,
    plan: TrainingPlan,
    data: RealData,
    synthetic: SyntheticData,
    synthetic_index: np.ndarray,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    pretrained_path: str | None = None,
) -> tuple[RunResult, ImageClassifier]:
    """Train one classifier on the fold's real training images plus the given synthetic
    ones, and score it on the fold's held-out (and test) images.

    ``pretrained_path`` continues from an earlier classifier (adaptive rounds).
    Raises :class:`~services.trainer.classifier.TrainingCanceled` when cancelled.
    """
    images = np.concatenate([data.images[fold.train], synthetic.images[synthetic_index]])
    labels = np.concatenate([data.labels[fold.train], synthetic.labels[synthetic_index]])
    config = plan.classifier_config(arm, seed, keep_best=fold.val is not None)
    if pretrained_path is not None:
        config = ClassifierConfig.from_dict(
            {**config.to_dict(), "pretrained_path": pretrained_path}
        )
    started = time.perf_counter()
    classifier = train_classifier(
        images,
        labels,
        data.class_names,
        config,
        val_images=data.images[fold.val] if fold.val is not None else None,
        val_labels=data.labels[fold.val] if fold.val is not None else None,
        progress=progress,
        should_cancel=should_cancel,
    )
    seconds = time.perf_counter() - started
    history = classifier.history
    best = history.epochs[history.best_epoch - 1] if history.best_epoch else None
    counts = np.bincount(synthetic.labels[synthetic_index], minlength=len(data.class_names))
    result = RunResult(
        arm=arm.name,
        fold=fold.index,
        seed=seed,
        held_out_index=fold.held_out,
        held_out_proba=classifier.predict_proba(data.images[fold.held_out]),
        test_index=fold.test,
        test_proba=(
            classifier.predict_proba(data.images[fold.test]) if fold.test is not None else None
        ),
        epochs=[
            {
                "epoch": record.epoch,
                "train_loss": record.train_loss,
                "val_balanced_accuracy": record.val_balanced_accuracy,
            }
            for record in history.epochs
        ],
        seconds=seconds,
        images_per_second=history.images_per_second,
        train_images=len(labels),
        synthetic_images={
            name: int(counts[k]) for k, name in enumerate(data.class_names) if counts[k]
        },
        validation_balanced_accuracy=best.val_balanced_accuracy if best else None,
    )
    return result, classifier


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Scored:
    """Predictions of one arm on a set of real images: (N,) true labels, (N, S, K) probabilities."""

    y_true: np.ndarray
    proba: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        """(N, S) predicted class per image and run."""
        return self.proba.argmax(axis=2)


def gather(runs: Sequence[RunResult], data: RealData, *, test: bool) -> Scored | None:
    """Stack an arm's runs into one (N, S, K) array over the images they scored.

    Held-out: each image is scored by exactly one fold per seed, so S = seeds. Test:
    every fold's model scores every test image, so S = folds x seeds.
    """
    if test:
        tested = [r for r in runs if r.test_index is not None and r.test_proba is not None]
        if not tested:
            return None
        stacked = np.stack([cast(np.ndarray, r.test_proba) for r in tested], axis=1)
        return Scored(
            data.labels[cast(np.ndarray, tested[0].test_index)], stacked.astype(np.float32)
        )
    by_seed: dict[int, list[RunResult]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, []).append(run)
    columns = []
    index: np.ndarray | None = None
    for seed in sorted(by_seed):
        seed_runs = sorted(by_seed[seed], key=lambda r: r.fold)
        seed_index = np.concatenate([r.held_out_index for r in seed_runs])
        order = np.argsort(seed_index, kind="stable")
        if index is None:
            index = seed_index[order]
        elif not np.array_equal(index, seed_index[order]):
            raise ValueError("runs of one arm scored different held-out images")
        columns.append(np.concatenate([r.held_out_proba for r in seed_runs])[order])
    assert index is not None
    return Scored(data.labels[index], np.stack(columns, axis=1).astype(np.float32))


def arm_health(
    runs: Sequence[RunResult], scored: Scored, class_names: Sequence[str]
) -> dict[str, Any]:
    """The arm's own balanced accuracy on real validation images (held-out ones in k-fold,
    where no validation split exists) against the bar of :mod:`.health`."""
    validation = [r.validation_balanced_accuracy for r in runs]
    if all(value is not None for value in validation):
        value = float(np.mean([v for v in validation if v is not None]))
        return classifier_health(value, len(class_names), "validation split")
    report = pooled_report(scored.y_true, scored.predictions, class_names)
    return classifier_health(report.balanced_accuracy, len(class_names), "held-out images")


def arm_metrics(
    scored: Scored, class_names: Sequence[str], *, n_resamples: int, seed: int
) -> dict[str, Any]:
    intervals = bootstrap_intervals(
        scored.y_true,
        scored.predictions,
        class_names,
        proba=scored.proba,
        n_resamples=n_resamples,
        seed=seed,
    ).to_dict()
    report = pooled_report(scored.y_true, scored.predictions, class_names)
    return {
        "summary": intervals["summary"],
        "per_class": intervals["per_class"],
        "confusion_matrix": report.confusion_matrix,
        "images": int(len(scored.y_true)),
    }


def compare(
    reference: str,
    ref: Scored,
    arm: Scored,
    class_names: Sequence[str],
    *,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Paired bootstrap of (arm - reference) on the same images and McNemar's exact test
    on their seed-ensemble predictions; "better" only when the balanced-accuracy
    interval excludes zero on the positive side."""
    paired = paired_bootstrap_difference(
        ref.y_true,
        ref.predictions,
        arm.predictions,
        class_names,
        proba_a=ref.proba,
        proba_b=arm.proba,
        n_resamples=n_resamples,
        seed=seed,
    ).to_dict()
    mcnemar = mcnemar_exact(
        ref.y_true, ensemble_predictions(ref.proba), ensemble_predictions(arm.proba)
    )
    ba = paired["summary"]["balanced_accuracy"]
    return {
        "against": reference,
        "summary": paired["summary"],
        "per_class": {
            name: {"recall": values["recall"]} for name, values in paired["per_class"].items()
        },
        "mcnemar": {"a_only": mcnemar.a_only, "b_only": mcnemar.b_only, "p_value": mcnemar.p_value},
        "better": ba["low"] > 0,
        "worse": ba["high"] < 0,
    }


def verdict_line(
    arm: str, comparison: dict[str, Any], rare_classes: Sequence[str], *, binary: bool
) -> str:
    """'curated: BA +4.1 pts [+1.2, +7.0] over weighted_ce (better); DF recall +22 pts [...]'."""
    ba = comparison["summary"]["balanced_accuracy"]
    word = (
        "better"
        if comparison["better"]
        else "worse"
        if comparison["worse"]
        else "no clear difference"
    )
    parts = [
        f"{arm}: BA {_pts(ba['estimate'])} pts [{_pts(ba['low'])}, {_pts(ba['high'])}] "
        f"over {comparison['against']} ({word})"
    ]
    named = (
        [(name, comparison["summary"][name]) for name in ("sensitivity", "specificity")]
        if binary
        else [(f"{name} recall", comparison["per_class"][name]["recall"]) for name in rare_classes]
    )
    for label, value in named:
        parts.append(
            f"{label} {_pts(value['estimate'])} pts [{_pts(value['low'])}, {_pts(value['high'])}]"
        )
    parts.append(f"McNemar p = {comparison['mcnemar']['p_value']:.3g}")
    return "; ".join(parts)


def _pts(value: float) -> str:
    return f"{100.0 * value:+.1f}"


def summarise(
    arms: Sequence[ArmSpec],
    runs: Sequence[RunResult],
    data: RealData,
    *,
    folds: int,
    seeds: Sequence[int],
    n_resamples: int = 1_000,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """Per-arm pooled metrics with intervals, comparisons and verdicts (the report's JSON).

    Every arm is compared with ``ce`` and with the best non-generative arm (by pooled
    balanced accuracy); each baseline's verdict is against ``ce``, each synthetic arm's
    against the best baseline.
    """
    names = data.class_names
    binary = len(names) == 2
    train_counts = np.bincount(data.labels[data.splits != "test"], minlength=len(names))
    rare = [names[k] for k in np.argsort(train_counts, kind="stable")[:2]]
    by_arm = {arm.name: [r for r in runs if r.arm == arm.name] for arm in arms}
    held = {name: gather(arm_runs, data, test=False) for name, arm_runs in by_arm.items()}
    tested = {name: gather(arm_runs, data, test=True) for name, arm_runs in by_arm.items()}

    results: dict[str, Any] = {"arms": {}}
    for arm in arms:
        scored = held[arm.name]
        assert scored is not None
        test_scored = tested[arm.name]
        results["arms"][arm.name] = {
            "spec": arm.to_dict(),
            "metrics": arm_metrics(scored, names, n_resamples=n_resamples, seed=bootstrap_seed),
            "test_metrics": (
                arm_metrics(test_scored, names, n_resamples=n_resamples, seed=bootstrap_seed)
                if test_scored is not None
                else None
            ),
            "training": {
                "runs": [
                    {
                        key: run.meta()[key]
                        for key in ("fold", "seed", "epochs", "seconds", "images_per_second")
                    }
                    | {"synthetic_images": run.synthetic_images, "train_images": run.train_images}
                    for run in sorted(by_arm[arm.name], key=lambda r: (r.fold, r.seed))
                ]
            },
            "classifier_health": arm_health(by_arm[arm.name], scored, names),
            "comparisons": {"vs_ce": None, "vs_best_baseline": None},
        }

    baselines = [arm.name for arm in arms if arm.kind == "baseline"]
    best = max(
        baselines,
        key=lambda name: results["arms"][name]["metrics"]["summary"]["balanced_accuracy"][
            "estimate"
        ],
        default=None,
    )
    verdicts = []
    for arm in arms:
        entry = results["arms"][arm.name]
        held_arm = held[arm.name]
        assert held_arm is not None
        for slot, reference in (("vs_ce", REFERENCE_ARM), ("vs_best_baseline", best)):
            ref_scored = held.get(reference) if reference else None
            if reference is None or reference == arm.name or ref_scored is None:
                continue
            entry["comparisons"][slot] = compare(
                reference, ref_scored, held_arm, names, n_resamples=n_resamples, seed=bootstrap_seed
            )
        chosen = "vs_ce" if arm.kind == "baseline" else "vs_best_baseline"
        comparison = entry["comparisons"][chosen] or entry["comparisons"]["vs_ce"]
        if comparison is not None:
            verdicts.append(verdict_line(arm.name, comparison, rare, binary=binary))
        if not entry["classifier_health"]["ok"]:
            verdicts.append(f"warning: {arm.name}: {entry['classifier_health']['message']}")

    results |= {
        "task": {
            "class_names": list(names),
            "binary": binary,
            # Binary metrics take index 1 as the positive class (e.g. "opacity").
            "positive_class": names[1] if binary else None,
            "train_class_counts": {name: int(train_counts[k]) for k, name in enumerate(names)},
            "rarest_classes": rare,
            "chance": 1.0 / len(names),
        },
        "protocol": {
            "folds": folds,
            "seeds": list(seeds),
            "evaluated_on": "held-out folds" if folds else "test split",
            "images": int(len(held[arms[0].name].y_true)),  # type: ignore[union-attr]
            "bootstrap": {"resamples": n_resamples, "confidence": 0.95, "seed": bootstrap_seed},
        },
        "best_baseline": best,
        "verdicts": verdicts,
    }
    return results
