"""Traffic police: illegal-parking violations only, with evidence hashes and a chain hash per record."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.errors import NotFound, Unprocessable
from api.runtime import Runtime, RuntimeDep
from api.schemas import ViolationPagePublic, ViolationPublic, chain_hash
from api.store import EventFilter, EventView, Scope

from .common import EventId, Police, camera_names, evidence_public

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
    )
    scope = Scope(cameras=who.scope.cameras, grids=who.scope.grids, types=frozenset({"illegal_parking"}))
    views, nxt = rt.store.list_events(flt, scope, limit, cursor)
    return ViolationPagePublic(items=[violation(v, rt) for v in views], next_cursor=nxt)


@router.get("/violations/{event_id}/pack", response_class=Response)
def evidence_pack(event_id: EventId, who: Police, rt: RuntimeDep) -> Response:
    """A zip for the case file: violation.json (with its chain hash), the stored evidence, SHA256SUMS.
    Every export is written to the audit log."""
    scope = Scope(cameras=who.scope.cameras, grids=who.scope.grids, types=frozenset({"illegal_parking"}))
    view = rt.store.get_event(event_id, scope)
    if view is None:
        raise NotFound("no such violation")
    record = violation(view, rt)
    buf = io.BytesIO()
    sums = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        doc = json.dumps(record.model_dump(mode="json"), ensure_ascii=False, indent=2).encode()
        zf.writestr("violation.json", doc)
        for e in view.evidence:
            found = rt.store.get_evidence(event_id, scope, e["name"]) if e["stored"] else None
            if found is None:
                continue
            zf.write(found[1], f"evidence/{e['name']}")
            sums.append(f"{e['sha256']}  evidence/{e['name']}")
        zf.writestr("SHA256SUMS", "\n".join(sums) + ("\n" if sums else ""))
    rt.store.audit(who.name, who.role, "export", "event", event_id, remark=record.chain_sha256)
    return Response(
        buf.getvalue(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="violation-{event_id}.zip"',
            "Cache-Control": "no-store",
        },
    )
