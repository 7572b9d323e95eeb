"""What ``POST /v1/synthesis`` refuses before any GPU second: an unknown scheduler, too
few steps for one, a class the OOD filter cannot calibrate; and the largest seed it
accepts. Embedded deployment (SQLite, filesystem broker, no worker): the rows a worker
would have written are added directly."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from shared.models import Job
from shared.synthesis import SCHEDULER_NAMES
from tests.conftest import ApiHarness
from tests.fixtures.rows import ready_dataset, ready_generator


def _jobs(api: ApiHarness) -> int:
    return int(api.rows(select(func.count()).select_from(Job))[0][0])


def _ready(api: ApiHarness, val_counts: dict[str, int]) -> tuple[str, str]:
    """A ready dataset with ``val_counts`` validation images and a ready generator trained
    on it for inpainting (rows only): their ids."""
    dataset_id = ready_dataset(api, val_counts)
    config = {"training": {"resolution": 16, "modes": ["inpaint"]}}
    return dataset_id, ready_generator(api, dataset_id, config)


def _post(api: ApiHarness, dataset_id: str, generator_id: str, **fields: Any) -> Any:
    return api.client.post(
        "/v1/synthesis",
        json={
            "dataset_id": dataset_id,
            "generator_id": generator_id,
            "mode": "inpaint",
            "counts": {"MEL": 2},
            **fields,
        },
    )


def test_an_unknown_scheduler_is_422_naming_the_field_and_the_known_ones(
    local_api: ApiHarness,
) -> None:
    dataset_id, generator_id = _ready(local_api, {"MEL": 6, "NV": 6})
    response = _post(local_api, dataset_id, generator_id, sampling={"scheduler": "ddim2"})
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == "sampling.scheduler"
    assert all(name in error["message"] for name in SCHEDULER_NAMES), error
    assert _jobs(local_api) == 0


def test_too_few_steps_for_the_scheduler_are_422_before_any_job(local_api: ApiHarness) -> None:
    dataset_id, generator_id = _ready(local_api, {"MEL": 6, "NV": 6})
    response = _post(
        local_api,
        dataset_id,
        generator_id,
        sampling={"scheduler": "pndm", "num_inference_steps": 2},
    )
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == "sampling.num_inference_steps" and "pndm" in error["message"]
    assert _jobs(local_api) == 0
    fine = _post(
        local_api,
        dataset_id,
        generator_id,
        sampling={"scheduler": "pndm", "num_inference_steps": 3},
    )
    assert fine.status_code == 202, fine.text


def test_the_largest_seed_is_accepted(local_api: ApiHarness) -> None:
    dataset_id, generator_id = _ready(local_api, {"MEL": 6, "NV": 6})
    assert _post(local_api, dataset_id, generator_id, seed=2**62 - 1).status_code == 202
    too_big = _post(local_api, dataset_id, generator_id, seed=2**62)
    assert too_big.status_code == 422 and too_big.json()["errors"][0]["field"] == "seed"


def test_a_class_too_few_validation_images_calibrate_is_refused_at_post(
    local_api: ApiHarness,
) -> None:
    """2 + 2 validation images, even pooled, are fewer than the 5 the filter needs: the
    POST says so on the class instead of the filter stage failing after generation."""
    dataset_id, generator_id = _ready(local_api, {"MEL": 2, "NV": 2})
    response = _post(local_api, dataset_id, generator_id)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "counts.MEL"
    assert "validation images" in response.json()["detail"]
    assert _jobs(local_api) == 0
