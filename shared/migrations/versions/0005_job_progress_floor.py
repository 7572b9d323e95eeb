"""jobs keep one progress across their stages: where the job was when its stage began

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("progress_floor", sa.Float(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("jobs", "progress_floor")
