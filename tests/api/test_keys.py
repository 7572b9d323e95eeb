"""API keys: ``tailsynth keys create|list|revoke`` on the embedded deployment; a revoked
key is refused from its next request on; a key's last use is recorded, at most once a
minute."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from services.api.app import create_app
from services.cli import main
from shared.db import make_engine, make_session_factory
from shared.models import ApiKey, utcnow
from shared.settings import Settings


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI sets TAILSYNTH_DATA_DIR in this process; it is put back after the test."""
    monkeypatch.setenv("TAILSYNTH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _cli(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    _cli(data_dir, "db", "upgrade")
    with TestClient(create_app(Settings(data_dir=data_dir), run_reaper=False)) as client:
        yield client


def _keys(data_dir: Path) -> list[dict[str, str | None]]:
    return json.loads(_cli(data_dir, "keys", "list", "--json"))  # type: ignore[no-any-return]


def _last_used(data_dir: Path) -> list[object]:
    engine = make_engine(Settings(data_dir=data_dir))
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(ApiKey.last_used_at).order_by(ApiKey.created_at)))
    finally:
        engine.dispose()


def test_a_revoked_key_is_refused_from_its_next_request_on(
    data_dir: Path, client: TestClient
) -> None:
    key = _cli(data_dir, "keys", "create", "--name", "ci").strip()
    other = _cli(data_dir, "keys", "create", "--name", "laptop").strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200

    out = _cli(data_dir, "keys", "revoke", key.split("_")[1])
    assert out.startswith("revoked: ") and "(ci)" in out

    refused = client.get("/v1/jobs", headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    assert _cli(data_dir, "keys", "revoke", key).startswith("already revoked: ")
    listed = {row["name"]: row for row in _keys(data_dir)}
    assert listed["ci"]["revoked_at"] is not None and listed["laptop"]["revoked_at"] is None


def test_revoking_an_unknown_key_fails_and_changes_nothing(
    data_dir: Path, client: TestClient
) -> None:
    _cli(data_dir, "keys", "create", "--name", "ci")
    result = CliRunner().invoke(main, ["keys", "revoke", "0badc0de", "--data-dir", str(data_dir)])
    assert result.exit_code != 0 and "no API key has id or prefix '0badc0de'" in result.output
    assert [row["revoked_at"] for row in _keys(data_dir)] == [None]


def test_keys_list_shows_each_key_once_without_its_secret(
    data_dir: Path, client: TestClient
) -> None:
    key = _cli(data_dir, "keys", "create", "--name", "ci", "--tenant", "radiology").strip()
    _cli(data_dir, "keys", "create", "--name", "other", "--tenant", "dermatology")
    table = _cli(data_dir, "keys", "list")
    assert table.splitlines()[0].split() == [
        "id", "prefix", "name", "tenant", "created_at", "last_used_at", "revoked_at"
    ]  # fmt: skip
    assert len(table.splitlines()) == 3 and key not in table
    assert f"ts_{key.split('_')[1]}_" in table
    only = json.loads(_cli(data_dir, "keys", "list", "--json", "--tenant", "radiology"))
    assert [(row["name"], row["tenant"]) for row in only] == [("ci", "radiology")]


def test_last_use_is_recorded_at_most_once_a_minute(data_dir: Path, client: TestClient) -> None:
    key = _cli(data_dir, "keys", "create", "--name", "ci").strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert _last_used(data_dir) == [None]
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    (first,) = _last_used(data_dir)
    assert first is not None
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert _last_used(data_dir) == [first]  # within the minute: not written again

    engine = make_engine(Settings(data_dir=data_dir))
    with make_session_factory(engine).begin() as session:
        session.execute(update(ApiKey).values(last_used_at=utcnow() - timedelta(minutes=2)))
    engine.dispose()
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    (later,) = _last_used(data_dir)
    assert later is not None and later > first  # type: ignore[operator]
    assert _keys(data_dir)[0]["last_used_at"] is not None
