"""Events: workers post lifecycle messages; staff and police read them; staff dispose of them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from api.errors import Forbidden, NotFound, Unprocessable
from api.http import json_body
from api.runtime import RuntimeDep
from api.schemas import (
    DispositionIn,
    DispositionPublic,
    EventDetailPublic,
    EventPagePublic,
    PutEventPublic,
)
from api.store import EventFilter
from pipeline.events import Event, EventState, EventType

from .common import EventId, Reader, Staff, Worker, audit_public, event_meta, event_public

router = APIRouter(prefix="/api", tags=["events"])
Disposition = Literal["new", "acknowledged", "dispatched", "resolved", "false_alarm"]


async def _event_body(request: Request) -> Event:
    return await json_body(request, Event)


async def _disposition_body(request: Request) -> DispositionIn:
    return await json_body(request, DispositionIn)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    return value


@router.post("/events", status_code=201, response_model=PutEventPublic)
def post_event(
    who: Worker, ev: Annotated[Event, Depends(_event_body)], rt: RuntimeDep, response: Response
) -> PutEventPublic:
    if not who.may_write(ev.camera_id):
        raise Forbidden("this key may not post events for that camera")
    status, view = rt.store.put_event(ev, who.name)
    if status != "created":
        response.status_code = 200
    if view is not None:
        pub = event_public(view, rt)
        rt.broadcaster.publish("event", pub.model_dump(mode="json"), event_meta(pub))
    return PutEventPublic(id=ev.id, seq=ev.seq, status=status)


@router.get("/events", response_model=EventPagePublic)
def list_events(
    who: Reader,
    rt: RuntimeDep,
    type: EventType | None = None,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    zone_id: Annotated[str | None, Query(max_length=64)] = None,
    state: EventState | None = None,
    disposition: Disposition | None = None,
    grid: Annotated[str | None, Query(max_length=520, pattern=r"^[A-Za-z0-9_/-]+$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> EventPagePublic:
    flt = EventFilter(
        type=type.value if type else None,
        camera_id=camera_id,
        zone_id=zone_id,
        state=state.value if state else None,
        disposition=disposition,
        grid=grid,
        since=_aware("since", since),
        until=_aware("until", until),
    )
    views, nxt = rt.store.list_events(flt, who.scope, min(limit, rt.settings.page_limit_max), cursor)
    return EventPagePublic(items=[event_public(v, rt) for v in views], next_cursor=nxt)


@router.get("/events/{event_id}", response_model=EventDetailPublic)
def get_event(event_id: EventId, who: Reader, rt: RuntimeDep) -> EventDetailPublic:
    view = rt.store.get_event(event_id, who.scope)
    if view is None:
        raise NotFound("no such event")
    history = [audit_public(h) for h in rt.store.history("event", event_id)]
    return EventDetailPublic(**event_public(view, rt).model_dump(), history=history)


@router.post("/events/{event_id}/disposition", response_model=DispositionPublic)
def dispose(
    event_id: EventId, who: Staff, body: Annotated[DispositionIn, Depends(_disposition_body)], rt: RuntimeDep
) -> DispositionPublic:
    view, entry = rt.store.dispose(event_id, body.action, who.name, who.role, body.remark or None, who.scope)
    pub = event_public(view, rt)
    out = DispositionPublic(event=pub, entry=audit_public(entry))
    rt.broadcaster.publish("disposition", out.model_dump(mode="json"), event_meta(pub))
    return out
