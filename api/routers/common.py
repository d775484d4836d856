"""Dependencies and converters shared by the routers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path

from api.auth import Principal, require
from api.runtime import Runtime
from api.schemas import AuditPublic, CameraPublic, EventPublic, EvidencePublic
from api.store import EventView

EVENT_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
IDENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

EventId = Annotated[str, Path(pattern=EVENT_ID, max_length=36)]
EvidenceName = Annotated[str, Path(pattern=FILE_NAME, max_length=100)]
CameraId = Annotated[str, Path(pattern=IDENT, max_length=64)]

Worker = Annotated[Principal, Depends(require("worker"))]
Reader = Annotated[Principal, Depends(require("operator", "police", "admin"))]
Staff = Annotated[Principal, Depends(require("operator", "admin"))]
Police = Annotated[Principal, Depends(require("police", "admin"))]
WorkerOrAdmin = Annotated[Principal, Depends(require("worker", "admin"))]
AnyUser = Annotated[Principal, Depends(require("operator", "police", "admin"))]


def camera_names(rt: Runtime) -> dict[str, str]:
    return {c.id: c.name for c in rt.settings.cameras}


def evidence_public(event_id: str, items: list[dict[str, Any]]) -> list[EvidencePublic]:
    return [
        EvidencePublic(**e, url=f"/api/events/{event_id}/evidence/{e['name']}" if e["stored"] else None)
        for e in items
    ]


def event_public(view: EventView, rt: Runtime) -> EventPublic:
    p = view.payload
    return EventPublic.model_validate(
        {
            **p,
            "camera_name": camera_names(rt).get(p["camera_id"]),
            "disposition": view.disposition,
            "disposition_at": view.disposition_at,
            "created_at": view.created_at,
            "received_at": view.received_at,
            "evidence": evidence_public(view.id, view.evidence),
            "escalated_at": view.escalated_at,
        }
    )


def audit_public(entry: dict[str, Any]) -> AuditPublic:
    return AuditPublic.model_validate(entry)


def camera_public(row: dict[str, Any], rt: Runtime, now: datetime | None = None) -> CameraPublic:
    now = now or datetime.now(UTC)
    reported = row.get("reported_at")
    stats = row.get("stats") or {}
    if reported is None:
        health = "unknown"
    elif (now - reported).total_seconds() > rt.settings.camera_stale_s or row["state"] == "stopped":
        health = "offline"
    elif row["state"] == "running" and stats.get("evidence_state") in (None, "running"):
        # detecting, and (where it detects on a sub-stream) its main stream gives stills; but late or
        # shedding frames when the box carries more cameras than its detector serves
        health = "behind" if stats.get("behind") else "ok"
    else:
        health = "degraded"
    return CameraPublic.model_validate({**row, "health": health})


def event_meta(ev: EventPublic) -> dict[str, Any]:
    return {"camera_id": ev.camera_id, "grid": ev.grid, "type": ev.type}
