"""Service tier for the extreme tail: a dataset whose rarest class has 3 training images
and one class with none. Fill-to-max through the API ends succeeded or partial, never
failed; every class is accounted for in the curated set with its status and filter mode;
what the filter cannot serve is refused at the POST when the user names it. Its images are
64 px while the generator samples 32 px: the curated set is delivered at 64 px."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from shared.imaging import encode_png
from shared.models import SynthesisRequest, SyntheticImage
from shared.synthesis import DEFAULT_TAIL_GUIDANCE_SCALE, class_guidance_scale
from tests.conftest import ApiHarness, _harness
from tests.fixtures.archives import pick_samples, write_zip

pytestmark = pytest.mark.service

# Images per class and split: NV is the head, MEL has enough of its own, DF is the
# extreme tail (3 training images), VASC has validation and test images but none to train.
SPLITS = {
    "NV": {"train": 24, "val": 6, "test": 2},
    "MEL": {"train": 14, "val": 5, "test": 2},
    "DF": {"train": 3, "val": 1, "test": 1},
    "VASC": {"train": 0, "val": 2, "test": 1},
}
TINY_TRAINING = {
    "resolution": 32,
    "block_out_channels": [16, 32],
    "attention_levels": [],
    "max_train_steps": 8,
    "batch_size": 8,
    "checkpoint_every": 8,
    "mixed_precision": "no",
    "class_balance": 1.0,
}
TINY_FILTER = {
    "classifier_backbone": "test_resnet",
    "classifier_image_size": 32,
    "classifier_epochs": 1,
}


@pytest.fixture(scope="module")
def api(service_settings, service_worker) -> Iterator[ApiHarness]:  # type: ignore[no-untyped-def]
    """One tenant for the whole module: the dataset and generator are made once."""
    yield from _harness(service_settings)


def _tail_archive_files() -> dict[str, bytes]:
    """A CSV manifest with the splits given (so DF keeps exactly 3 training images)."""
    wanted = {name: sum(splits.values()) for name, splits in SPLITS.items()}
    picked = pick_samples(wanted, total=900, seed=41, image_size=64)
    assert {name: len(group) for name, group in picked.items()} == wanted
    files: dict[str, bytes] = {}
    manifest = io.StringIO()
    writer = csv.writer(manifest)
    writer.writerow(["path", "label", "mask", "group", "split"])
    for name, group in picked.items():
        splits = [split for split, n in SPLITS[name].items() for _ in range(n)]
        for sample, split in zip(group, splits, strict=True):
            files[f"data/images/{sample.image_id}.png"] = encode_png(sample.image)
            files[f"data/masks/{sample.image_id}.png"] = encode_png(sample.mask)
            writer.writerow(
                [
                    f"images/{sample.image_id}.png",
                    name,
                    f"masks/{sample.image_id}.png",
                    sample.group,
                    split,
                ]
            )
    files["data/manifest.csv"] = manifest.getvalue().encode()
    return files


@pytest.fixture(scope="module")
def dataset_id(api: ApiHarness, tmp_path_factory: pytest.TempPathFactory) -> str:
    archive = write_zip(tmp_path_factory.mktemp("tail") / "tail.zip", _tail_archive_files())
    dataset_id = api.upload_zip(archive, "tail", format="csv")
    dataset = api.client.get(f"/v1/datasets/{dataset_id}").json()
    assert dataset["split_counts"]["train"].get("DF") == 3
    assert not dataset["split_counts"]["train"].get("VASC")
    return dataset_id


@pytest.fixture(scope="module")
def generator_id(api: ApiHarness, dataset_id: str) -> str:
    created = api.client.post(
        "/v1/generators",
        json={
            "dataset_id": dataset_id,
            "training": TINY_TRAINING,
            "quality_probe": {
                "images_per_class": 2,
                "num_inference_steps": 2,
                "classifier_epochs": 1,
                "classifier_min_steps": 0,
            },
        },
    )
    assert created.status_code == 202, created.text
    job = api.wait_job(created.json()["job_id"], timeout=600)
    assert job["state"] == "succeeded", job
    return str(created.json()["generator_id"])


def test_the_quality_probe_samples_the_tail_as_synthesis_does(
    api: ApiHarness, generator_id: str
) -> None:
    """DF (3 training images) at the tail guidance, MEL at the default: the probe scores
    the images a synthesis request would get."""
    quality = api.client.get(f"/v1/generators/{generator_id}").json()["quality"]
    guidance = {q["class_name"]: q["guidance_scale"] for q in quality["per_class"]}
    assert guidance["DF"] == DEFAULT_TAIL_GUIDANCE_SCALE
    assert guidance["MEL"] == quality["sampling"]["guidance_scale"] > DEFAULT_TAIL_GUIDANCE_SCALE


def _stored_plan(api: ApiHarness, synthesis_id: str) -> dict[str, str]:
    ((params,),) = api.rows(
        select(SynthesisRequest.filter_params).where(SynthesisRequest.id == uuid.UUID(synthesis_id))
    )
    return dict(params["plan"])


def test_a_named_class_without_training_images_is_refused_at_the_post(
    api: ApiHarness, dataset_id: str, generator_id: str
) -> None:
    refused = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "counts": {"DF": 2, "VASC": 2},
            "filter": TINY_FILTER,
        },
    )

    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["field"] == "counts.VASC"
    assert "'VASC' has 0 real training images" in body["detail"]
    assert "DF" not in body["detail"]  # DF can be served (pooled)


def test_fill_to_max_on_the_extreme_tail_accounts_for_every_class(
    api: ApiHarness, dataset_id: str, generator_id: str
) -> None:
    created = api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "target": "fill_to_max",
            "oversample": 1.0,
            "max_rounds": 1,  # no top-up: each class gets exactly what it asks
            "sampling": {"num_inference_steps": 1, "batch_size": 16},
            "background_policy": "same_class",
            "filter": TINY_FILTER,
            "seed": 3,
        },
    )
    assert created.status_code == 202, created.text
    body = created.json()
    # Filled towards NV (24 training images); VASC cannot be generated, so is not asked.
    assert body["counts"] == {"MEL": 10, "DF": 21}
    assert body["resolution"] == 64  # the dataset's, as ingest recorded it
    assert _stored_plan(api, body["synthesis_id"]) == {
        "MEL": "per_class",
        "DF": "pooled",
        "VASC": "skipped",
    }

    job = api.wait_job(body["job_id"], timeout=600)

    assert job["state"] == "partial", job  # VASC skipped, so never plain succeeded
    assert job["error"] is None
    result = job["result"]
    assert result["partial"] is True
    assert "VASC skipped (" in result["summary"] and "\n" not in result["summary"]
    assert set(result["classes"]) == {"MEL", "DF", "VASC"}
    assert result["generated"] == 31

    curated = api.client.get(f"/v1/curated-sets/{body['curated_set_id']}").json()
    assert curated["state"] == "ready"
    summary = curated["summary"]
    assert set(summary) == {"MEL", "DF", "VASC"}
    for name, entry in summary.items():
        assert entry["status"] in ("kept", "flagged", "skipped"), name
        assert entry["reason"], name
        assert entry["status"] == result["classes"][name]
    vasc = summary["VASC"]
    assert vasc["status"] == "skipped" and vasc["filter_mode"] == "skipped"
    assert "no real training image" in vasc["reason"]
    assert vasc["generated"] == 0 and vasc["kept"] == 0
    assert summary["MEL"]["filter_mode"] == "per_class"
    assert summary["DF"]["filter_mode"] == "pooled"
    for name, asked in (("MEL", 10), ("DF", 21)):
        entry = summary[name]
        assert entry["requested"] == asked and entry["generated"] == asked
        assert entry["kept"] + sum(entry["rejected"].values()) == asked
        assert entry["rounds"] == 1 and entry["kept"] <= asked
        if entry["status"] == "flagged":  # a 1-step sample of an 8-step generator, likely
            assert entry["dominant_rejection"] in entry["rejected"]
            assert entry["cap_reached"] is True and entry["short"] == asked - entry["kept"]
            assert f"asked after 1 round; cap reached ({asked} generated)" in entry["reason"]
        else:
            assert entry["kept"] == asked
        assert curated["thresholds"]["classes"][name]["filter_mode"] == entry["filter_mode"]
    df = curated["thresholds"]["classes"]["DF"]
    assert df["n_train"] == 3 and df["n_reference"] == 12  # validation images of all classes

    # Candidates are the generator's 32 px; the curated set is at the dataset's 64 px.
    rows = api.rows(
        select(
            SyntheticImage.decision,
            SyntheticImage.candidate_size,
            SyntheticImage.size,
            SyntheticImage.resize_method,
        ).where(SyntheticImage.synthesis_id == uuid.UUID(body["synthesis_id"]))
    )
    assert len(rows) == 31 and all(candidate == 32 for _, candidate, _, _ in rows)
    kept = [(size, method) for decision, _, size, method in rows if decision == "kept"]
    assert len(kept) == sum(summary[name]["kept"] for name in ("MEL", "DF"))
    assert all(delivered == (64, "bicubic") for delivered in kept)
    # The 3-image DF is sampled at the tail guidance, MEL at the request's (default) one.
    guidance = dict(
        api.rows(
            select(SyntheticImage.label, SyntheticImage.guidance_scale)
            .where(SyntheticImage.synthesis_id == uuid.UUID(body["synthesis_id"]))
            .distinct()
        )
    )
    mel_train = curated["thresholds"]["classes"]["MEL"]["n_train"]
    assert guidance == {
        "DF": DEFAULT_TAIL_GUIDANCE_SCALE,
        "MEL": class_guidance_scale({}, mel_train),
    }
