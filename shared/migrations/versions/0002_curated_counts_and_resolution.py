"""curated sets hold what was asked: generation rounds, candidate vs delivered image

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "synthesis_requests",
        sa.Column("top_up_rounds", sa.JSON(), nullable=False, server_default="[]"),
    )
    op.add_column(
        "synthetic_images",
        sa.Column("generation_round", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("synthetic_images", sa.Column("candidate_key", sa.String(512), nullable=True))
    op.add_column("synthetic_images", sa.Column("candidate_sha256", sa.String(64), nullable=True))
    op.add_column("synthetic_images", sa.Column("candidate_size", sa.Integer(), nullable=True))
    op.add_column("synthetic_images", sa.Column("size", sa.Integer(), nullable=True))
    op.add_column("synthetic_images", sa.Column("resize_method", sa.String(16), nullable=True))
    # Rows written before this revision deliver their candidate as generated.
    op.execute("UPDATE synthetic_images SET candidate_key = object_key, candidate_sha256 = sha256")


def downgrade() -> None:
    for column in (
        "resize_method",
        "size",
        "candidate_size",
        "candidate_sha256",
        "candidate_key",
        "generation_round",
    ):
        op.drop_column("synthetic_images", column)
    op.drop_column("synthesis_requests", "top_up_rounds")
