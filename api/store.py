"""Persistence: events (latest message per id, de-duplicated by (id, seq)), evidence, cameras, users, audit.

Plain SQLAlchemy Core over the tables in ``api.models``; the SQL is portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import Connection, Engine, Table, and_, bindparam, false, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from api.errors import BadRequest, Conflict, NotFound
from api.models import AuditRow, CameraRow, EventMessageRow, EventRow, EvidenceRow, UserRow
from api.settings import CameraInfo
from pipeline.events import Event

events_t = cast(Table, EventRow.__table__)
messages_t = cast(Table, EventMessageRow.__table__)
evidence_t = cast(Table, EvidenceRow.__table__)
cameras_t = cast(Table, CameraRow.__table__)
users_t = cast(Table, UserRow.__table__)
audit_t = cast(Table, AuditRow.__table__)

PutStatus = Literal["created", "updated", "stale", "duplicate"]

DISPOSITIONS = ("new", "acknowledged", "dispatched", "resolved", "false_alarm")
# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "acknowledge": (frozenset({"new"}), "acknowledged"),
    "dispatch": (frozenset({"new", "acknowledged"}), "dispatched"),
    "resolve": (frozenset({"acknowledged", "dispatched"}), "resolved"),
    "false_alarm": (frozenset({"new", "acknowledged", "dispatched"}), "false_alarm"),
    "reopen": (frozenset({"resolved", "false_alarm"}), "new"),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Scope:
    """What a principal may see. None means no limit on that axis; cameras and grids add up (union)."""

    cameras: frozenset[str] | None = None
    grids: tuple[str, ...] | None = None
    types: frozenset[str] | None = None

    @property
    def unlimited_place(self) -> bool:
        return self.cameras is None and self.grids is None

    def allows(self, camera_id: str, grid: str | None, type_: str | None = None) -> bool:
        if self.types is not None and type_ is not None and type_ not in self.types:
            return False
        if self.unlimited_place:
            return True
        if self.cameras is not None and camera_id in self.cameras:
            return True
        return grid is not None and any(grid == g or grid.startswith(g + "/") for g in self.grids or ())


EVERYTHING = Scope()


@dataclass
class EventFilter:
    type: str | None = None
    camera_id: str | None = None
    zone_id: str | None = None
    state: str | None = None
    disposition: str | None = None
    grid: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    plate: str | None = None  # exact plate text, or a prefix ending in '*' (e.g. 京A*)


@dataclass
class EventView:
    """An event as the API shows it: the latest wire message plus API-side fields."""

    payload: dict[str, Any]
    disposition: str
    disposition_at: datetime | None
    created_at: datetime
    received_at: datetime
    evidence: list[dict[str, Any]] = field(default_factory=list)
    escalated_at: datetime | None = None  # unacknowledged past its SLA (api.sla)

    @property
    def id(self) -> str:
        return str(self.payload["id"])


def encode_cursor(started_at: datetime, event_id: str) -> str:
    raw = json.dumps([started_at.isoformat(), event_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        s, i = json.loads(raw)
        ts = datetime.fromisoformat(s)
        if ts.tzinfo is None or not isinstance(i, str) or len(i) > 36:
            raise ValueError("bad cursor")
        return ts, i
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as err:
        raise BadRequest("cursor is not valid") from err


def _place_clause(scope: Scope, camera_col: Any, grid_col: Any) -> ColumnElement[bool] | None:
    if scope.unlimited_place:
        return None
    parts: list[ColumnElement[bool]] = []
    if scope.cameras:
        parts.append(camera_col.in_(sorted(scope.cameras)))
    for g in scope.grids or ():
        parts.append(or_(grid_col == g, grid_col.startswith(g + "/", autoescape=True)))
    return or_(*parts) if parts else false()


def _scope_clauses(scope: Scope) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if scope.types is not None:
        out.append(events_t.c.type.in_(sorted(scope.types)))
    place = _place_clause(scope, events_t.c.camera_id, events_t.c.grid)
    if place is not None:
        out.append(place)
    return out


@dataclass(frozen=True)
class PutOutcome:
    """What storing one message did: ``view`` is set when the visible event changed (created/updated)."""

    status: PutStatus | Literal["conflict"]
    view: EventView | None = None
    error: str | None = None


_EVENT_FIELDS = (
    "state",
    "zone_id",
    "grid",
    "updated_at",
    "ended_at",
    "dwell_s",
    "seq",
    "payload",
    "received_at",
)
_EVIDENCE_VALUES = ("sha256", "kind", "taken_at")


@dataclass
class _Batch:
    """The writes one ``put_events`` transaction collects, issued at its end as one executemany each."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    created: dict[str, None] = field(default_factory=dict)  # ordered sets of event ids
    updated: dict[str, None] = field(default_factory=dict)
    evidence_new: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    evidence_changed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def write(self, c: Connection, rows: dict[str, dict[str, Any]]) -> None:
        if self.messages:
            c.execute(insert(messages_t), self.messages)
        if self.created:
            c.execute(insert(events_t), [rows[i] for i in self.created])
        if self.updated:
            c.execute(
                update(events_t).where(events_t.c.id == bindparam("b_id")),
                [{"b_id": i, **{k: rows[i][k] for k in _EVENT_FIELDS}} for i in self.updated],
            )
        if self.evidence_new:
            c.execute(
                insert(evidence_t),
                [
                    {k: e[k] for k in ("event_id", "name", *_EVIDENCE_VALUES)}
                    for e in self.evidence_new.values()
                ],
            )
        if self.evidence_changed:
            c.execute(
                update(evidence_t).where(
                    evidence_t.c.event_id == bindparam("b_event_id"), evidence_t.c.name == bindparam("b_name")
                ),
                [
                    {"b_event_id": eid, "b_name": name, **{k: e[k] for k in _EVIDENCE_VALUES}}
                    for (eid, name), e in self.evidence_changed.items()
                ],
            )


def _evidence_item(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": e["name"],
        "kind": e["kind"],
        "sha256": e["sha256"],
        "taken_at": e["taken_at"],
        "size": e["size"],
        "stored": e["stored_at"] is not None,
    }


def _memory_view(row: dict[str, Any], evidence: dict[str, dict[str, Any]]) -> EventView:
    """The view ``Store.get_event`` would read back for ``row`` inside the writing transaction."""
    return EventView(
        payload=dict(row["payload"]),
        disposition=row["disposition"],
        disposition_at=row.get("disposition_at"),
        created_at=row["created_at"],
        received_at=row["received_at"],
        evidence=[
            _evidence_item(e) for e in sorted(evidence.values(), key=lambda e: (e["taken_at"], e["name"]))
        ],
        escalated_at=row.get("escalated_at"),
    )


class Store:
    def __init__(self, engine: Engine, media_dir: Path) -> None:
        self.engine = engine
        self.media_dir = media_dir

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(pingan_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def ping(self) -> bool:
        with self._read() as c:
            return c.execute(select(1)).scalar() == 1

    # ---- events ---------------------------------------------------------------------------------

    def put_event(self, ev: Event, worker: str | None = None) -> tuple[PutStatus, EventView | None]:
        """Store one message idempotently. Returns the outcome and, when the visible event changed, its
        view. Raises Conflict when the id belongs to another camera or event type."""
        out = self.put_events([ev], worker)[0]
        if out.status == "conflict":
            raise Conflict(out.error or "conflict")
        return out.status, out.view

    def put_events(
        self, evs: Sequence[Event], worker: str | Sequence[str | None] | None = None
    ) -> list[PutOutcome]:
        """Store messages idempotently, in order, in ONE transaction; one outcome per message. Each has the
        semantics of ``put_event`` (a later message of the batch sees the earlier ones); a message whose id
        belongs to another camera or event type is ``conflict`` and not recorded, the others are. ``worker``
        is recorded with every message, or is one name per message (a bus batch mixes compounds)."""
        if not evs:
            return []
        workers = [worker] * len(evs) if worker is None or isinstance(worker, str) else list(worker)
        if len(workers) != len(evs):
            raise ValueError(f"{len(workers)} workers for {len(evs)} messages")
        for attempt in range(3):
            try:
                return self._put_events(evs, workers)
            except IntegrityError:  # a concurrent insert of the same id/seq (PostgreSQL): retry sees it
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _put_events(self, evs: Sequence[Event], workers: Sequence[str | None]) -> list[PutOutcome]:
        """Constant statements per batch: three look-ups (seen (id, seq), event rows, their evidence), then
        one executemany per table and kind of write. Views are built from what the transaction knows."""
        now = utcnow()
        ids = sorted({ev.id for ev in evs})
        with self._write() as c:
            seqs = sorted({ev.seq for ev in evs})
            seen = {
                (r.event_id, r.seq)
                for r in c.execute(
                    select(messages_t.c.event_id, messages_t.c.seq).where(
                        messages_t.c.event_id.in_(ids), messages_t.c.seq.in_(seqs)
                    )
                )
            }
            rows: dict[str, dict[str, Any]] = {
                r.id: dict(r._mapping) for r in c.execute(select(events_t).where(events_t.c.id.in_(ids)))
            }
            have: dict[str, dict[str, dict[str, Any]]] = {i: {} for i in ids}
            if rows:
                for e in c.execute(select(evidence_t).where(evidence_t.c.event_id.in_(sorted(rows)))):
                    have[e.event_id][e.name] = dict(e._mapping)
            batch = _Batch()
            out: list[PutOutcome] = []
            for ev, worker in zip(evs, workers, strict=True):
                if (ev.id, ev.seq) in seen:
                    out.append(PutOutcome("duplicate"))
                    continue
                row = rows.get(ev.id)
                if row is not None and (row["camera_id"] != ev.camera_id or row["type"] != ev.type.value):
                    out.append(
                        PutOutcome("conflict", error="event id already used by another camera or event type")
                    )
                    continue
                seen.add((ev.id, ev.seq))
                status = self._apply(batch, rows, ev, row, now, worker)
                self._declare_evidence(batch, have[ev.id], ev, newest=status != "stale")
                if status == "stale":
                    out.append(PutOutcome(status))
                else:
                    out.append(PutOutcome(status, _memory_view(rows[ev.id], have[ev.id])))
            batch.write(c, rows)
            return out

    @staticmethod
    def _apply(
        batch: _Batch,
        rows: dict[str, dict[str, Any]],
        ev: Event,
        row: dict[str, Any] | None,
        now: datetime,
        worker: str | None,
    ) -> PutStatus:
        payload = ev.to_wire()
        batch.messages.append(
            {
                "event_id": ev.id,
                "seq": ev.seq,
                "state": ev.state.value,
                "payload": payload,
                "received_at": now,
                "worker": worker,
            }
        )
        fields = {
            "state": ev.state.value,
            "zone_id": ev.zone_id,
            "grid": ev.grid,
            "updated_at": ev.updated_at,
            "ended_at": ev.ended_at,
            "dwell_s": ev.dwell_s,
            "seq": ev.seq,
            "payload": payload,
            "received_at": now,
        }
        if row is None:
            rows[ev.id] = {
                "id": ev.id,
                "type": ev.type.value,
                "camera_id": ev.camera_id,
                "started_at": ev.started_at,
                "disposition": "new",
                "created_at": now,
                **fields,
            }
            batch.created[ev.id] = None
            return "created"
        if ev.seq > row["seq"]:
            # started_at stays as first stored: it is the pagination key and must not move.
            if row["started_at"] != ev.started_at:
                fields["payload"] = {
                    **payload,
                    "started_at": row["started_at"].isoformat().replace("+00:00", "Z"),
                }
            row.update(fields)
            if ev.id not in batch.created:
                batch.updated[ev.id] = None
            return "updated"
        return "stale"

    @staticmethod
    def _declare_evidence(batch: _Batch, have: dict[str, dict[str, Any]], ev: Event, newest: bool) -> None:
        for e in ev.evidence:
            old = have.get(e.name)
            values = {"sha256": e.sha256, "kind": e.kind, "taken_at": e.taken_at}
            if old is None:
                have[e.name] = {"event_id": ev.id, "name": e.name, **values, "size": None, "stored_at": None}
                batch.evidence_new[(ev.id, e.name)] = have[e.name]
            elif newest and old["stored_at"] is None and old["sha256"] != e.sha256:
                old.update(values)
                if (ev.id, e.name) not in batch.evidence_new:  # a row of this batch is inserted as it ends
                    batch.evidence_changed[(ev.id, e.name)] = old

    def _view(self, c: Connection, event_id: str) -> EventView | None:
        views = self._views(c, [r for r in c.execute(select(events_t).where(events_t.c.id == event_id))])
        return views[0] if views else None

    def _views(self, c: Connection, rows: Sequence[Any]) -> list[EventView]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        ev_rows: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for e in c.execute(
            select(evidence_t)
            .where(evidence_t.c.event_id.in_(ids))
            .order_by(evidence_t.c.taken_at, evidence_t.c.name)
        ):
            ev_rows[e.event_id].append(
                {
                    "name": e.name,
                    "kind": e.kind,
                    "sha256": e.sha256,
                    "taken_at": e.taken_at,
                    "size": e.size,
                    "stored": e.stored_at is not None,
                }
            )
        return [
            EventView(
                payload=dict(r.payload),
                disposition=r.disposition,
                disposition_at=r.disposition_at,
                created_at=r.created_at,
                received_at=r.received_at,
                evidence=ev_rows[r.id],
                escalated_at=r.escalated_at,
            )
            for r in rows
        ]

    def get_event(self, event_id: str, scope: Scope = EVERYTHING) -> EventView | None:
        with self._read() as c:
            q = select(events_t).where(events_t.c.id == event_id, *_scope_clauses(scope))
            rows = list(c.execute(q))
            views = self._views(c, rows)
            return views[0] if views else None

    def list_events(
        self, flt: EventFilter, scope: Scope = EVERYTHING, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[EventView], str | None]:
        t = events_t
        where: list[ColumnElement[bool]] = _scope_clauses(scope)
        for col, value in (
            (t.c.type, flt.type),
            (t.c.camera_id, flt.camera_id),
            (t.c.zone_id, flt.zone_id),
            (t.c.state, flt.state),
            (t.c.disposition, flt.disposition),
        ):
            if value is not None:
                where.append(col == value)
        if flt.grid is not None:
            where.append(or_(t.c.grid == flt.grid, t.c.grid.startswith(flt.grid + "/", autoescape=True)))
        if flt.since is not None:
            where.append(t.c.started_at >= flt.since)
        if flt.until is not None:
            where.append(t.c.started_at < flt.until)
        if flt.plate:
            # JSON path works on SQLite (json_extract) and PostgreSQL (->>) alike.
            plate = t.c.payload["object"]["plate"]["text"].as_string()
            if flt.plate.endswith("*"):
                where.append(plate.startswith(flt.plate[:-1], autoescape=True))
            else:
                where.append(plate == flt.plate)
        if cursor:
            ts, last_id = decode_cursor(cursor)
            where.append(or_(t.c.started_at < ts, and_(t.c.started_at == ts, t.c.id < last_id)))
        q = select(t).where(*where).order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit + 1)
        with self._read() as c:
            rows = list(c.execute(q))
            more = len(rows) > limit
            rows = rows[:limit]
            views = self._views(c, rows)
        nxt = encode_cursor(rows[-1].started_at, rows[-1].id) if more and rows else None
        return views, nxt

    def count_events(self) -> int:
        with self._read() as c:
            return int(c.execute(select(func.count()).select_from(events_t)).scalar_one())

    def messages(self, event_id: str) -> list[dict[str, Any]]:
        with self._read() as c:
            q = select(messages_t).where(messages_t.c.event_id == event_id).order_by(messages_t.c.seq)
            return [dict(r._mapping) for r in c.execute(q)]

    # ---- evidence -------------------------------------------------------------------------------

    def evidence_path(self, event_id: str, name: str) -> Path:
        root = self.media_dir.resolve()
        path = (root / event_id / name).resolve()
        if not path.is_relative_to(root) or path.parent.parent != root:
            raise BadRequest("evidence name is not valid")
        return path

    def put_evidence(self, event_id: str, name: str, data: bytes) -> Literal["created", "duplicate"]:
        digest = hashlib.sha256(data).hexdigest()
        path = self.evidence_path(event_id, name)
        with self._read() as c:
            if c.execute(select(events_t.c.id).where(events_t.c.id == event_id)).first() is None:
                raise NotFound("no such event (post the event before its evidence)")
            row = c.execute(
                select(evidence_t).where(evidence_t.c.event_id == event_id, evidence_t.c.name == name)
            ).first()
        if row is None:
            raise Conflict("the event lists no evidence of this name")
        if row.sha256 != digest:
            raise Conflict(
                "sha256 of the body does not match the event's evidence", detail={"sha256": digest}
            )
        if row.stored_at is not None and path.is_file():
            return "duplicate"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.{id(data)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with self._write() as c:
            c.execute(
                update(evidence_t)
                .where(evidence_t.c.event_id == event_id, evidence_t.c.name == name)
                .values(size=len(data), path=f"{event_id}/{name}", stored_at=utcnow())
            )
        return "created"

    def get_evidence(self, event_id: str, scope: Scope, name: str) -> tuple[dict[str, Any], Path] | None:
        with self._read() as c:
            q = (
                select(evidence_t, events_t.c.camera_id)
                .join(events_t, events_t.c.id == evidence_t.c.event_id)
                .where(evidence_t.c.event_id == event_id, evidence_t.c.name == name, *_scope_clauses(scope))
            )
            row = c.execute(q).first()
        if row is None or row.stored_at is None or row.path is None:
            return None
        path = self.evidence_path(event_id, name)
        if not path.is_file():
            return None
        return dict(row._mapping), path

    def media_usage(self) -> int:
        """Bytes of evidence on disk (as recorded)."""
        with self._read() as c:
            q = select(func.coalesce(func.sum(evidence_t.c.size), 0)).where(
                evidence_t.c.stored_at.is_not(None)
            )
            return int(c.execute(q).scalar_one())

    def sync_cameras(self, cameras: Sequence[CameraInfo]) -> None:
        with self._write() as c:
            have = {r.id: r for r in c.execute(select(cameras_t.c.id, cameras_t.c.name, cameras_t.c.grid))}
            for cam in cameras:
                old = have.get(cam.id)
                if old is None:
                    c.execute(
                        insert(cameras_t).values(
                            id=cam.id,
                            name=cam.name,
                            grid=cam.grid,
                            state="unknown",
                            fps=0.0,
                            frames=0,
                            dropped=0,
                            reconnects=0,
                        )
                    )
                elif (old.name, old.grid) != (cam.name, cam.grid):
                    c.execute(
                        update(cameras_t).where(cameras_t.c.id == cam.id).values(name=cam.name, grid=cam.grid)
                    )

    def cameras(self, scope: Scope = EVERYTHING) -> list[dict[str, Any]]:
        place = _place_clause(scope, cameras_t.c.id, cameras_t.c.grid)
        q = select(cameras_t).order_by(cameras_t.c.id)
        if place is not None:
            q = q.where(place)
        with self._read() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def camera(self, camera_id: str) -> dict[str, Any] | None:
        with self._read() as c:
            row = c.execute(select(cameras_t).where(cameras_t.c.id == camera_id)).first()
            return dict(row._mapping) if row else None

    def put_camera_status(self, camera_id: str, values: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Record a worker's report. Returns whether the state changed, and the new row."""
        now = utcnow()
        with self._write() as c:
            row = c.execute(select(cameras_t).where(cameras_t.c.id == camera_id)).first()
            if row is None:
                raise NotFound("unknown camera")
            changed = row.state != values["state"]
            new = dict(values, reported_at=now)
            if changed:
                new["state_since"] = now
            c.execute(update(cameras_t).where(cameras_t.c.id == camera_id).values(**new))
            out = dict(row._mapping)
            out.update(new)
            return changed, out

    # ---- disposition and audit ------------------------------------------------------------------

    def dispose(
        self, event_id: str, action: str, actor: str, role: str, remark: str | None, scope: Scope
    ) -> tuple[EventView, dict[str, Any]]:
        if action not in TRANSITIONS:
            raise BadRequest("unknown action")
        allowed_from, to = TRANSITIONS[action]
        now = utcnow()
        with self._write() as c:
            row = c.execute(select(events_t).where(events_t.c.id == event_id, *_scope_clauses(scope))).first()
            if row is None:
                raise NotFound("no such event")
            if row.disposition not in allowed_from:
                raise Conflict(
                    f"cannot {action} an event that is {row.disposition}",
                    detail={"disposition": row.disposition, "allowed_from": sorted(allowed_from)},
                )
            done = c.execute(
                update(events_t)
                .where(events_t.c.id == event_id, events_t.c.disposition == row.disposition)
                .values(disposition=to, disposition_at=now)
            )
            if done.rowcount != 1:
                raise Conflict("the event changed meanwhile; reload and retry")
            entry = {
                "at": now,
                "actor": actor,
                "role": role,
                "action": action,
                "target_type": "event",
                "target_id": event_id,
                "from_state": row.disposition,
                "to_state": to,
                "remark": remark,
            }
            entry["id"] = c.execute(insert(audit_t).values(**entry).returning(audit_t.c.id)).scalar_one()
            view = self._view(c, event_id)
            assert view is not None
            return view, entry

    def audit(
        self,
        actor: str,
        role: str,
        action: str,
        target_type: str,
        target_id: str,
        remark: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
    ) -> None:
        with self._write() as c:
            c.execute(
                insert(audit_t).values(
                    at=utcnow(),
                    actor=actor,
                    role=role,
                    action=action,
                    target_type=target_type,
                    target_id=target_id,
                    remark=remark,
                    from_state=from_state,
                    to_state=to_state,
                )
            )

    def history(self, target_type: str, target_id: str) -> list[dict[str, Any]]:
        q = (
            select(audit_t)
            .where(audit_t.c.target_type == target_type, audit_t.c.target_id == target_id)
            .order_by(audit_t.c.id)
        )
        with self._read() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def audit_page(
        self, target_type: str | None, target_id: str | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        q = select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        if target_type is not None:
            q = q.where(audit_t.c.target_type == target_type)
        if target_id is not None:
            q = q.where(audit_t.c.target_id == target_id)
        if before_id is not None:
            q = q.where(audit_t.c.id < before_id)
        with self._read() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    # ---- users ----------------------------------------------------------------------------------

    def user(self, username: str) -> dict[str, Any] | None:
        with self._read() as c:
            row = c.execute(select(users_t).where(users_t.c.username == username)).first()
            return dict(row._mapping) if row else None

    def upsert_user(
        self, username: str, password_hash: str, role: str, cameras: list[str] | None, grids: list[str] | None
    ) -> bool:
        """Create or replace a user; returns True when created."""
        now = utcnow()
        values = {
            "password_hash": password_hash,
            "role": role,
            "cameras": cameras,
            "grids": grids,
            "disabled": False,
            "password_changed_at": now,
        }
        with self._write() as c:
            row = c.execute(select(users_t.c.id).where(users_t.c.username == username)).first()
            if row is None:
                c.execute(insert(users_t).values(username=username, created_at=now, **values))
                return True
            c.execute(update(users_t).where(users_t.c.id == row.id).values(**values))
            return False

    def set_password_hash(self, username: str, password_hash: str) -> None:
        with self._write() as c:
            c.execute(
                update(users_t)
                .where(users_t.c.username == username)
                .values(password_hash=password_hash, password_changed_at=utcnow())
            )

    def has_role(self, role: str) -> bool:
        with self._read() as c:
            return c.execute(select(users_t.c.id).where(users_t.c.role == role).limit(1)).first() is not None
