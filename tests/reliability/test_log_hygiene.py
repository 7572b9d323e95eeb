"""(14) A real flow leaves no API key, image path or patient id in any log line at INFO.

A tenant uploads a CSV-manifest archive (image entries named with a marker, a patient
id with another in the group column, one image corrupt so the ingest has something
to report), the real worker ingests it, the tenant reads the dataset and its job, and
someone tries a wrong key. The API server (``tailsynth -v api``) and the Celery worker
both log at INFO; none of their lines may carry those values.
"""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from shared.demo_dataset import generate_demo_samples
from shared.imaging import encode_png
from shared.models import Tenant
from tests.fixtures.archives import corrupt_png, write_zip
from tests.fixtures.services import ManagedProcess, wait_for
from tests.reliability.conftest import LiveApi

pytestmark = [pytest.mark.reliability, pytest.mark.service]


def _archive(
    tmp: Path, image_marker: str, patient_marker: str, *, long_id: bool = False
) -> tuple[Path, list[str], list[str]]:
    """A csv-format archive: its path, its image entry names and its patient ids (with
    ``long_id``, one id is longer than the database's column)."""
    samples = generate_demo_samples(40, image_size=16, seed=5)
    files: dict[str, bytes] = {}
    rows = []
    patients = []
    for i, sample in enumerate(samples):
        image = f"images/{image_marker}-{i:03d}.png"
        patient = f"{patient_marker}-{i % 7}" + ("-x" * 200 if long_id and i == 3 else "")
        files[f"data/{image}"] = encode_png(sample.image) if i else corrupt_png()
        rows.append([image, sample.label, patient])
        patients.append(patient)
    text = io.StringIO()
    csv.writer(text).writerows([["path", "label", "group"], *rows])
    files["data/manifest.csv"] = text.getvalue().encode()
    path = write_zip(tmp / f"scans{'-long' if long_id else ''}.zip", files)
    return path, [f"data/{row[0]}" for row in rows], sorted(set(patients))


def test_no_key_image_path_or_patient_id_in_any_log_line(
    working_api: LiveApi, service_worker: ManagedProcess, tmp_path: Path
) -> None:
    api = working_api
    image_marker, patient_marker = f"scan{uuid.uuid4().hex[:10]}", f"pt{uuid.uuid4().hex[:10]}"
    archive, entries, patients = _archive(tmp_path, image_marker, patient_marker)
    refused, _, _ = _archive(tmp_path, image_marker, patient_marker, long_id=True)
    key = api.new_key()
    with api.client(key) as client:
        # Refused by line before anything is stored: no database error carrying its values.
        answer = client.post(
            "/v1/datasets",
            data={"name": "hygiene"},
            files={"file": (refused.name, refused.read_bytes(), "application/zip")},
        )
        assert answer.status_code == 422 and "group is longer than 256" in answer.text
        created = client.post(
            "/v1/datasets",
            data={"name": "hygiene"},
            files={"file": (archive.name, archive.read_bytes(), "application/zip")},
            headers={"Idempotency-Key": f"hygiene-{uuid.uuid4().hex}"},
        )
        assert created.status_code == 202, created.text
        job_id, dataset_id = created.json()["job_id"], created.json()["dataset_id"]

        def final() -> bool:
            return client.get(f"/v1/jobs/{job_id}").json()["state"] in ("succeeded", "failed")

        wait_for(final, 180, f"ingest job {job_id}", interval=0.5)
        job = client.get(f"/v1/jobs/{job_id}").json()
        dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert job["state"] == "succeeded", job
    assert dataset["ingest_report"], dataset  # the corrupt image was reported to its owner
    with api.client(key[:-4] + "XXXX") as wrong:
        assert wrong.get("/v1/jobs").status_code == 401
    secret = key.rsplit("_", 1)[1]
    forbidden = {"API key": [key, secret], "image path": entries, "patient id": patients}
    forbidden["marker"] = [image_marker, patient_marker]  # any part of a name or id
    logs = {"api": api.process.log(), "worker": service_worker.log()}
    found = [
        f"{source}: {what} {value!r} in: {line[:200]}"
        for source, text in logs.items()
        for line in text.splitlines()
        for what, values in forbidden.items()
        for value in values
        if value in line
    ]
    lines = sum(len(text.splitlines()) for text in logs.values())
    print(  # noqa: T201
        f"\n(14) {lines} log lines at INFO (API {len(logs['api'].splitlines())}, worker "
        f"{len(logs['worker'].splitlines())}) after an upload of {len(entries)} images of "
        f"{len(patients)} patients and its ingest: {len(found)} carry a key, image path or "
        "patient id"
    )
    assert not found, "\n".join(found[:20])


def test_a_database_error_names_no_value_of_its_statement(working_api: LiveApi) -> None:
    """The root of the leak the flow above once showed: a database error's message (logged
    with its traceback) listed every value bound to the statement."""
    patient = f"pt{uuid.uuid4().hex[:10]}-" + "x" * 300
    with pytest.raises(DBAPIError) as raised, working_api.factory.begin() as session:
        session.execute(update(Tenant).where(Tenant.id == uuid.uuid4()).values(name=patient))
    text = str(raised.value)
    assert "value too long" in text and patient not in text and "hidden" in text, text
