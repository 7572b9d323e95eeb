"""The migrations build exactly the schema the models declare, and the indexes serve the
queries they were added for (real Postgres, a schema of the test's own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text

from services.api.curated_archive import kept_page_query
from shared.migrate import downgrade, upgrade
from shared.models import Base
from tests.fixtures.services import temporary_schema


@pytest.fixture
def fresh_engine() -> Iterator[Engine]:
    """An engine on a new, empty Postgres schema, dropped afterwards."""
    with temporary_schema("ts_migrate_") as url:
        engine = create_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def drift(engine: Engine) -> list[object]:
    """What autogenerate would add or drop to make the database match the models."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_head_matches_the_models_and_the_last_migration_round_trips(
    fresh_engine: Engine,
) -> None:
    upgrade(fresh_engine)
    assert drift(fresh_engine) == []

    downgrade(fresh_engine, "-1")
    missing = drift(fresh_engine)
    assert missing, "downgrading the last migration changed nothing the models declare"

    upgrade(fresh_engine)
    assert drift(fresh_engine) == []


@pytest.mark.parametrize("after", [None, ("DF", 17, uuid.UUID(int=5))])
def test_the_archive_reads_kept_images_by_index_in_manifest_order(
    fresh_engine: Engine, after: tuple[str, int, uuid.UUID] | None
) -> None:
    """Each page of a curated set's archive is a range of the curated-order index: no
    sort, whichever page (the planner is told to avoid full scans, as it would on a
    table of millions of candidates)."""
    upgrade(fresh_engine)
    query = kept_page_query(uuid.uuid4(), after, 500)
    with fresh_engine.connect() as connection:
        connection.execute(text("SET enable_seqscan = off"))
        compiled = query.compile(connection, compile_kwargs={"literal_binds": True})
        plan = "\n".join(connection.execute(text(f"EXPLAIN {compiled}")).scalars())
    assert "ix_synthetic_images_curated_order" in plan, plan
    assert "Sort" not in plan, plan
