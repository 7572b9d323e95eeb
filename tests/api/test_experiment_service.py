"""Service tier for experiments: arms trained and scored by a real Celery worker on real
Postgres, Redis and an S3 server; bad requests refused before any job; a killed trainer
resumes without re-training what it recorded; IOIS rounds through the real generator and
filter workers."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from shared.models import Experiment, Job, RealImage, Split, SynthesisRequest, SyntheticImage
from tests.api.test_synthesis_service import TINY_FILTER, TINY_PROBE, TINY_TRAINING
from tests.conftest import ApiHarness, _harness
from tests.fixtures.archives import manifest_files, pick_samples, write_zip
from tests.fixtures.services import ManagedProcess, start_worker, wait_for

pytestmark = pytest.mark.service

TINY_EXPERIMENT = {
    "backbone": "test_resnet",
    "image_size": 32,
    "epochs": 1,
    "min_train_steps": 0,
    "batch_size": 16,
    "n_resamples": 200,
}


@pytest.fixture(scope="module")
def api(service_settings, service_worker) -> Iterator[ApiHarness]:  # type: ignore[no-untyped-def]
    yield from _harness(service_settings)


@pytest.fixture(scope="module")
def dataset_id(api: ApiHarness, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three classes (72 NV, 36 MEL, 24 BCC; 32 px, with masks): a small long tail."""
    picked = pick_samples({"NV": 72, "MEL": 36, "BCC": 24}, total=1600, seed=5)
    demo = [s for group in picked.values() for s in group]
    archive = write_zip(tmp_path_factory.mktemp("exp") / "tail.zip", manifest_files(demo))
    return api.upload_zip(archive, "tail")


@pytest.fixture(scope="module")
def generator_id(api: ApiHarness, dataset_id: str) -> str:
    created = api.client.post(
        "/v1/generators",
        json={
            "dataset_id": dataset_id,
            "training": TINY_TRAINING,
            "quality_probe": {**TINY_PROBE, "enabled": False},
        },
    )
    assert created.status_code == 202, created.text
    assert api.wait_job(created.json()["job_id"], timeout=600)["state"] == "succeeded"
    return str(created.json()["generator_id"])


@pytest.fixture(scope="module")
def curated_set_id(api: ApiHarness, dataset_id: str, generator_id: str) -> str:
    created = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "counts": {"MEL": 6, "BCC": 6},
            "sampling": {"num_inference_steps": 2, "batch_size": 6},
            "filter": {**TINY_FILTER, "target_keep_rate": 0.5},
            "seed": 3,
        },
    ).json()
    job = api.wait_job(created["job_id"], timeout=600)
    assert job["state"] in ("succeeded", "partial"), job
    return str(created["curated_set_id"])


def test_experiment_reports_every_arm_with_intervals_and_a_report_page(
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
    assert job["progress"] == {  # arms x folds x epochs
        "done": 5,
        "total": 5,
        "percent": 100.0,
        "stage_percent": 100.0,
    }

    experiment = api.client.get(f"/v1/experiments/{body['experiment_id']}").json()
    assert experiment["state"] == "succeeded"
    results = experiment["results"]
    assert set(results["arms"]) == set(body["arms"])
    for name, arm in results["arms"].items():
        interval = arm["metrics"]["summary"]["balanced_accuracy"]
        assert interval["low"] <= interval["estimate"] <= interval["high"], name
        assert set(arm["metrics"]["per_class"]) == {"BCC", "MEL", "NV"}
        assert "ok" in arm["classifier_health"]
    curated = results["arms"]["curated+logit_adjusted"]["comparisons"]
    assert curated["vs_ce"]["against"] == "ce"
    assert curated["vs_best_baseline"]["against"] == results["best_baseline"]
    assert len([v for v in results["verdicts"] if not v.startswith("warning")]) == 4

    # Synthetic images entered training only: every arm scored exactly the real test
    # images, and only curated arms trained on more than the real train split.
    test_images = api.rows(
        select(RealImage.id).where(
            RealImage.dataset_id == uuid.UUID(dataset_id), RealImage.split == Split.TEST
        ),
    )
    assert results["protocol"]["images"] == len(test_images)
    train_count = sum(
        1
        for _ in api.rows(
            select(RealImage.id).where(
                RealImage.dataset_id == uuid.UUID(dataset_id), RealImage.split == Split.TRAIN
            ),
        )
    )
    kept = api.rows(
        select(SyntheticImage.source_image_id).where(
            SyntheticImage.curated_set_id == uuid.UUID(curated_set_id)
        ),
    )
    assert not {source for (source,) in kept} & {image for (image,) in test_images}
    for name, arm in results["arms"].items():
        for run in arm["training"]["runs"]:
            added = sum(run["synthetic_images"].values())
            assert run["train_images"] == train_count + added
            assert (added > 0) == (name.startswith("curated") and len(kept) > 0)

    report = api.client.get(experiment["report_url"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "<svg" in report.text and "curated+logit_adjusted" in report.text

    listed = api.client.get("/v1/experiments", params={"dataset_id": dataset_id}).json()
    assert body["experiment_id"] in [item["id"] for item in listed["items"]]
    other = api.client.get(
        f"/v1/experiments/{body['experiment_id']}", headers=api.new_tenant_headers()
    )
    assert other.status_code == 404


def test_bad_experiments_are_refused_before_any_job(
    api: ApiHarness, dataset_id: str, curated_set_id: str, generator_id: str
) -> None:
    def post(headers: dict[str, str] | None = None, **body: Any) -> Any:
        return api.client.post(
            "/v1/experiments",
            json={"dataset_id": dataset_id, **TINY_EXPERIMENT, **body},
            headers=headers,
        )

    jobs_before = api.client.get("/v1/jobs", params={"kind": "experiment"}).json()["total"]
    cases = [
        (post(backbone="no_such_net"), 422, "backbone", "no_such_net"),
        (post(arms=["ce", "mixup"]), 422, "arms[1]", "mixup"),
        (
            post(arms=[{"curated_set_ids": [curated_set_id], "loss": "ldam"}]),
            422,
            "arms[0].loss",
            "ldam",
        ),
        (post(folds=20), 422, "folds", "20-fold"),
        (
            post(arms=[{"curated_set_ids": [str(uuid.uuid4())]}]),
            404,
            "arms[0].curated_set_ids[0]",
            "not found",
        ),
        (
            post(mode="adaptive", folds=3, adaptive={"generator_id": generator_id}),
            422,
            "folds",
            "validation split",
        ),
    ]
    for response, status, field, words in cases:
        assert response.status_code == status, response.text
        problem = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem.get("field") == field, problem
        assert words in problem["detail"], problem
    zero_cap = post(arms=[{"curated_set_ids": [curated_set_id], "synthetic_ratio_cap": 0}])
    assert zero_cap.status_code == 422
    assert any(
        error["field"].endswith("synthetic_ratio_cap") for error in zero_cap.json()["errors"]
    )
    foreign = post(headers=api.new_tenant_headers(), arms=[{"curated_set_ids": [curated_set_id]}])
    assert foreign.status_code == 404  # another tenant's dataset and curated set
    jobs_after = api.client.get("/v1/jobs", params={"kind": "experiment"}).json()["total"]
    assert jobs_after == jobs_before


def test_a_killed_trainer_resumes_without_retraining_recorded_runs(
    api: ApiHarness, service_worker: ManagedProcess, dataset_id: str
) -> None:
    created = api.client.post(
        "/v1/experiments",
        json={
            "dataset_id": dataset_id,
            "arms": ["ce", "weighted_ce", "focal", "balanced_softmax"],
            **{**TINY_EXPERIMENT, "epochs": 2},
        },
    ).json()
    job_id = created["job_id"]
    wait_for(
        # 2 epochs per run: past 5, two runs are recorded and the third is training.
        lambda: api.client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] >= 5,
        600,
        "two arms to be recorded",
        interval=0.1,
    )
    experiment_id = uuid.UUID(created["experiment_id"])
    ((before,),) = api.rows(select(Experiment.results).where(Experiment.id == experiment_id))
    assert len(before["runs"]) >= 2
    for pid in service_worker.children():
        os.kill(pid, signal.SIGKILL)
    job = api.wait_job(job_id, timeout=900)
    assert job["state"] == "succeeded", job
    assert job["attempts"] >= 2
    ((after,),) = api.rows(select(Experiment.results).where(Experiment.id == experiment_id))
    for key, run in before["runs"].items():
        assert after["runs"][key] == run  # recorded once, not re-trained
    assert len(after["runs"]) == 4


def test_cancel_stops_an_experiment_between_epochs(api: ApiHarness, dataset_id: str) -> None:
    created = api.client.post(
        "/v1/experiments",
        json={"dataset_id": dataset_id, **{**TINY_EXPERIMENT, "epochs": 200}},
    ).json()
    job_id = created["job_id"]
    wait_for(
        lambda: api.client.get(f"/v1/jobs/{job_id}").json()["state"] == "running",
        300,
        "the experiment to start",
    )
    assert api.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = api.wait_job(job_id, timeout=300)
    assert job["state"] == "canceled"
    experiment = api.client.get(f"/v1/experiments/{created['experiment_id']}").json()
    assert experiment["state"] == "canceled" and experiment["report_url"] is None
    assert api.client.get(f"/v1/experiments/{created['experiment_id']}/report").status_code == 409


@pytest.fixture
def second_worker(
    service_settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """A worker for generation and filtering, so an experiment waiting on its round's
    synthesis (in the session's worker) never waits on itself."""
    env = {**os.environ, **service_settings.environ(), "OMP_NUM_THREADS": "1"}
    worker = start_worker(tmp_path_factory.mktemp("worker2"), env, queues="generate,filter")
    try:
        yield worker
    finally:
        worker.stop()


def test_adaptive_rounds_synthesize_through_the_real_workers(
    api: ApiHarness,
    second_worker: ManagedProcess,
    dataset_id: str,
    generator_id: str,
    curated_set_id: str,
) -> None:
    created = api.client.post(
        "/v1/experiments",
        json={
            "dataset_id": dataset_id,
            "mode": "adaptive",
            "arms": ["weighted_ce", {"curated_set_ids": [curated_set_id], "match_adaptive": True}],
            "adaptive": {
                "generator_id": generator_id,
                "rounds": 3,
                "budget_per_round": 6,
                "epochs_per_round": 1,
                "sampling": {"num_inference_steps": 2, "batch_size": 6},
                "filter": {**TINY_FILTER, "target_keep_rate": 0.5},
                "classifier_guidance_scale": 1.0,
            },
            **TINY_EXPERIMENT,
        },
    )
    assert created.status_code == 202, created.text
    assert created.json()["arms"] == ["ce", "weighted_ce", "adaptive", "curated"]
    job = api.wait_job(created.json()["job_id"], timeout=1200)
    assert job["state"] == "succeeded", job
    results = api.client.get(f"/v1/experiments/{created.json()['experiment_id']}").json()["results"]
    rounds = results["adaptive"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["accuracy"] == {"BCC": 0.5, "MEL": 0.5, "NV": 0.5}
    assert rounds[0]["allocation"] == {"BCC": 2, "MEL": 2, "NV": 2}  # floor(6 / 3) each
    for entry in rounds:
        assert sum(entry["allocation"].values()) <= 6
        assert entry["synthesis_state"] in ("succeeded", "partial")
        assert 0.0 <= entry["balanced_accuracy"] <= 1.0
    synthesis_jobs = api.rows(
        select(Job.state).where(Job.id.in_([uuid.UUID(r["job_id"]) for r in rounds]))
    )
    assert len(synthesis_jobs) == 3
    # From round 2 on, the classifier being trained steers sampling (IOIS).
    guidance = [
        params.get("classifier_guidance")
        for (params,) in api.rows(
            select(SynthesisRequest.params)
            .join(Job, Job.id == SynthesisRequest.job_id)
            .where(Job.id.in_([uuid.UUID(r["job_id"]) for r in rounds]))
            .order_by(SynthesisRequest.created_at),
        )
    ]
    assert guidance[0] is None and all(g and g["scale"] == 1.0 for g in guidance[1:])
    adaptive = results["arms"]["adaptive"]
    kept_total = sum(sum(r["kept"].values()) for r in rounds)
    assert sum(adaptive["training"]["runs"][0]["synthetic_images"].values()) == kept_total
    assert adaptive["comparisons"]["vs_best_baseline"] is not None
    offline = results["arms"]["curated"]["training"]["runs"][0]["synthetic_images"]
    assert sum(offline.values()) <= kept_total  # compared at (at most) equal synthetic totals
