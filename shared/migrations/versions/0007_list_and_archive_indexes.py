"""indexes for the queries that scanned whole tables: a tenant's datasets and experiments
newest first, and a curated set's kept images in manifest order (the archive's keyset)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 03:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_datasets_tenant_created", "datasets", ["tenant_id", "created_at"])
    op.create_index("ix_experiments_tenant_created", "experiments", ["tenant_id", "created_at"])
    op.create_index(
        "ix_synthetic_images_curated_order",
        "synthetic_images",
        ["curated_set_id", "label", "index_in_request", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_synthetic_images_curated_order", table_name="synthetic_images")
    op.drop_index("ix_experiments_tenant_created", table_name="experiments")
    op.drop_index("ix_datasets_tenant_created", table_name="datasets")
