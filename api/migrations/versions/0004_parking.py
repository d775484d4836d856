"""parking availability: the latest occupancy per parking_bay zone and its history (daily curves)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from api.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "parking_bays",
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("zone_id", sa.String(64), nullable=False),
        sa.Column("grid", sa.String(520), nullable=True),
        sa.Column("occupied", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("free", sa.Integer(), nullable=False),
        sa.Column("observed_at", UtcDateTime(), nullable=False),
        sa.Column("reported_at", UtcDateTime(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("camera_id", "zone_id", name="pk_parking_bays"),
    )
    op.create_table(
        "parking_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("zone_id", sa.String(64), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("occupied", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("free", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_parking_history"),
    )
    op.create_index("ix_parking_history_bay_at", "parking_history", ["camera_id", "zone_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_parking_history_bay_at", table_name="parking_history")
    op.drop_table("parking_history")
    op.drop_table("parking_bays")
