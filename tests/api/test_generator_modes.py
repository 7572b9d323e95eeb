"""The modes a generator is trained for: chosen at training, refused otherwise at
``POST /v1/synthesis`` before any job exists. Embedded deployment (SQLite, filesystem
broker, no worker): rows a worker would have written are added directly."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from shared.models import (
    Job,
    SynthesisRequest,
)
from tests.conftest import ApiHarness
from tests.fixtures.rows import ready_dataset, ready_generator

VAL_COUNTS = {"MEL": 6, "NV": 6}


def _count(api: ApiHarness, model: type) -> int:
    return int(api.rows(select(func.count()).select_from(model))[0][0])


def _field(response: Any) -> str:
    """The field a 422 names: request validation lists errors, domain errors name one."""
    body = response.json()
    return str(body["errors"][0]["field"] if "errors" in body else body["field"])


def _synthesis(api: ApiHarness, dataset_id: str, generator_id: str, mode: str) -> Any:
    return api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "mode": mode,
            "counts": {"MEL": 2},
        },
    )


def test_training_records_the_modes_and_the_augmentation_it_will_use(
    local_api: ApiHarness,
) -> None:
    colour, gray = (
        ready_dataset(local_api, VAL_COUNTS, channels=3),
        ready_dataset(local_api, VAL_COUNTS, channels=1),
    )
    cases = [
        (colour, {}, {}, ["inpaint"], "dermoscopy"),
        (colour, {"modality": "chest_xray"}, {"modes": ["img2img"]}, ["img2img"], "none"),
        (gray, {}, {"modes": ["inpaint", "generate"]}, ["inpaint", "generate"], "none"),
        (gray, {}, {"augment": "dermoscopy"}, ["inpaint"], "dermoscopy"),
    ]
    for dataset_id, extra, training, modes, augment in cases:
        created = local_api.client.post(
            "/v1/generators", json={"dataset_id": dataset_id, "training": training, **extra}
        )
        assert created.status_code == 202, created.text
        stored = created.json()["generator"]["config"]["training"]
        assert (stored["modes"], stored["augment"]) == (modes, augment)


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"modes": []}, "training.modes"),
        ({"modes": ["paint"]}, "training.modes.0"),
        ({"modes": ["inpaint", "inpaint"]}, "training"),
        ({"augment": "rotate"}, "training.augment"),
    ],
)
def test_bad_modes_or_augmentation_are_422_before_any_job(
    local_api: ApiHarness, training: dict[str, Any], field: str
) -> None:
    dataset_id = ready_dataset(local_api, VAL_COUNTS, channels=3)
    jobs = _count(local_api, Job)
    response = local_api.client.post(
        "/v1/generators", json={"dataset_id": dataset_id, "training": training}
    )
    assert response.status_code == 422
    assert _field(response) == field
    assert _count(local_api, Job) == jobs


def test_a_generator_refuses_the_modes_it_was_not_trained_for(local_api: ApiHarness) -> None:
    dataset_id = ready_dataset(local_api, VAL_COUNTS, channels=1)
    inpaint_only = ready_generator(local_api, dataset_id, {"training": {"modes": ["inpaint"]}})
    before = _count(local_api, SynthesisRequest), _count(local_api, Job)
    for mode in ("img2img", "generate"):
        refused = _synthesis(local_api, dataset_id, inpaint_only, mode)
        assert refused.status_code == 422, refused.text
        assert _field(refused) == "mode" and "training.modes" in refused.json()["detail"]
    assert (_count(local_api, SynthesisRequest), _count(local_api, Job)) == before
    assert _synthesis(local_api, dataset_id, inpaint_only, "inpaint").status_code == 202


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("trained", {"training": {"resolution": 32}}),  # trained before modes existed
        ("trained", {"training": {"modes": ["img2img", "generate", "inpaint"]}}),
        ("pretrained", {"modality": "chest_xray"}),
    ],
)
def test_pretrained_old_and_all_mode_generators_serve_every_mode(
    local_api: ApiHarness, kind: str, config: dict[str, Any]
) -> None:
    dataset_id = ready_dataset(local_api, VAL_COUNTS, channels=1)
    generator_id = ready_generator(local_api, dataset_id, config, kind=kind)
    for mode in ("inpaint", "img2img", "generate"):
        response = _synthesis(local_api, dataset_id, generator_id, mode)
        assert response.status_code == 202, (mode, response.text)
