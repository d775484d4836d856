"""Parking availability in the database: the latest occupancy of each ``parking_bay`` zone and its history.

Workers report a bay's state on change and every minute or so (``PUT /api/parking/{camera}/{zone}``); a
history row is written when ``occupied`` or ``capacity`` changes, and at most every ``KEEPALIVE_S`` otherwise,
so a day's curve is a few hundred rows per bay at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, insert, select, update

from api.models import ParkingBayRow, ParkingHistoryRow
from api.store import EVERYTHING, Scope, Store, _place_clause

bays_t = cast(Table, ParkingBayRow.__table__)
history_t = cast(Table, ParkingHistoryRow.__table__)
KEEPALIVE_S = 600.0
MAX_HISTORY = 20_000


@dataclass(frozen=True)
class BayReport:
    occupied: int
    capacity: int
    free: int
    observed_at: datetime
    grid: str | None


def put_bay(store: Store, camera_id: str, zone_id: str, rep: BayReport) -> tuple[bool, dict[str, Any]]:
    """Record a report. Returns (changed, the bay's row). A report older than the stored one is kept out of
    the current state (reports may arrive out of order after a retry) but still not lost from history."""
    now = datetime.now(UTC)
    with store._write() as c:
        row = c.execute(
            select(bays_t).where(bays_t.c.camera_id == camera_id, bays_t.c.zone_id == zone_id)
        ).first()
        values = {
            "grid": rep.grid,
            "occupied": rep.occupied,
            "capacity": rep.capacity,
            "free": rep.free,
            "observed_at": rep.observed_at,
            "reported_at": now,
        }
        changed = row is None or (row.occupied, row.capacity) != (rep.occupied, rep.capacity)
        if row is None:
            c.execute(
                insert(bays_t).values(
                    camera_id=camera_id, zone_id=zone_id, changed_at=rep.observed_at, **values
                )
            )
        elif rep.observed_at >= row.observed_at:
            if changed:
                values["changed_at"] = rep.observed_at
            c.execute(
                update(bays_t)
                .where(bays_t.c.camera_id == camera_id, bays_t.c.zone_id == zone_id)
                .values(**values)
            )
        else:
            changed = False
        last = c.execute(
            select(history_t.c.at)
            .where(history_t.c.camera_id == camera_id, history_t.c.zone_id == zone_id)
            .order_by(history_t.c.at.desc())
            .limit(1)
        ).scalar()
        if changed or last is None or rep.observed_at - last >= timedelta(seconds=KEEPALIVE_S):
            c.execute(
                insert(history_t).values(
                    camera_id=camera_id,
                    zone_id=zone_id,
                    at=rep.observed_at,
                    occupied=rep.occupied,
                    capacity=rep.capacity,
                    free=rep.free,
                )
            )
        out = c.execute(
            select(bays_t).where(bays_t.c.camera_id == camera_id, bays_t.c.zone_id == zone_id)
        ).one()
        return changed, dict(out._mapping)


def bays(store: Store, scope: Scope = EVERYTHING) -> list[dict[str, Any]]:
    q = select(bays_t).order_by(bays_t.c.camera_id, bays_t.c.zone_id)
    place = _place_clause(scope, bays_t.c.camera_id, bays_t.c.grid)
    if place is not None:
        q = q.where(place)
    with store._read() as c:
        return [dict(r._mapping) for r in c.execute(q)]


def bay(store: Store, camera_id: str, zone_id: str, scope: Scope = EVERYTHING) -> dict[str, Any] | None:
    q = select(bays_t).where(bays_t.c.camera_id == camera_id, bays_t.c.zone_id == zone_id)
    place = _place_clause(scope, bays_t.c.camera_id, bays_t.c.grid)
    if place is not None:
        q = q.where(place)
    with store._read() as c:
        row = c.execute(q).first()
        return dict(row._mapping) if row else None


def history(
    store: Store, camera_id: str, zone_id: str, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """The rows in [since, until), plus the last one before ``since`` (the state the curve starts in)."""
    h = history_t
    where = [h.c.camera_id == camera_id, h.c.zone_id == zone_id]
    q = select(h.c.at, h.c.occupied, h.c.capacity, h.c.free).where(*where)
    if since is not None:
        q = q.where(h.c.at >= since)
    if until is not None:
        q = q.where(h.c.at < until)
    with store._read() as c:
        rows = [dict(r._mapping) for r in c.execute(q.order_by(h.c.at, h.c.id).limit(MAX_HISTORY))]
        if since is not None:
            before = c.execute(
                select(h.c.at, h.c.occupied, h.c.capacity, h.c.free)
                .where(*where, h.c.at < since)
                .order_by(h.c.at.desc(), h.c.id.desc())
                .limit(1)
            ).first()
            if before is not None:
                rows.insert(0, dict(before._mapping))
    return rows
