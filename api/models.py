"""SQLAlchemy 2 tables. Portable across SQLite and PostgreSQL: times are stored as UTC (see UtcDateTime)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite gets naive UTC text (sorts right), PostgreSQL timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON}


class EventRow(Base):
    """The latest message (highest seq) of each event, plus the API-side disposition."""

    __tablename__ = "events"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    camera_id: Mapped[str] = mapped_column(String(64))
    zone_id: Mapped[str | None] = mapped_column(String(64))
    grid: Mapped[str | None] = mapped_column(String(520))
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    dwell_s: Mapped[float] = mapped_column(Float)
    seq: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    disposition: Mapped[str] = mapped_column(String(16), default="new")
    disposition_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    received_at: Mapped[datetime]
    escalated_at: Mapped[datetime | None]  # unacknowledged past its SLA (api.sla; migration 0005)

    __table_args__ = (
        Index("ix_events_started", "started_at", "id"),
        Index("ix_events_type_started", "type", "started_at", "id"),
        Index("ix_events_camera_started", "camera_id", "started_at", "id"),
        Index("ix_events_grid", "grid"),
        Index("ix_events_disposition_started", "disposition", "started_at", "id"),
    )


class EventMessageRow(Base):
    """Every (id, seq) received once: the de-duplication key, with the message as received."""

    __tablename__ = "event_messages"
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime]
    worker: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_event_messages_received", "received_at"),)  # webhook sweep (0003)


class EvidenceRow(Base):
    __tablename__ = "evidence"
    event_id: Mapped[str] = mapped_column(String(36), ForeignKey("events.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    taken_at: Mapped[datetime]
    size: Mapped[int | None] = mapped_column(BigInteger)
    path: Mapped[str | None] = mapped_column(String(300))  # relative to media_dir
    stored_at: Mapped[datetime | None]


class CameraRow(Base):
    __tablename__ = "cameras"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    grid: Mapped[str | None] = mapped_column(String(520))
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    reason: Mapped[str | None] = mapped_column(String(500))
    last_frame_at: Mapped[datetime | None]
    fps: Mapped[float] = mapped_column(Float, default=0.0)
    frames: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    reconnects: Mapped[int] = mapped_column(BigInteger, default=0)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # detections, gated, undecoded, detector_ms, …
    reported_at: Mapped[datetime | None]
    state_since: Mapped[datetime | None]


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    cameras: Mapped[list[str] | None] = mapped_column(JSON)  # None: every camera
    grids: Mapped[list[str] | None] = mapped_column(JSON)  # grid prefixes; None: no grid limit
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]


class AuditRow(Base):
    """Append-only (triggers refuse UPDATE and DELETE): dispositions, user and camera administration."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    target_type: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    remark: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_audit_target", "target_type", "target_id", "id"),)


class WebhookDeliveryRow(Base):
    """The durable push queue and its log (api.webhooks): one row per (endpoint, event message)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent, every attempt
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]  # pending: due time (or a sender's lease); None when done
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status of the last attempt
    last_error: Mapped[str | None] = mapped_column(String(500))
    history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # the last attempts

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", "seq", name="uq_webhook_deliveries_message"),
        Index("ix_webhook_deliveries_endpoint_status", "endpoint_id", "status", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),
    )


class ParkingBayRow(Base):
    """The latest reported occupancy of each ``parking_bay`` zone (a bay, or a lot polygon with capacity)."""

    __tablename__ = "parking_bays"
    camera_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    zone_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    grid: Mapped[str | None] = mapped_column(String(520))
    occupied: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)
    free: Mapped[int] = mapped_column(Integer)
    observed_at: Mapped[datetime]  # the stream time the worker measured it
    reported_at: Mapped[datetime]  # when the API received the last report
    changed_at: Mapped[datetime]  # stream time of the last change of occupied/capacity


class ParkingHistoryRow(Base):
    """Occupancy over time, one row per change (and a keep-alive row at most every few minutes)."""

    __tablename__ = "parking_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(64))
    zone_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    occupied: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)
    free: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_parking_history_bay_at", "camera_id", "zone_id", "at"),)
