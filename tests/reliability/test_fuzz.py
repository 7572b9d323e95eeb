"""(10) Schemathesis against the live API: generated requests, not one answered 5xx.

Every operation of the OpenAPI schema gets requests that fit it (positive) and that
break it (negative: wrong types, out-of-range values, missing fields), with a valid key
of a tenant that owns one row of every kind; half the path and body ids are that
tenant's real ones, so requests get past the lookup into the work behind it. Runs
against ``tailsynth api`` on Postgres, Redis and S3, whose queue no worker consumes.
Derandomized: the same requests on every run.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from services.api.app import create_app
from tests.reliability.conftest import LiveApi, add_owned_rows

pytestmark = [pytest.mark.reliability, pytest.mark.service]

#: Examples per operation and generation mode: 19 operations x 2 modes x 60, less what a
#: mode cannot vary.
EXAMPLES = 60
MIN_REQUESTS = 1_000


def _with_real_ids(case: Case, use_real: bool, owned: dict[str, uuid.UUID]) -> Case:
    if not use_real:
        return case
    for name in list(case.path_parameters or {}):
        if name in owned:
            case.path_parameters[name] = str(owned[name])
    if isinstance(case.body, dict):
        for name in ("dataset_id", "generator_id"):
            if name in case.body:
                case.body[name] = str(owned[name])
    return case


def test_generated_requests_never_get_a_5xx(queued_only_api: LiveApi) -> None:
    api = queued_only_api
    key = api.new_key()
    owned = add_owned_rows(api, api.tenant_id(key), f"fuzz{uuid.uuid4().hex[:6]}")
    schema = schemathesis.openapi.from_dict(create_app(api.settings, run_reaper=False).openapi())
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.builds(
                _with_real_ids,
                operation.as_strategy(generation_mode=mode),
                st.booleans(),
                st.just(owned),
            )

            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @hypothesis.given(case=strategy)
            def send(case: Case) -> None:
                response = case.call(
                    base_url=api.url, headers={"authorization": f"Bearer {key}"}, timeout=30
                )
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(
                        f"{response.status_code} {case.method} {case.formatted_path} "
                        f"query={case.query} body={_short(case.body)}: {response.text[:300]}"
                    )

            try:
                send()
            except hypothesis.errors.Unsatisfiable:  # nothing to break (GET /v1/health)
                assert mode == GenerationMode.NEGATIVE, operation.label
    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    print(  # noqa: T201
        f"\n(10) schemathesis: {total} generated requests to {len(operations)} operations in "
        f"{elapsed:.0f} s: {sum(n for s, n in statuses.items() if s >= 500)} answered 5xx; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    assert not server_errors, "\n".join(server_errors[:30])
    assert total >= MIN_REQUESTS


def _short(body: Any) -> str:
    text = repr(body)
    return text if len(text) < 300 else text[:300] + "..."
