"""What ``POST /v1/synthesis`` refuses before any GPU second: an unknown scheduler, too
few steps for one, a class the OOD filter cannot calibrate; and the largest seed it
accepts. Embedded deployment (SQLite, filesystem broker, no worker): the rows a worker
would have written are added directly."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Dataset, DatasetState, Generator, Job, RealImage, Split, Tenant
from shared.synthesis import SCHEDULER_NAMES
from tests.conftest import ApiHarness


def _add(api: ApiHarness, *rows: Any) -> None:
    engine = make_engine(api.settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            session.add_all(rows)
    finally:
        engine.dispose()


def _jobs(api: ApiHarness) -> int:
    return int(api.rows(select(func.count()).select_from(Job))[0][0])


def _ready(api: ApiHarness, val_counts: dict[str, int]) -> tuple[str, str]:
    """A ready dataset with 12 training images per class and ``val_counts`` validation
    images, and a ready generator trained on it (rows only): their ids."""
    tenant_id = uuid.UUID(
        str(api.rows(select(Tenant.id).where(Tenant.name == api.tenant_name))[0][0])
    )
    dataset_id, generator_id = uuid.uuid4(), uuid.uuid4()
    images = [
        RealImage(
            dataset_id=dataset_id,
            source_path=f"{label}/{split.value}{i}.png",
            sha256=uuid.uuid4().hex * 2,
            object_key=f"k/{label}{split.value}{i}",
            label=label,
            split=split,
            width=16,
            height=16,
            channels=3,
        )
        for label, n_val in val_counts.items()
        for split, n in ((Split.TRAIN, 12), (Split.VAL, n_val))
        for i in range(n)
    ]
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name="set",
        format="csv",
        state=DatasetState.READY,
        class_names=list(val_counts),
        class_counts={c: 12 + n for c, n in val_counts.items()},
    )
    generator = Generator(
        id=generator_id,
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        kind="trained",
        state="ready",
        config={"training": {"resolution": 16, "modes": ["inpaint"]}},
        checkpoint_sha256="0" * 64,
    )
    _add(api, dataset, generator, *images)
    return str(dataset_id), str(generator_id)


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
