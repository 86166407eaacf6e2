"""segment freshness and deletable segments

- ix_users_updated_at: the membership refresher finds the users whose profile or events
  changed since its last pass (ingestion already bumps users.updated_at).
- A segment can be deleted once no active campaign or automation uses it: finished or
  draft campaigns and inactive automations keep their row with segment_id NULL
  (the contract's 409 covers the active ones; the service checks those first).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_users_updated_at", "users", ["updated_at"], unique=False)
    op.alter_column("campaigns", "segment_id", existing_type=sa.String(length=40),
                    nullable=True)
    for table in ("campaigns", "automations"):
        name = f"fk_{table}_segment_id_segments"
        op.drop_constraint(name, table, type_="foreignkey")
        op.create_foreign_key(name, table, "segments", ["segment_id"], ["id"],
                              ondelete="SET NULL")


def downgrade() -> None:
    for table in ("campaigns", "automations"):
        name = f"fk_{table}_segment_id_segments"
        op.drop_constraint(name, table, type_="foreignkey")
        op.create_foreign_key(name, table, "segments", ["segment_id"], ["id"],
                              ondelete="RESTRICT")
    op.execute("DELETE FROM campaigns WHERE segment_id IS NULL")
    op.alter_column("campaigns", "segment_id", existing_type=sa.String(length=40),
                    nullable=False)
    op.drop_index("ix_users_updated_at", table_name="users")
