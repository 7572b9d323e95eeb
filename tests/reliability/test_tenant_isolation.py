"""(9) Every route with an id in its path, called with another tenant's real ids: 404.

The routes come from the OpenAPI schema (``app.openapi()``), so a new route is covered
without a new test; a path parameter this test has no id for fails it, naming the
parameter. Tenant A owns one row of every kind; tenant B asks for each. B's answer
must be a problem+json 404 exactly like the one for an id that exists nowhere, and
carry nothing of A's (names, other ids, the tenant).
"""

from __future__ import annotations

import re
import uuid

import pytest

from services.api.app import create_app
from shared.models import (
    CuratedSet,
    Dataset,
    DatasetState,
    Experiment,
    Generator,
    Job,
    JobState,
    RealImage,
    Split,
    SynthesisRequest,
    SyntheticImage,
)
from shared.storage import make_store
from tests.reliability.conftest import LiveApi

pytestmark = [pytest.mark.reliability, pytest.mark.service]

PROBLEM = "application/problem+json"


def _tenant_a_rows(api: LiveApi, tenant_id: uuid.UUID, marker: str) -> dict[str, uuid.UUID]:
    """One row of every kind a path names, owned by ``tenant_id``: path param -> id."""
    ids = {name: uuid.uuid4() for name in ("dataset", "image", "generator", "synthesis")}
    ids |= {name: uuid.uuid4() for name in ("curated", "synthetic", "job", "experiment")}
    report_key = f"reports/{ids['experiment']}/report.html"
    make_store(api.settings).put_bytes(report_key, f"<html>{marker}</html>".encode())
    rows = [
        Dataset(
            id=ids["dataset"],
            tenant_id=tenant_id,
            name=f"{marker}-dataset",
            format="csv",
            state=DatasetState.READY,
            class_names=["DF"],
            class_counts={"DF": 1},
            ingest_job_id=ids["job"],
        ),
        RealImage(
            id=ids["image"],
            dataset_id=ids["dataset"],
            source_path=f"{marker}/patient-0001.png",
            sha256="a" * 64,
            object_key=f"images/{marker}.png",
            label="DF",
            split=Split.TRAIN,
            width=16,
            height=16,
            channels=3,
        ),
        Generator(
            id=ids["generator"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            kind="trained",
            state="ready",
            config={"note": marker},
            checkpoint_sha256="0" * 64,
        ),
        SynthesisRequest(
            id=ids["synthesis"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            generator_id=ids["generator"],
            mode="inpaint",
            counts={"DF": 1},
            curated_set_id=ids["curated"],
        ),
        CuratedSet(
            id=ids["curated"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            synthesis_id=ids["synthesis"],
            state="ready",
            summary={"note": marker},
        ),
        SyntheticImage(
            id=ids["synthetic"],
            tenant_id=tenant_id,
            synthesis_id=ids["synthesis"],
            curated_set_id=ids["curated"],
            index_in_request=0,
            dataset_id=ids["dataset"],
            generator_id=ids["generator"],
            source_image_id=ids["image"],
            object_key=f"synthetic/{marker}.png",
            sha256="b" * 64,
            label="DF",
            mode="inpaint",
            scheduler="ddim",
            steps=10,
            guidance_scale=3.0,
            seed=1,
            checkpoint_sha256="0" * 64,
            job_id=ids["job"],
            decision="ood",
        ),
        Job(
            id=ids["job"],
            tenant_id=tenant_id,
            kind="ingest",
            task_name="tailsynth.ingest_dataset",
            queue="ingest",
            params={"dataset_id": str(ids["dataset"]), "note": marker},
            state=JobState.SUCCEEDED,
            stage="done",
        ),
        Experiment(
            id=ids["experiment"],
            tenant_id=tenant_id,
            dataset_id=ids["dataset"],
            state="succeeded",
            config={"note": marker},
            report_key=report_key,
        ),
    ]
    with api.factory.begin() as session:
        for row in rows:  # in order: each row's foreign keys exist before it
            session.add(row)
            session.flush()
    return {
        "dataset_id": ids["dataset"],
        "generator_id": ids["generator"],
        "curated_set_id": ids["curated"],
        "image_id": ids["synthetic"],
        "job_id": ids["job"],
        "experiment_id": ids["experiment"],
    }


def _path_routes(api: LiveApi) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameter names) of every route with a path id."""
    schema = create_app(api.settings, run_reaper=False).openapi()
    routes = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            if names:
                routes.append((method.upper(), path, names))
    return routes


def test_every_route_with_a_path_id_answers_404_to_another_tenant(
    queued_only_api: LiveApi,
) -> None:
    api = queued_only_api
    owner_key = api.new_key(tenant=f"owner-{uuid.uuid4().hex[:8]}")
    owner_tenant = api.tenant_id(owner_key)
    marker = f"secret{uuid.uuid4().hex[:8]}"
    owned = _tenant_a_rows(api, owner_tenant, marker)
    secrets = [marker, str(owner_tenant), *(str(v) for v in owned.values())]
    routes = _path_routes(api)
    covered: list[str] = []
    with api.client(owner_key) as owner, api.client(api.new_key()) as other:
        for method, template, names in routes:
            missing = [n for n in names if n not in owned]
            assert not missing, f"{method} {template}: no other tenant's id for {missing}"
            path = template.format(**{n: owned[n] for n in names})
            nowhere = template.format(**{n: uuid.uuid4() for n in names})
            answer = other.request(method, path)
            baseline = other.request(method, nowhere)
            where = f"{method} {template}"
            assert answer.status_code == 404, (where, answer.status_code, answer.text)
            assert answer.headers["content-type"].startswith(PROBLEM), where
            assert baseline.status_code == 404, (where, baseline.text)
            # Exactly the answer an unknown id gets, once the asked id is set aside.
            asked = [str(owned[n]) for n in names]
            shown = answer.text
            for value in asked:
                shown = shown.replace(value, "<id>")
            unknown = re.sub(
                r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "<id>",
                baseline.text,
            )
            assert shown == unknown, (where, answer.text, baseline.text)
            leaked = [s for s in secrets if s not in asked and s in answer.text]
            assert not leaked, (where, leaked, answer.text)
            if method == "GET":  # the id is real: its owner reads it
                assert owner.request(method, path).status_code != 404, where
            covered.append(where)
    print(  # noqa: T201
        f"\n(9) {len(covered)} of {len(routes)} routes with a path id called with another "
        f"tenant's ids: all 404 problem+json, nothing leaked ({', '.join(covered)})"
    )
    assert len(covered) == len(routes) > 0
