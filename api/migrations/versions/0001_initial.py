"""initial schema: events, event_messages, evidence, cameras, users, audit_log

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from api.models import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("zone_id", sa.String(64), nullable=True),
        sa.Column("grid", sa.String(520), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("dwell_s", sa.Float(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("disposition_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_started", "events", ["started_at", "id"])
    op.create_index("ix_events_type_started", "events", ["type", "started_at", "id"])
    op.create_index("ix_events_camera_started", "events", ["camera_id", "started_at", "id"])
    op.create_index("ix_events_grid", "events", ["grid"])
    op.create_table(
        "event_messages",
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("event_id", "seq", name="pk_event_messages"),
    )
    op.create_table(
        "evidence",
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("taken_at", UtcDateTime(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("path", sa.String(300), nullable=True),
        sa.Column("stored_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], name="fk_evidence_event_id_events"),
        sa.PrimaryKeyConstraint("event_id", "name", name="pk_evidence"),
    )
    op.create_table(
        "cameras",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("grid", sa.String(520), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("last_frame_at", UtcDateTime(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=False),
        sa.Column("frames", sa.BigInteger(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.Column("reconnects", sa.BigInteger(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("reported_at", UtcDateTime(), nullable=True),
        sa.Column("state_since", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cameras"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("cameras", sa.JSON(), nullable=True),
        sa.Column("grids", sa.JSON(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("password_changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target_type", sa.String(16), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("remark", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_target", "audit_log", ["target_type", "target_id", "id"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION pingan_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION pingan_audit_append_only()"
        )


def downgrade() -> None:
    for table in ("audit_log", "users", "cameras", "evidence", "event_messages", "events"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS pingan_audit_append_only()")
