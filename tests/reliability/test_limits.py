"""(12) Body and field limits on the live API: an oversize JSON body answers 413 before it
is read; an over-long string, an over-long list or an out-of-range count answers 422
naming the field, before anything is stored or queued."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import LiveApi, add_owned_rows

pytestmark = [pytest.mark.reliability, pytest.mark.service]

PROBLEM = "application/problem+json"


def _fields(answer: httpx.Response) -> set[str]:
    body = answer.json()
    named = {e["field"] for e in body.get("errors", [])}
    return named | ({body["field"]} if "field" in body else set())


def test_an_oversize_json_body_is_413_declared_or_streamed(queued_only_api: LiveApi) -> None:
    api = queued_only_api
    limit = api.settings.max_json_body_bytes
    body = b'{"dataset_id": "' + b"x" * (limit + 1) + b'"}'
    with api.client() as client:
        declared = client.post(
            "/v1/synthesis", content=body, headers={"content-type": "application/json"}
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        streamed = client.post(
            "/v1/experiments", content=chunks(), headers={"content-type": "application/json"}
        )
    print(  # noqa: T201
        f"\n(12) JSON body of {len(body):,} bytes (limit {limit:,}): "
        f"{declared.status_code} with Content-Length, {streamed.status_code} streamed"
    )
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.headers["content-type"].startswith(PROBLEM)
        assert f"{limit:,}" in answer.json()["detail"]


def test_an_upload_may_be_larger_than_the_json_limit(queued_only_api: LiveApi) -> None:
    api = queued_only_api
    size = api.settings.max_json_body_bytes * 2
    with api.client() as client:
        answer = client.post(
            "/v1/datasets",
            data={"name": "big"},
            files={"file": ("set.zip", b"\0" * size, "application/zip")},
        )
    assert answer.status_code == 422, answer.text  # read whole, then refused as no archive


@pytest.fixture(scope="module")
def owned(queued_only_api: LiveApi) -> Iterator[tuple[str, dict[str, uuid.UUID]]]:
    """A key whose tenant has a ready dataset (one class, DF) and generator."""
    key = queued_only_api.new_key()
    rows = add_owned_rows(
        queued_only_api, queued_only_api.tenant_id(key), f"lim{uuid.uuid4().hex[:6]}"
    )
    yield key, rows


def _cases(ids: dict[str, uuid.UUID]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, path, JSON body or query, the field the 422 must name)."""
    dataset, generator = str(ids["dataset_id"]), str(ids["generator_id"])
    synthesis = {"dataset_id": dataset, "generator_id": generator}
    return [
        # over-long strings
        ("POST", "/v1/datasets/demo", {"name": "n" * 201}, "name"),
        ("POST", "/v1/generators", {"dataset_id": dataset, "modality": "m" * 65}, "modality"),
        ("POST", "/v1/generators", {"dataset_id": dataset, "source": "/" * 1025}, "source"),
        ("POST", "/v1/experiments", {"dataset_id": dataset, "backbone": "b" * 101}, "backbone"),
        ("POST", "/v1/synthesis", {**synthesis, "counts": {"D" * 1000: 1}}, "counts"),
        # over-long lists and maps
        (
            "POST",
            "/v1/generators",
            {"dataset_id": dataset, "training": {"block_out_channels": [32] * 7}},
            "training.block_out_channels",
        ),
        ("POST", "/v1/experiments", {"dataset_id": dataset, "arms": ["ce"] * 21}, "arms"),
        (
            "POST",
            "/v1/synthesis",
            {**synthesis, "counts": {f"c{i}": 1 for i in range(1001)}},
            "counts",
        ),
        # counts and other numbers out of range
        ("POST", "/v1/synthesis", {**synthesis, "counts": {"DF": 10**12}}, "counts.DF"),
        ("POST", "/v1/synthesis", {**synthesis, "counts": {"DF": -1}}, "counts.DF"),
        ("POST", "/v1/synthesis", {**synthesis, "counts": {"DF": 1}, "seed": 2**62}, "seed"),
        ("POST", "/v1/datasets/demo", {"total": 10**9}, "total"),
        ("POST", "/v1/datasets/demo", {"split_seed": 2**40}, "split_seed"),
        ("POST", "/v1/datasets/demo", {"seed": 2**70}, "seed"),
        (
            "POST",
            "/v1/generators",
            {"dataset_id": dataset, "training": {"block_out_channels": [32, 64, 10**9]}},
            "training.block_out_channels.2",
        ),
        (
            "POST",
            "/v1/generators",
            {"dataset_id": dataset, "training": {"seed": 2**70}},
            "training.seed",
        ),
        (
            "POST",
            "/v1/generators",
            {"dataset_id": dataset, "training": {"checkpoint_every": 2**70}},
            "training.checkpoint_every",
        ),
        ("GET", "/v1/jobs", {"limit": 501}, "limit"),
        ("GET", "/v1/experiments", {"offset": 2**63}, "offset"),
    ]


def test_over_long_and_out_of_range_fields_are_422_naming_the_field(
    queued_only_api: LiveApi, owned: tuple[str, dict[str, uuid.UUID]]
) -> None:
    key, ids = owned
    cases = _cases(ids)
    wrong = []
    with queued_only_api.client(key) as client:
        for method, path, payload, field in cases:
            if method == "GET":
                answer = client.get(path, params=payload)
            else:
                answer = client.post(path, json=payload)
            named = _fields(answer)
            if answer.status_code != 422 or not any(
                f == field or f.startswith(f"{field}.") for f in named
            ):
                wrong.append(
                    f"{method} {path} {str(payload)[:80]}: {answer.status_code} {answer.text[:300]}"
                )
        upload = client.post(  # a form field of the multipart upload
            "/v1/datasets",
            data={"name": "n", "split_seed": str(2**40)},
            files={"file": ("set.zip", b"PK", "application/zip")},
        )
        if upload.status_code != 422 or "split_seed" not in _fields(upload):
            wrong.append(f"POST /v1/datasets split_seed=2**40: {upload.status_code} {upload.text}")
    cases.append(("POST", "/v1/datasets", {}, "split_seed"))
    print(  # noqa: T201
        f"\n(12) {len(cases)} over-long or out-of-range fields: "
        f"{len(cases) - len(wrong)} answered 422 naming the field"
    )
    assert not wrong, "\n".join(wrong)


def test_an_over_long_idempotency_key_is_422(queued_only_api: LiveApi) -> None:
    with queued_only_api.client() as client:
        answer = client.post("/v1/datasets/demo", json={}, headers={"Idempotency-Key": "k" * 256})
    assert answer.status_code == 422 and "Idempotency-Key" in _fields(answer), answer.text
