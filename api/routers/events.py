"""Events: workers post lifecycle messages; staff and police read them; staff dispose of them."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import TypeAdapter, ValidationError

from api.errors import ApiError, Conflict, Forbidden, NotFound, PayloadTooLarge, Unprocessable, clean_errors
from api.http import json_body, json_text
from api.runtime import Runtime, RuntimeDep
from api.schemas import (
    DispositionIn,
    DispositionPublic,
    EventBatchIn,
    EventDetailPublic,
    EventPagePublic,
    PutEventBatchItemPublic,
    PutEventBatchPublic,
    PutEventPublic,
)
from api.store import EventFilter, EventView
from pipeline.events import Event, EventState, EventType

from .common import EventId, Reader, Staff, Worker, audit_public, event_meta, event_public

router = APIRouter(prefix="/api", tags=["events"])
Disposition = Literal["new", "acknowledged", "dispatched", "resolved", "false_alarm"]
BATCH_MAX = 500  # messages per POST /api/events/batch; more is a 413 (split the batch)
FORBIDDEN_CAMERA = "this key may not post events for that camera"
_EVENT = TypeAdapter(Event)


@dataclass(frozen=True)
class _Invalid:
    """A batch item that is not a valid wire message (it is rejected alone; the others are stored)."""

    id: str | None
    seq: int | None
    detail: list[dict[str, Any]]


async def _event_body(request: Request) -> Event:
    return await json_body(request, Event)


async def _batch_body(request: Request) -> list[Event | _Invalid]:
    """``{"events": [...]}``: the body as a whole is checked like ``POST /api/events`` (415/400, 422 when it
    is not that shape or empty, 413 over BATCH_MAX); each item is then validated on its own."""
    text, data = await json_text(request)
    items = data.get("events")
    if set(data) != {"events"} or not isinstance(items, list):
        raise Unprocessable('body must be {"events": [event, ...]}')
    if not items:
        raise Unprocessable("events is empty")
    if len(items) > BATCH_MAX:
        raise PayloadTooLarge(f"at most {BATCH_MAX} events per batch, got {len(items)}: split the batch")
    try:  # the common case: every item valid, one validation pass
        return list(EventBatchIn.model_validate_json(text, strict=True).events)
    except ValidationError as err:
        errors = err.errors()
    bad: dict[int, list[Any]] = {}
    for e in errors:
        loc = e.get("loc", ())
        if len(loc) < 2 or loc[0] != "events" or not isinstance(loc[1], int):
            raise Unprocessable("body is not valid", detail=clean_errors(errors))
        bad.setdefault(loc[1], []).append({**e, "loc": loc[2:]})
    out: list[Event | _Invalid] = []
    for i, item in enumerate(items):
        if i in bad:
            got = item if isinstance(item, dict) else {}
            eid, seq = got.get("id"), got.get("seq")
            out.append(
                _Invalid(
                    id=eid[:64] if isinstance(eid, str) else None,
                    seq=seq if type(seq) is int else None,
                    detail=clean_errors(bad[i]),
                )
            )
        else:  # valid within the batch, so valid alone (JSON mode: strict, datetimes from strings)
            out.append(_EVENT.validate_json(json.dumps(item, ensure_ascii=False), strict=True))
    return out


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
        raise Forbidden(FORBIDDEN_CAMERA)
    status, view = rt.store.put_event(ev, who.name)
    if status != "created":
        response.status_code = 200
    _publish(rt, view)
    return PutEventPublic(id=ev.id, seq=ev.seq, status=status)


@router.post("/events/batch", response_model=PutEventBatchPublic)
def post_events_batch(
    who: Worker, items: Annotated[list[Event | _Invalid], Depends(_batch_body)], rt: RuntimeDep
) -> PutEventBatchPublic:
    """Up to BATCH_MAX messages stored in one transaction, each as ``POST /api/events`` would store it
    (idempotent by (id, seq), in order); 200 with one result per item. An item that is invalid (422), for
    a camera outside the key's scope (403) or reusing another camera's/type's id (409) is rejected alone."""
    out: list[PutEventBatchItemPublic | None] = [None] * len(items)
    todo: list[tuple[int, Event]] = []
    for i, item in enumerate(items):
        if isinstance(item, _Invalid):
            out[i] = _rejected(i, item.id, item.seq, Unprocessable("event is not valid", detail=item.detail))
        elif not who.may_write(item.camera_id):
            out[i] = _rejected(i, item.id, item.seq, Forbidden(FORBIDDEN_CAMERA))
        else:
            todo.append((i, item))
    outcomes = rt.store.put_events([ev for _, ev in todo], who.name)
    for (i, ev), got in zip(todo, outcomes, strict=True):
        if got.status == "conflict":
            out[i] = _rejected(i, ev.id, ev.seq, Conflict(got.error or "conflict"))
            continue
        code = 201 if got.status == "created" else 200
        out[i] = PutEventBatchItemPublic(index=i, id=ev.id, seq=ev.seq, status=got.status, code=code)
        _publish(rt, got.view)
    results = [r for r in out if r is not None]
    return PutEventBatchPublic(items=results, counts=dict(Counter(r.status for r in results)))


def _rejected(index: int, eid: str | None, seq: int | None, err: ApiError) -> PutEventBatchItemPublic:
    return PutEventBatchItemPublic(
        index=index,
        id=eid,
        seq=seq,
        status="rejected",
        code=err.status,
        error=err.code,
        message=err.message,
        detail=err.detail,
    )


def _publish(rt: Runtime, view: EventView | None) -> None:
    """Tell live subscribers (SSE, MQTT bridge, bus relay) about a stored event that changed."""
    if view is None or not rt.broadcaster.listening:
        return
    pub = event_public(view, rt)
    rt.broadcaster.publish("event", pub.model_dump(mode="json"), event_meta(pub))


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
