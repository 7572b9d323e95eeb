"""The experiment library: folds, synthetic images kept out of held-out data, arms,
pooled metrics with intervals, comparisons and verdicts — tiny timm models on CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import services.trainer.experiments as experiments
from services.trainer.experiments import (
    ArmSpec,
    RealData,
    SyntheticData,
    TrainingPlan,
    plan_folds,
    summarise,
    synthetic_for_run,
    train_run,
)
from tests.trainer.images import CLASS_NAMES, coloured_squares

PLAN = TrainingPlan(
    backbone="test_resnet", image_size=16, epochs=2, min_train_steps=0, batch_size=16, device="cpu"
)


def long_tailed(seed: int = 0) -> RealData:
    """90 red, 45 green, 24 blue images in patients of 3; 60/20/20 split by patient."""
    labels = np.array([0] * 90 + [1] * 45 + [2] * 24)
    images, labels = coloured_squares(len(labels), seed, labels=labels)
    groups = np.array([f"p{i // 3}" for i in range(len(labels))])
    patient = np.array([i // 3 for i in range(len(labels))])
    splits = np.where(patient % 5 < 3, "train", np.where(patient % 5 == 3, "val", "test"))
    return RealData(
        images=images,
        labels=labels,
        groups=groups,
        splits=splits,
        image_ids=np.array([f"img{i}" for i in range(len(labels))]),
        class_names=list(CLASS_NAMES),
    )


def synthetic_for(data: RealData, per_class: int = 20) -> SyntheticData:
    """Synthetic images of every class, each painted into a real image of its class."""
    labels = np.repeat(np.arange(3), per_class)
    images, _ = coloured_squares(len(labels), 99, labels=labels)
    sources = [data.image_ids[data.labels == k][i % 9] for k in range(3) for i in range(per_class)]
    return SyntheticData(
        images=images,
        labels=labels,
        curated_set_ids=np.array(["set-a"] * len(labels)),
        source_image_ids=np.array(sources),
    )


CURATED = ArmSpec(name="curated", kind="curated", curated_set_ids=("set-a",))


def test_dataset_split_fold_holds_out_the_test_split() -> None:
    data = long_tailed()
    (fold,) = plan_folds(data, 0, seed=0)
    assert set(data.splits[fold.train]) == {"train"}
    assert fold.val is not None and set(data.splits[fold.val]) == {"val"}
    assert set(data.splits[fold.held_out]) == {"test"} and fold.test is None


def test_kfold_is_grouped_stratified_and_covers_train_and_val_once() -> None:
    data = long_tailed()
    folds = plan_folds(data, 3, seed=0)
    held = np.concatenate([fold.held_out for fold in folds])
    assert sorted(held.tolist()) == np.flatnonzero(data.splits != "test").tolist()
    for fold in folds:
        assert not set(data.groups[fold.train]) & set(data.groups[fold.held_out])
        assert set(np.unique(data.labels[fold.held_out])) == {0, 1, 2}
        assert fold.val is None and fold.test is not None
        assert set(data.splits[fold.test]) == {"test"}


def test_folds_the_rarest_class_cannot_support_are_refused_by_name() -> None:
    data = long_tailed()
    with pytest.raises(ValueError, match=r"class 'blue' has \d+ patient\(s\)"):
        plan_folds(data, 9, seed=0)
    data.labels[data.splits == "test"] = 0  # no green or blue image left to test on
    with pytest.raises(ValueError, match="green, blue have no image in the test split"):
        plan_folds(data, 0, seed=0)


def test_synthetic_images_never_come_from_held_out_backgrounds_and_respect_caps() -> None:
    data = long_tailed()
    synthetic = synthetic_for(data)
    for fold in plan_folds(data, 3, seed=0):
        index = synthetic_for_run(CURATED, fold, data, synthetic, seed=0)
        not_training = set(data.image_ids[fold.held_out]) | set(data.image_ids[fold.test])
        assert index.size > 0
        assert not set(synthetic.source_image_ids[index]) & not_training
    (fold,) = plan_folds(data, 0, seed=0)
    capped = replace(CURATED, synthetic_ratio_cap=0.5)
    index = synthetic_for_run(capped, fold, data, synthetic, seed=0)
    real = np.bincount(data.labels[fold.train], minlength=3)
    assert (np.bincount(synthetic.labels[index], minlength=3) <= np.floor(0.5 * real)).all()
    total = synthetic_for_run(replace(CURATED, synthetic_total=9), fold, data, synthetic, seed=0)
    assert len(total) <= 9
    baseline = ArmSpec.baseline("weighted_ce")
    assert synthetic_for_run(baseline, fold, data, synthetic, seed=0).size == 0


def test_every_arm_trains_on_training_images_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the arm, the classifier sees the fold's real training images plus the
    allowed synthetic ones — never a validation, held-out or test image."""
    data = long_tailed()
    synthetic = synthetic_for(data)
    seen: list[np.ndarray] = []
    real_train = experiments.train_classifier

    def spy(images: np.ndarray, labels: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen.append(images)
        return real_train(images, labels, *args, **kwargs)

    monkeypatch.setattr(experiments, "train_classifier", spy)
    plan = replace(PLAN, epochs=1)
    arms = [ArmSpec.baseline(name) for name in experiments.BASELINE_ARMS] + [CURATED]
    for fold in plan_folds(data, 0, seed=0) + plan_folds(data, 3, seed=0):
        forbidden = np.concatenate(
            [fold.held_out] + [p for p in (fold.val, fold.test) if p is not None]
        )
        forbidden_bytes = {data.images[i].tobytes() for i in forbidden}
        for arm in arms:
            index = synthetic_for_run(arm, fold, data, synthetic, seed=0)
            result, _ = train_run(arm, fold, 0, plan, data, synthetic, index)
            trained_on = {image.tobytes() for image in seen[-1]}
            assert not trained_on & forbidden_bytes, arm.name
            assert result.train_images == len(fold.train) + len(index)


@pytest.fixture(scope="module")
def finished() -> tuple[list[ArmSpec], list[Any], RealData]:
    data = long_tailed()
    synthetic = synthetic_for(data)
    arms = [ArmSpec.baseline("ce"), ArmSpec.baseline("weighted_ce"), CURATED]
    runs = []
    for fold in plan_folds(data, 0, seed=0):
        for seed in (0, 1):
            for arm in arms:
                index = synthetic_for_run(arm, fold, data, synthetic, seed)
                runs.append(train_run(arm, fold, seed, PLAN, data, synthetic, index)[0])
    return arms, runs, data


def test_summary_reports_every_arm_with_intervals_and_paired_comparisons(
    finished: tuple[list[ArmSpec], list[Any], RealData],
) -> None:
    arms, runs, data = finished
    results = summarise(arms, runs, data, folds=0, seeds=[0, 1], n_resamples=200)
    json.dumps(results, allow_nan=False)  # JSON-ready, no NaN
    assert set(results["arms"]) == {"ce", "weighted_ce", "curated"}
    assert results["protocol"]["evaluated_on"] == "test split"
    assert results["protocol"]["images"] == int((data.splits == "test").sum())
    assert results["best_baseline"] in ("ce", "weighted_ce")
    for name, arm in results["arms"].items():
        summary = arm["metrics"]["summary"]
        for metric in ("balanced_accuracy", "macro_f1", "accuracy", "mcc", "cohen_kappa"):
            interval = summary[metric]
            assert interval["low"] <= interval["estimate"] <= interval["high"], (name, metric)
        for class_name in CLASS_NAMES:
            assert set(arm["metrics"]["per_class"][class_name]) >= {
                "recall",
                "precision",
                "f1",
                "auroc",
            }
        assert len(arm["training"]["runs"]) == 2
        assert arm["classifier_health"]["chance"] == pytest.approx(1 / 3)
    vs_ce = results["arms"]["curated"]["comparisons"]["vs_ce"]
    assert vs_ce["against"] == "ce" and "p_value" in vs_ce["mcnemar"]
    ba = vs_ce["summary"]["balanced_accuracy"]
    assert ba["low"] <= ba["estimate"] <= ba["high"]
    assert vs_ce["better"] == (ba["low"] > 0)
    assert results["arms"]["ce"]["comparisons"]["vs_ce"] is None
    assert any(line.startswith("curated: BA ") for line in results["verdicts"])
    assert any("blue recall" in line for line in results["verdicts"])  # the rarest class


def test_a_classifier_that_learned_nothing_is_flagged(
    finished: tuple[list[ArmSpec], list[Any], RealData],
) -> None:
    arms, runs, data = finished
    constant = []
    for run in runs:
        proba = np.zeros_like(run.held_out_proba)
        proba[:, 0] = 1.0  # always the head class
        constant.append(replace(run, held_out_proba=proba, validation_balanced_accuracy=1 / 3))
    results = summarise(arms, constant, data, folds=0, seeds=[0, 1], n_resamples=100)
    health = results["arms"]["ce"]["classifier_health"]
    assert not health["ok"] and "has not learned" in health["message"]
    assert any(line.startswith("warning: ce:") for line in results["verdicts"])


def test_kfold_pools_held_out_folds_and_scores_every_fold_model_on_test() -> None:
    data = long_tailed()
    synthetic = SyntheticData.empty(24, 3)
    arms = [ArmSpec.baseline("ce"), ArmSpec.baseline("logit_adjusted")]
    folds = plan_folds(data, 3, seed=0)
    plan = replace(PLAN, epochs=1)
    runs = [
        train_run(arm, fold, 0, plan, data, synthetic, np.zeros(0, dtype=np.int64))[0]
        for arm in arms
        for fold in folds
    ]
    results = summarise(arms, runs, data, folds=3, seeds=[0], n_resamples=100)
    assert results["protocol"]["evaluated_on"] == "held-out folds"
    assert results["protocol"]["images"] == int((data.splits != "test").sum())
    test_metrics = results["arms"]["logit_adjusted"]["test_metrics"]
    assert test_metrics is not None and test_metrics["images"] == int((data.splits == "test").sum())
