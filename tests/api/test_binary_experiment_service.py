"""Service tier for the binary grayscale case (chest X-ray, after Rajaraman et al. 2024): a
normal-vs-opacity demo set stored as 1-channel images, a tiny generator trained on it,
img2img opacity candidates filtered into a curated set of grayscale PNGs, and an
experiment whose arms are scored with the binary figures (sensitivity, specificity,
Youden's J, MCC, kappa) on the real test images only — real Postgres, Redis, an S3
server and a real Celery worker process."""

from __future__ import annotations

import io
import math
import uuid
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from shared.imaging import SYNTHETIC_KEY, read_png_text
from shared.models import RealImage, Split, SyntheticImage
from shared.storage import make_store
from tests.api.test_experiment_service import TINY_EXPERIMENT
from tests.api.test_synthesis_service import TINY_FILTER, TINY_PROBE, TINY_TRAINING
from tests.conftest import ApiHarness, _harness

pytestmark = pytest.mark.service

TOTAL = 300
POSITIVE_FRACTION = 0.2
OPACITIES = round(TOTAL * POSITIVE_FRACTION)  # 60 opacity, 240 normal
BINARY_METRICS = (
    "sensitivity",
    "specificity",
    "youden_index",
    "mcc",
    "cohen_kappa",
    "balanced_accuracy",
)


@pytest.fixture(scope="module")
def api(service_settings, service_worker) -> Iterator[ApiHarness]:  # type: ignore[no-untyped-def]
    yield from _harness(service_settings)


@pytest.fixture(scope="module")
def dataset_id(api: ApiHarness) -> str:
    created = api.client.post(
        "/v1/datasets/demo",
        json={
            "name": "cxr",
            "variant": "chest_xray",
            "total": TOTAL,
            "image_size": 32,
            "positive_fraction": POSITIVE_FRACTION,
        },
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] == "succeeded", job
    return str(created.json()["dataset_id"])


@pytest.fixture(scope="module")
def generator_id(api: ApiHarness, dataset_id: str) -> str:
    created = api.client.post(
        "/v1/generators",
        json={
            "dataset_id": dataset_id,
            "training": {**TINY_TRAINING, "modes": ["img2img"]},
            "quality_probe": {**TINY_PROBE, "enabled": False},
        },
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] == "succeeded", job
    return str(created.json()["generator_id"])


@pytest.fixture(scope="module")
def curated_set_id(api: ApiHarness, dataset_id: str, generator_id: str) -> str:
    created = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "counts": {"opacity": 8},
            "mode": "img2img",
            # Two steps at strength 0.6 would run round(2 x 0.6) = 1 step from the last
            # timestep: the source image back, which the copy guard rejects every time.
            # Four steps run two from mid-schedule. The tiny generator's images are off
            # class, so keep the best half of the non-copies (no thresholds) instead.
            "sampling": {"num_inference_steps": 4, "strength": 0.6, "batch_size": 8},
            "filter": {
                **TINY_FILTER,
                "target_keep_rate": 0.99,
                "rule": "keep_fraction",
                "keep_fraction": 0.5,
            },
            "seed": 11,
        },
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] in ("succeeded", "partial"), job
    return str(created.json()["curated_set_id"])


def test_chest_xray_demo_is_binary_grayscale_and_imbalanced_as_asked(
    api: ApiHarness, dataset_id: str
) -> None:
    dataset = api.client.get(f"/v1/datasets/{dataset_id}").json()
    assert dataset["state"] == "ready", dataset
    assert dataset["class_names"] == ["normal", "opacity"]
    assert dataset["class_counts"] == {"normal": TOTAL - OPACITIES, "opacity": OPACITIES}
    assert dataset["imbalance_ratio"] == pytest.approx((TOTAL - OPACITIES) / OPACITIES)
    for split in ("train", "val", "test"):
        assert dataset["split_counts"][split]["opacity"] >= 1, dataset["split_counts"]
    channels = api.rows(
        select(RealImage.channels).where(RealImage.dataset_id == uuid.UUID(dataset_id)).distinct(),
    )
    assert {value for (value,) in channels} == {1}


def test_img2img_opacities_are_kept_as_grayscale_pngs(
    api: ApiHarness, generator_id: str, curated_set_id: str
) -> None:
    generator = api.client.get(f"/v1/generators/{generator_id}").json()
    assert generator["state"] == "ready"

    curated = api.client.get(f"/v1/curated-sets/{curated_set_id}").json()
    assert curated["state"] == "ready"
    assert set(curated["summary"]) == {"opacity"}
    entry = curated["summary"]["opacity"]
    assert entry["requested"] == 8 and entry["generated"] == 12  # oversample 1.5
    assert entry["kept"] + sum(entry["rejected"].values()) == entry["generated"]

    candidates = api.rows(
        select(
            SyntheticImage.mode,
            SyntheticImage.strength,
            SyntheticImage.object_key,
            SyntheticImage.decision,
            RealImage.split,
        )
        .join(RealImage, RealImage.id == SyntheticImage.source_image_id)
        .where(SyntheticImage.synthesis_id == uuid.UUID(curated["synthesis_id"])),
    )
    assert len(candidates) == 12  # every img2img candidate repaints a real train image
    assert {(mode, split) for mode, _, _, _, split in candidates} == {("img2img", Split.TRAIN)}
    assert all(strength == pytest.approx(0.6) for _, strength, _, _, _ in candidates)
    assert sum(decision == "kept" for *_, decision, _ in candidates) == entry["kept"] > 0
    store = make_store(api.settings)
    for _, _, key, _, _ in candidates:  # kept or not, every candidate is 1-channel
        with Image.open(io.BytesIO(store.get_bytes(key))) as image:
            assert image.mode == "L" and image.size == (32, 32), (key, image.mode, image.size)

    archive = api.client.get(f"/v1/curated-sets/{curated_set_id}/archive")
    assert archive.status_code == 200, archive.text
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        pngs = [name for name in zipped.namelist() if name.endswith(".png")]
        assert len(pngs) == entry["kept"]
        for name in pngs:
            assert name.startswith("opacity/")
            data = zipped.read(name)
            assert read_png_text(data)[SYNTHETIC_KEY] == "true"
            with Image.open(io.BytesIO(data)) as image:
                assert image.mode == "L", (name, image.mode)
                assert np.asarray(image).shape == (32, 32)


def test_binary_experiment_reports_sensitivity_specificity_and_paired_gains(
    api: ApiHarness, dataset_id: str, curated_set_id: str
) -> None:
    created = api.client.post(
        "/v1/experiments",
        json={
            "dataset_id": dataset_id,
            "arms": [
                "weighted_ce",
                "logit_adjusted",
                {"curated_set_ids": [curated_set_id]},
                {"curated_set_ids": [curated_set_id], "loss": "logit_adjusted"},
            ],
            **TINY_EXPERIMENT,
            "seeds": 2,
        },
    )
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["arms"] == [
        "ce",
        "weighted_ce",
        "logit_adjusted",
        "curated",
        "curated+logit_adjusted",
    ]
    job = api.wait_job(body["job_id"], timeout=900)
    assert job["state"] == "succeeded", job

    experiment = api.client.get(f"/v1/experiments/{body['experiment_id']}").json()
    assert experiment["state"] == "succeeded"
    results = experiment["results"]
    task = results["task"]
    assert task["binary"] is True and task["positive_class"] == "opacity"
    assert task["class_names"] == ["normal", "opacity"]
    assert len(results["protocol"]["seeds"]) == 2 and results["protocol"]["folds"] == 0
    assert set(results["arms"]) == set(body["arms"])

    for name, arm in results["arms"].items():
        summary = arm["metrics"]["summary"]
        for metric in BINARY_METRICS:
            interval = summary[metric]
            assert interval["low"] <= interval["estimate"] <= interval["high"], (name, metric)
        assert summary["youden_index"]["estimate"] == pytest.approx(
            summary["sensitivity"]["estimate"] + summary["specificity"]["estimate"] - 1.0,
            abs=1e-9,
        )
        assert 0.0 <= summary["sensitivity"]["estimate"] <= 1.0
        assert 0.0 <= summary["specificity"]["estimate"] <= 1.0
        assert len(arm["training"]["runs"]) == 2  # one per seed
        if name == "ce":
            assert arm["comparisons"]["vs_ce"] is None
            continue
        vs_ce = arm["comparisons"]["vs_ce"]
        assert vs_ce is not None and vs_ce["against"] == "ce", name
        for metric in BINARY_METRICS:
            difference = vs_ce["summary"][metric]
            assert difference["low"] <= difference["high"], (name, metric)
            assert all(math.isfinite(difference[key]) for key in ("estimate", "low", "high"))
            assert 0.0 <= difference["p_value"] <= 1.0, (name, metric)
        assert 0.0 <= vs_ce["mcnemar"]["p_value"] <= 1.0, name

    for name in ("curated", "curated+logit_adjusted"):
        lines = [line for line in results["verdicts"] if line.startswith(f"{name}: ")]
        assert len(lines) == 1, results["verdicts"]
        assert "sensitivity" in lines[0] and "specificity" in lines[0], lines[0]

    # Synthetic images entered training only: every arm scored exactly the real test
    # images, and no kept image was painted from a real test image.
    test_images = api.rows(
        select(RealImage.id).where(
            RealImage.dataset_id == uuid.UUID(dataset_id), RealImage.split == Split.TEST
        ),
    )
    assert results["protocol"]["images"] == len(test_images)
    for name, arm in results["arms"].items():
        assert arm["metrics"]["images"] == len(test_images), name
    kept = api.rows(
        select(SyntheticImage.source_image_id).where(
            SyntheticImage.curated_set_id == uuid.UUID(curated_set_id)
        ),
    )
    assert not {source for (source,) in kept} & {image for (image,) in test_images}
    train_count = len(
        api.rows(
            select(RealImage.id).where(
                RealImage.dataset_id == uuid.UUID(dataset_id), RealImage.split == Split.TRAIN
            ),
        )
    )
    for name, arm in results["arms"].items():
        for run in arm["training"]["runs"]:
            added = sum(run["synthetic_images"].values())
            assert set(run["synthetic_images"]) <= {"opacity"}
            assert run["train_images"] == train_count + added
            # Every kept image repaints a train image, so none is left out of training.
            assert added == (len(kept) if name.startswith("curated") else 0), (name, run)

    report = api.client.get(experiment["report_url"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<svg" in report.text and "curated+logit_adjusted" in report.text
