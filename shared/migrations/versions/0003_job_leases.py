"""jobs are claimed with a lease: owner, lease end, attempts of the current stage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("worker_id", sa.String(255), nullable=True))
    op.add_column("jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "jobs", sa.Column("stage_attempts", sa.Integer(), nullable=False, server_default="0")
    )
    # A job running before this revision has no lease: its last heartbeat ends it, so the
    # reaper re-sends it once if its worker is gone (workers restart on an upgrade).
    op.execute(
        "UPDATE jobs SET lease_until = heartbeat_at, stage_attempts = attempts "
        "WHERE state = 'running'"
    )


def downgrade() -> None:
    op.drop_column("jobs", "stage_attempts")
    op.drop_column("jobs", "lease_until")
    op.drop_column("jobs", "worker_id")
