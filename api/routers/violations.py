"""Traffic police: illegal-parking violations only, with evidence hashes and a chain hash per record."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.errors import Unprocessable
from api.runtime import Runtime, RuntimeDep
from api.schemas import ViolationPagePublic, ViolationPublic, chain_hash
from api.store import EventFilter, EventView, Scope

from .common import Police, camera_names, evidence_public

router = APIRouter(prefix="/api", tags=["violations"])


def violation(view: EventView, rt: Runtime) -> ViolationPublic:
    p = view.payload
    plate = ((p.get("object") or {}).get("plate")) or {}
    record = {
        "id": p["id"],
        "camera_id": p["camera_id"],
        "zone_id": p.get("zone_id"),
        "grid": p.get("grid"),
        "violation_code": p.get("violation_code"),
        "started_at": p["started_at"],
        "updated_at": p["updated_at"],
        "ended_at": p.get("ended_at"),
        "dwell_s": p["dwell_s"],
        "state": p["state"],
        "plate": plate.get("text"),
        "plate_confidence": plate.get("confidence"),
        "evidence": [{"name": e["name"], "kind": e["kind"], "sha256": e["sha256"]} for e in view.evidence],
    }
    return ViolationPublic.model_validate(
        {
            **record,
            "camera_name": camera_names(rt).get(p["camera_id"]),
            "disposition": view.disposition,
            "evidence": evidence_public(view.id, view.evidence),
            "chain_sha256": chain_hash(record),
        }
    )


@router.get("/violations", response_model=ViolationPagePublic)
def list_violations(
    who: Police,
    rt: RuntimeDep,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    zone_id: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=520, pattern=r"^[A-Za-z0-9_/-]+$")] = None,
    plate: Annotated[
        str | None, Query(min_length=2, max_length=17, description="exact, or a prefix ending in *")
    ] = None,
    closed_only: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ViolationPagePublic:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    flt = EventFilter(
        type="illegal_parking",
        camera_id=camera_id,
        zone_id=zone_id,
        grid=grid,
        state="closed" if closed_only else None,
        since=since,
        until=until,
        plate=plate,
    )
    scope = Scope(cameras=who.scope.cameras, grids=who.scope.grids, types=frozenset({"illegal_parking"}))
    views, nxt = rt.store.list_events(flt, scope, limit, cursor)
    return ViolationPagePublic(items=[violation(v, rt) for v in views], next_cursor=nxt)


# GET /api/violations/{id}/pack and /api/violations/export: api/routers/packs.py
