"""index for the operators' queue: events by disposition, newest first

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_disposition_started", "events", ["disposition", "started_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_disposition_started", table_name="events")
