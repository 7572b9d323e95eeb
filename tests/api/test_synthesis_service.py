"""Service tier for the generator and filter workers: train a tiny generator over HTTP,
synthesize per class, filter, download the curated set — real Postgres, Redis, S3 server
and a real Celery worker process."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from shared.imaging import SYNTHETIC_KEY, read_png_text
from shared.models import SynthesisRequest, SyntheticImage
from tests.conftest import ApiHarness, _harness
from tests.fixtures.archives import manifest_files, pick_samples, write_zip
from tests.fixtures.pipelines import save_tiny_pipeline
from tests.fixtures.services import ManagedProcess, wait_for

pytestmark = pytest.mark.service

TINY_TRAINING = {
    "resolution": 32,
    "block_out_channels": [16, 32],
    "attention_levels": [],
    "max_train_steps": 24,
    "batch_size": 8,
    "checkpoint_every": 8,
    "mixed_precision": "no",
    "class_balance": 1.0,
}
TINY_PROBE = {
    "images_per_class": 2,
    "num_inference_steps": 2,
    "guidance_scale": 5.0,
    "background_policy": "same_class",
    "classifier_epochs": 1,
}
TINY_FILTER = {
    "classifier_backbone": "test_resnet",
    "classifier_image_size": 32,
    "classifier_epochs": 1,
}
DECISIONS = ("kept", "ood", "off_class", "near_copy", "surplus", "duplicate", "background")


@pytest.fixture(scope="module")
def api(service_settings, service_worker) -> Iterator[ApiHarness]:  # type: ignore[no-untyped-def]
    """One tenant for the whole module: the dataset and generator are made once."""
    yield from _harness(service_settings)


@pytest.fixture(scope="module")
def dataset_id(api: ApiHarness, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three classes (60 NV, 48 MEL, 48 BCC; 32 px, with masks): enough to calibrate each."""
    picked = pick_samples({"NV": 60, "MEL": 48, "BCC": 48}, total=1200, seed=21)
    demo = [s for group in picked.values() for s in group]
    archive = write_zip(tmp_path_factory.mktemp("synth") / "three.zip", manifest_files(demo))
    return api.upload_zip(archive, "three")


@pytest.fixture(scope="module")
def trained(api: ApiHarness, dataset_id: str) -> dict[str, Any]:
    created = api.client.post(
        "/v1/generators",
        json={
            "dataset_id": dataset_id,
            "training": TINY_TRAINING,
            "quality_probe": {**TINY_PROBE, "enabled": True},
        },
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] == "succeeded", job
    return {"job": job, **created.json()}


def test_trained_generator_records_checkpoint_loss_and_quality(
    api: ApiHarness, trained: dict[str, Any]
) -> None:
    generator = api.client.get(f"/v1/generators/{trained['generator_id']}").json()
    assert generator["state"] == "ready" and generator["kind"] == "trained"
    assert len(generator["checkpoint_sha256"]) == 64
    assert [step for step, _ in generator["loss_curve"]] == list(range(1, 25))
    assert generator["quality"]["sampling"] == {
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "tail_guidance_scale": 3.0,
        "background_policy": "same_class",
    }
    per_class = generator["quality"]["per_class"]
    assert [q["class_name"] for q in per_class] == ["BCC", "MEL", "NV"]
    assert all(q["n_generated"] == 2 for q in per_class)
    assert all(q["guidance_scale"] == 5.0 for q in per_class)  # no class under 10 images
    assert all(q["classifier_accuracy"] is not None for q in per_class)
    # The same classifier on real val images, to read the generated figure against.
    assert all(0 <= q["classifier_accuracy_on_real_val"] <= 1 for q in per_class)
    assert generator["quality"]["classifier"]["balanced_sampling"] is True
    assert generator["quality"]["classifier"]["image_size"] == 32  # the generator's


def test_synthesis_generates_filters_and_streams_the_curated_set(
    api: ApiHarness, trained: dict[str, Any]
) -> None:
    """What was asked, no more: at most 4 per class, short classes topped up in a second
    round, kept images delivered at the 48 px asked (candidates are 32 px)."""
    created = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": trained["generator"]["dataset_id"],
            "generator_id": trained["generator_id"],
            "counts": {"MEL": 4, "BCC": 4},
            "sampling": {"num_inference_steps": 2, "batch_size": 4},
            "filter": TINY_FILTER,
            "max_rounds": 2,
            "resolution": 48,
            "resize_method": "lanczos",
            "seed": 7,
        },
    )
    assert created.status_code == 202, created.text
    body = created.json()
    assert (body["resolution"], body["max_rounds"]) == (48, 2)  # known before any GPU work
    job = api.wait_job(body["job_id"], timeout=900)
    # A tiny generator's class may be left short (flagged): the job then ends partial.
    assert job["state"] in ("succeeded", "partial"), job
    result = job["result"]
    assert result["rounds"] in (1, 2)

    curated = api.client.get(f"/v1/curated-sets/{body['curated_set_id']}").json()
    assert curated["state"] == "ready"
    generated = 0
    for name in ("MEL", "BCC"):
        entry = curated["summary"][name]
        generated += entry["generated"]
        assert entry["kept"] <= 4  # never more than asked
        assert entry["kept"] + sum(entry["rejected"].values()) == entry["generated"]
        assert set(entry["rejected"]) == set(DECISIONS) - {"kept"}
        assert 0 <= entry["kept_below_chance"] <= entry["kept"]
        if entry["rounds"] == 1:
            assert entry["generated"] == 6  # 4 x oversample 1.5, nothing to top up
        else:  # short after the first round: a second one for this class only
            assert entry["rounds"] == 2 and entry["generated"] > 6
        if entry["kept"] == 4:
            assert entry["status"] == "kept" and entry["short"] == 0
        else:
            assert entry["status"] == "flagged" and entry["short"] == 4 - entry["kept"]
            assert entry["cap_reached"] is True and entry["rounds"] == 2
            assert f"kept {entry['kept']} of 4 asked after 2 rounds; cap reached" in entry["reason"]
            assert f"{name} flagged ({entry['reason'].split(' (')[0]}" in result["summary"]
        assert curated["thresholds"]["classes"][name]["thresholds"]
        assert "at most 4" in curated["thresholds"]["classes"][name]["rule"]
    assert result["generated"] == generated
    kept = sum(e["kept"] for e in curated["summary"].values())
    assert result["kept"] == kept <= 8
    # The filter's classifier reports whether it learned anything; when it did not, its
    # class scores are not used to call a candidate off-class.
    health = curated["thresholds"]["classifier_health"]
    assert health["bar"] == pytest.approx(1 / 3 + 0.25 * (2 / 3))  # 3 classes
    if health["ok"] is False:
        assert "fallback" in health and job["result"]["classifier_health"] == health
        assert all(e["rejected"]["off_class"] == 0 for e in curated["summary"].values())

    manifest = api.client.get(
        f"/v1/curated-sets/{body['curated_set_id']}/manifest", params={"format": "jsonl"}
    )
    rows = [json.loads(line) for line in manifest.text.splitlines()]
    assert len(rows) == kept and all(r["synthetic"] and r["decision"] == "kept" for r in rows)
    # Each kept image says how it was resized: from the generator's 32 px, by lanczos.
    assert all(
        (r["size"], r["resized_from"], r["resize_method"]) == (48, 32, "lanczos") for r in rows
    )
    assert {r["generation_round"] for r in rows} <= {0, 1}

    archive = api.client.get(f"/v1/curated-sets/{body['curated_set_id']}/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        names = zipped.namelist()
        assert "manifest.csv" in names and len(names) == kept + 1
        for name in names[:-1]:
            assert name.split("/")[0] in ("MEL", "BCC")
            data = zipped.read(name)
            text = read_png_text(data)
            assert text[SYNTHETIC_KEY] == "true"
            assert (text["tailsynth:resized_from"], text["tailsynth:resize_method"]) == (
                "32x32",
                "lanczos",
            )
            with Image.open(io.BytesIO(data)) as image:
                assert image.size == (48, 48)

    # Every candidate, kept or not, has its full provenance and scores.
    from shared.db import make_engine, make_session_factory

    engine = make_engine(api.settings)
    with make_session_factory(engine)() as session:
        ids = [
            str(i)
            for i in session.scalars(
                select(SyntheticImage.id).where(SyntheticImage.synthesis_id == body["synthesis_id"])
            )
        ]
    engine.dispose()
    assert len(ids) == result["generated"]  # one row per candidate, whatever the rounds
    for image_id in ids:
        image = api.client.get(f"/v1/synthetic-images/{image_id}").json()
        assert (
            image["source_image_id"]
            and image["mask_key"]
            and image["checkpoint_sha256"] == trained["job"]["result"]["checkpoint_sha256"]
        )
        assert image["decision"] in DECISIONS and image["decision_reason"]
        assert image["candidate_size"] == 32 and image["candidate_key"]
        if image["decision"] == "kept":
            assert image["size"] == 48 and image["resize_method"] == "lanczos"
            assert image["object_key"] != image["candidate_key"]
            if "kept below chance" in image["decision_reason"]:
                assert curated["summary"][image["label"]]["kept_below_chance"] > 0
        else:  # delivered as generated
            assert image["object_key"] == image["candidate_key"] and image["size"] == 32
        detectors = {s["detector"] for s in image["ood_scores"]}
        assert {
            "mahalanobis",
            "knn",
            "class_probability",
            "nearest_train_cosine",
            "phash_distance",
        } <= detectors


def test_a_short_class_is_topped_up_in_rounds_until_the_cap(
    api: ApiHarness, trained: dict[str, Any]
) -> None:
    """With every pHash a duplicate (64 bits), a class keeps at most one candidate: it is
    short after round 1, gets a top-up round of its own (later indices and seeds, round
    1 rows), and ends flagged with the cap reached after max_rounds."""
    created = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": trained["generator"]["dataset_id"],
            "generator_id": trained["generator_id"],
            "counts": {"MEL": 2},
            "sampling": {"num_inference_steps": 1, "batch_size": 8},
            "filter": {**TINY_FILTER, "duplicate_bits": 64},
            "max_rounds": 2,
            "seed": 9,
        },
    )
    assert created.status_code == 202, created.text
    body = created.json()
    job = api.wait_job(body["job_id"], timeout=900)

    assert job["state"] == "partial", job
    assert job["result"]["rounds"] == 2
    # The final word on what is short, not the hand-over's after round 1.
    entry = api.client.get(f"/v1/curated-sets/{body['curated_set_id']}").json()["summary"]["MEL"]
    assert job["result"]["short"] == {"MEL": 2 - entry["kept"]}
    assert entry["status"] == "flagged" and entry["rounds"] == 2 and entry["cap_reached"]
    assert entry["kept"] <= 1 and entry["generated"] > 3  # 3 first, then the top-up
    assert entry["kept"] + sum(entry["rejected"].values()) == entry["generated"]
    assert entry["reason"].startswith(f"kept {entry['kept']} of 2 asked after 2 rounds; cap")
    assert "MEL flagged (kept" in job["result"]["summary"]
    ((top_ups,),) = api.rows(
        select(SynthesisRequest.top_up_rounds).where(
            SynthesisRequest.id == uuid.UUID(body["synthesis_id"])
        )
    )
    assert len(top_ups) == 1 and top_ups[0]["deficit"]["MEL"] >= 2 - entry["kept"]
    rows = api.rows(
        select(
            SyntheticImage.index_in_request, SyntheticImage.seed, SyntheticImage.generation_round
        ).where(SyntheticImage.synthesis_id == uuid.UUID(body["synthesis_id"]))
    )
    assert len(rows) == entry["generated"] == 3 + top_ups[0]["candidates"]["MEL"]
    assert sorted(index for index, _, _ in rows) == list(range(len(rows)))
    assert len({seed for _, seed, _ in rows}) == len(rows)
    assert {index for index, _, round_ in rows if round_ == 1} == set(range(3, len(rows)))


def test_filter_defaults_to_the_quality_probes_classifier(
    api: ApiHarness, trained: dict[str, Any]
) -> None:
    """Asked alike (backbone, epochs, steps), the filter reuses the probe's classifier at
    the generator's resolution: one model trained once, and the two agree on classes."""
    created = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": trained["generator"]["dataset_id"],
            "generator_id": trained["generator_id"],
            "counts": {"MEL": 2},
            "sampling": {"num_inference_steps": 1},
            "max_rounds": 1,
            "filter": {"classifier_epochs": TINY_PROBE["classifier_epochs"]},
        },
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] in ("succeeded", "partial"), job
    curated = api.client.get(f"/v1/curated-sets/{created.json()['curated_set_id']}").json()
    probe = api.client.get(f"/v1/generators/{trained['generator_id']}").json()["quality"]
    # The same storage key: dataset_classifier found the probe's model instead of training.
    assert curated["thresholds"]["classifier"] == probe["classifier_key"]


def test_fill_to_max_and_bad_requests(api: ApiHarness, trained: dict[str, Any]) -> None:
    base = {
        "dataset_id": trained["generator"]["dataset_id"],
        "generator_id": trained["generator_id"],
    }
    unknown = api.client.post("/v1/synthesis", json={**base, "counts": {"XYZ": 3}})
    assert unknown.status_code == 422 and unknown.json()["field"] == "counts.XYZ"
    both = api.client.post(
        "/v1/synthesis", json={**base, "counts": {"MEL": 1}, "target": "fill_to_max"}
    )
    assert both.status_code == 422
    bad_mode = api.client.post(
        "/v1/synthesis", json={**base, "counts": {"MEL": 1}, "mode": "paint"}
    )
    assert bad_mode.status_code == 422 and bad_mode.json()["errors"][0]["field"] == "mode"
    for field, value in (
        ("max_rounds", 0),
        ("max_rounds", 11),
        ("resolution", 4),
        ("resize_method", "sinc"),
    ):
        refused = api.client.post(
            "/v1/synthesis", json={**base, "counts": {"MEL": 1}, field: value}
        )
        assert refused.status_code == 422, (field, value, refused.text)
        assert refused.json()["errors"][0]["field"] == field
    bad_duplicates = api.client.post(
        "/v1/synthesis",
        json={**base, "counts": {"MEL": 1}, "filter": {"duplicate_bits": 65}},
    )
    assert bad_duplicates.status_code == 422
    assert bad_duplicates.json()["errors"][0]["field"] == "filter.duplicate_bits"
    other = api.client.post(
        "/v1/synthesis", json={**base, "counts": {"MEL": 1}}, headers=api.new_tenant_headers()
    )
    assert other.status_code == 404
    bad_resolution = api.client.post(
        "/v1/generators",
        json={"dataset_id": base["dataset_id"], "training": {**TINY_TRAINING, "resolution": 33}},
    )
    assert bad_resolution.status_code == 422 and "divisible" in bad_resolution.json()["detail"]
    bad_balance = api.client.post(
        "/v1/generators",
        json={"dataset_id": base["dataset_id"], "training": {**TINY_TRAINING, "class_balance": 2}},
    )
    assert bad_balance.status_code == 422
    assert bad_balance.json()["errors"][0]["field"] == "training.class_balance"
    fill = api.client.post(
        "/v1/synthesis",
        json={
            **base,
            "target": "fill_to_max",
            "sampling": {"num_inference_steps": 1},
            "filter": TINY_FILTER,
        },
        headers={"Idempotency-Key": "fill-1"},
    )
    assert fill.status_code == 202, fill.text
    assert set(fill.json()["plan"]) == {"MEL", "BCC"}  # the filter's mode per class
    counts = fill.json()["counts"]  # filled towards NV, the head class of the train split
    assert set(counts) == {"MEL", "BCC"} and all(v > 0 for v in counts.values())
    assert api.client.post(f"/v1/jobs/{fill.json()['job_id']}/cancel").status_code in (202, 409)


def test_generator_training_resumes_from_storage_after_its_worker_and_scratch_are_lost(
    api: ApiHarness, service_worker: ManagedProcess, dataset_id: str
) -> None:
    created = api.client.post(
        "/v1/generators",
        json={
            "dataset_id": dataset_id,
            "training": {**TINY_TRAINING, "max_train_steps": 48, "checkpoint_every": 8},
            "quality_probe": {"enabled": False},
        },
    ).json()
    job_id = created["job_id"]
    wait_for(
        lambda: api.client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] >= 20,
        300,
        "training to pass step 20",
        interval=0.1,
    )
    children = service_worker.children()
    for pid in children:  # frozen first, so no checkpoint is written while its dir goes
        os.kill(pid, signal.SIGSTOP)
    # As if the job came back on another host: nothing of this run is left in scratch,
    # so it resumes only from the checkpoints mirrored to storage.
    shutil.rmtree(api.settings.data_dir / "scratch" / "generators" / created["generator_id"])
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    job = api.wait_job(job_id, timeout=600)
    assert job["state"] == "succeeded", job
    assert job["attempts"] >= 2 and job["result"]["resumed_from_step"] >= 16
    generator = api.client.get(f"/v1/generators/{created['generator_id']}").json()
    assert [s for s, _ in generator["loss_curve"]] == list(range(1, 49))


def test_pretrained_pipeline_registers_and_generates_in_every_mode(
    api: ApiHarness, dataset_id: str
) -> None:
    """Register a saved diffusers pipeline from a directory under the weights roots, then
    synthesize with it."""
    (api.settings.weights_roots[0] / "tiny-sd").mkdir()
    directory = save_tiny_pipeline(api.settings.weights_roots[0] / "tiny-sd", 32)
    created = api.client.post(
        "/v1/generators",
        json={"kind": "pretrained", "dataset_id": dataset_id, "source": str(directory)},
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] == "succeeded", job
    generator = api.client.get(f"/v1/generators/{created.json()['generator_id']}").json()
    assert generator["state"] == "ready" and len(generator["checkpoint_sha256"]) == 64

    for mode in ("generate", "img2img", "inpaint"):
        synthesis = api.client.post(
            "/v1/synthesis",
            json={
                "dataset_id": dataset_id,
                "generator_id": generator["id"],
                "mode": mode,
                "counts": {"MEL": 2},
                "sampling": {"num_inference_steps": 2, "strength": 0.5},
                "filter": TINY_FILTER,
                "max_rounds": 1,
            },
        ).json()
        done = api.wait_job(synthesis["job_id"], timeout=600)
        assert done["state"] in ("succeeded", "partial"), (mode, done)
        assert done["result"]["generated"] == 3 and done["result"]["rounds"] == 1
        curated = api.client.get(f"/v1/curated-sets/{synthesis['curated_set_id']}").json()
        assert curated["summary"]["MEL"]["generated"] == 3
        assert curated["summary"]["MEL"]["kept"] <= 2


def test_unloadable_pretrained_weights_fail_the_job_clearly(
    api: ApiHarness, dataset_id: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    created = api.client.post(
        "/v1/generators",
        json={
            "kind": "pretrained",
            "dataset_id": dataset_id,
            "source": "no-such-org/no-such-model",
        },
    ).json()
    job = api.wait_job(created["job_id"], timeout=600)
    assert job["state"] == "failed" and "no-such-org/no-such-model" in job["error"]
    assert api.client.get(f"/v1/generators/{created['generator_id']}").json()["state"] == "failed"
    outside = save_tiny_pipeline(tmp_path_factory.mktemp("outside-sd"), 32)
    refused = api.client.post(
        "/v1/generators", json={"kind": "pretrained", "dataset_id": dataset_id,
                                "source": str(outside)}
    )
    assert refused.status_code == 422 and refused.json()["field"] == "source"
    assert "weights roots" in refused.json()["detail"]
    missing = api.client.post(
        "/v1/generators", json={"kind": "pretrained", "dataset_id": dataset_id}
    )
    assert missing.status_code == 422 and missing.json()["field"] == "source"
