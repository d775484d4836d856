"""Bin stations for the security room: ``GET /api/bin-stations`` (operator, admin; scoped).

Each ``bin_station`` zone of the config with its current state: ``overflow`` while a ``bin_overflow`` event of
that camera and zone is open (not closed), with that event; else ``clean``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select

from api.runtime import Runtime, RuntimeDep
from api.store import events_t

from .common import Staff, camera_names

router = APIRouter(prefix="/api", tags=["bins"])


class StationEvent(BaseModel):
    id: str
    started_at: datetime
    severity: int = 1
    disposition: str
    escalated_at: datetime | None = None


class StationPublic(BaseModel):
    camera_id: str
    camera_name: str | None = None
    zone_id: str
    bin_ids: list[str] = []
    grid: str | None = None
    state: Literal["overflow", "clean"]
    event: StationEvent | None = None


def _open_overflows(rt: Runtime) -> dict[tuple[str, str | None], StationEvent]:
    q = (
        select(events_t)
        .where(events_t.c.type == "bin_overflow", events_t.c.state != "closed")
        .order_by(events_t.c.started_at, events_t.c.id)
    )
    out: dict[tuple[str, str | None], StationEvent] = {}
    with rt.store._read() as c:
        for r in c.execute(q):  # the newest open event of a station wins
            out[(r.camera_id, r.zone_id)] = StationEvent(
                id=r.id,
                started_at=r.started_at,
                severity=int((r.payload or {}).get("severity") or 1),
                disposition=r.disposition,
                escalated_at=r.escalated_at,
            )
    return out


@router.get("/bin-stations", response_model=list[StationPublic])
def bin_stations(who: Staff, rt: RuntimeDep) -> list[StationPublic]:
    names = camera_names(rt)
    open_ = _open_overflows(rt)
    out = []
    for st in rt.settings.bin_stations:
        if not who.scope.allows(st.camera_id, st.grid, "bin_overflow"):
            continue
        ev = open_.get((st.camera_id, st.zone_id))
        out.append(
            StationPublic(
                camera_id=st.camera_id,
                camera_name=names.get(st.camera_id),
                zone_id=st.zone_id,
                bin_ids=st.bin_ids,
                grid=st.grid,
                state="overflow" if ev else "clean",
                event=ev,
            )
        )
    return out
