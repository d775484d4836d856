"""Live parking availability: workers report each ``parking_bay`` zone's occupancy; staff read lots, bays and
a bay's history (the daily curve); changes go to the SSE live feed (event ``parking``) and to MQTT
``pingan/parking/<lot>/free`` (retained) when the API's MQTT publisher is present.

A *lot* is a camera's set of ``parking_bay`` zones (each zone one bay, or a lot polygon with a capacity).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field, StringConstraints, model_validator

from api.errors import Forbidden, NotFound, Unprocessable
from api.http import json_body
from api.parking_store import BayReport, bay, bays, history, put_bay
from api.runtime import Runtime, RuntimeDep
from api.schemas import _In
from pipeline.events import Finite, UtcDatetime

from .common import IDENT, CameraId, Staff, Worker, camera_names

log = logging.getLogger("pingan.api.parking")
router = APIRouter(prefix="/api", tags=["parking"])
ZoneId = Annotated[str, Path(pattern=IDENT, max_length=64)]
GRID = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
STALE_AFTER_S = 180.0  # workers report every 30 s; three missed reports make a bay's figure unknown
MQTT_TOPIC = "parking/{lot}/free"  # under the MQTT prefix: pingan/parking/<lot>/free


class BayStateIn(_In):
    occupied: Annotated[int, Field(ge=0, le=10_000)]
    capacity: Annotated[int, Field(ge=1, le=10_000)]
    free: Annotated[int, Field(ge=0, le=10_000)]
    ts: UtcDatetime | Annotated[Finite, Field(ge=0, le=2**40)]
    grid: Annotated[str, StringConstraints(max_length=520, pattern=GRID)] | None = None

    @model_validator(mode="after")
    def _sums(self) -> BayStateIn:
        if self.occupied > self.capacity or self.occupied + self.free != self.capacity:
            raise ValueError("occupied + free must equal capacity")
        return self

    def observed(self) -> datetime:
        return self.ts if isinstance(self.ts, datetime) else datetime.fromtimestamp(self.ts, UTC)


class BayPublic(BaseModel):
    camera_id: str
    zone_id: str
    grid: str | None
    occupied: int
    capacity: int
    free: int
    observed_at: datetime
    changed_at: datetime
    reported_at: datetime
    stale: bool


class LotPublic(BaseModel):
    lot: str
    name: str | None
    grid: str | None
    occupied: int
    capacity: int
    free: int
    bays: list[BayPublic]


class ParkingPublic(BaseModel):
    occupied: int
    capacity: int
    free: int
    lots: list[LotPublic]


class HistoryPoint(BaseModel):
    at: datetime
    occupied: int
    capacity: int
    free: int


class HistoryPublic(BaseModel):
    camera_id: str
    zone_id: str
    since: datetime
    until: datetime
    points: list[HistoryPoint]


async def _bay_body(request: Request) -> BayStateIn:
    return await json_body(request, BayStateIn)


def bay_public(row: dict[str, Any], now: datetime | None = None) -> BayPublic:
    now = now or datetime.now(UTC)
    stale = (now - row["reported_at"]).total_seconds() > STALE_AFTER_S
    return BayPublic.model_validate({**row, "stale": stale})


def lots_public(rows: list[dict[str, Any]], rt: Runtime) -> ParkingPublic:
    names = camera_names(rt)
    grids = {c.id: c.grid for c in rt.settings.cameras}
    by_lot: dict[str, list[BayPublic]] = {}
    now = datetime.now(UTC)
    for r in rows:
        by_lot.setdefault(r["camera_id"], []).append(bay_public(r, now))
    lots = []
    for lot, items in by_lot.items():
        live = [b for b in items if not b.stale]  # a bay not heard from is neither free nor occupied
        lots.append(
            LotPublic(
                lot=lot,
                name=names.get(lot),
                grid=grids.get(lot) or items[0].grid,
                occupied=sum(b.occupied for b in live),
                capacity=sum(b.capacity for b in items),
                free=sum(b.free for b in live),
                bays=items,
            )
        )
    return ParkingPublic(
        occupied=sum(lot.occupied for lot in lots),
        capacity=sum(lot.capacity for lot in lots),
        free=sum(lot.free for lot in lots),
        lots=lots,
    )


def publish_mqtt(request: Request, topic: str, payload: object, retain: bool = True) -> bool:
    """Hook to the API's MQTT publisher (``api.mqtt.MqttPublisher``, optional), found as ``app.state.mqtt`` or
    the runtime's ``mqtt``; ``topic`` is under its prefix. Best effort, never raises; True when queued."""
    rt = getattr(request.app.state, "pingan", None)
    publisher = getattr(request.app.state, "mqtt", None) or getattr(rt, "mqtt", None)
    publish = getattr(publisher, "publish", None)
    if publish is None:
        return False
    try:
        return bool(publish(topic, payload, retain))
    except Exception as err:  # the broker is an add-on; the API goes on without it
        log.debug("MQTT publish to %s failed: %s", topic, type(err).__name__)
        return False


@router.put("/parking/{camera_id}/{zone_id}", status_code=204, response_class=Response)
def put_parking(
    camera_id: CameraId,
    zone_id: ZoneId,
    who: Worker,
    body: Annotated[BayStateIn, Depends(_bay_body)],
    rt: RuntimeDep,
    request: Request,
) -> Response:
    if not who.may_write(camera_id):
        raise Forbidden("this key may not report for that camera")
    cam = next((c for c in rt.settings.cameras if c.id == camera_id), None)
    if cam is None:
        raise NotFound("unknown camera")
    if cam.zones and zone_id not in cam.zones:
        raise NotFound("unknown zone of that camera")
    rep = BayReport(body.occupied, body.capacity, body.free, body.observed(), body.grid or cam.grid)
    changed, row = put_bay(rt.store, camera_id, zone_id, rep)
    if changed:
        pub = bay_public(row)
        meta = {"camera_id": camera_id, "grid": pub.grid, "type": "parking"}
        rt.broadcaster.publish("parking", pub.model_dump(mode="json"), meta)
        lot = lots_public(bays(rt.store), rt).lots
        free = next((x.free for x in lot if x.lot == camera_id), body.free)
        publish_mqtt(request, MQTT_TOPIC.format(lot=camera_id), free)
    return Response(status_code=204)


@router.get("/parking", response_model=ParkingPublic)
def get_parking(who: Staff, rt: RuntimeDep) -> ParkingPublic:
    return lots_public(bays(rt.store, who.scope), rt)


@router.get("/parking/{camera_id}/{zone_id}/history", response_model=HistoryPublic)
def get_history(
    camera_id: CameraId,
    zone_id: ZoneId,
    who: Staff,
    rt: RuntimeDep,
    since: datetime | None = None,
    until: datetime | None = None,
) -> HistoryPublic:
    for name, v in (("since", since), ("until", until)):
        if v is not None and v.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    if bay(rt.store, camera_id, zone_id, who.scope) is None:
        raise NotFound("no such bay")
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=1)
    if since >= until or until - since > timedelta(days=31):
        raise Unprocessable("since must be before until, at most 31 days apart")
    points = [HistoryPoint.model_validate(p) for p in history(rt.store, camera_id, zone_id, since, until)]
    return HistoryPublic(camera_id=camera_id, zone_id=zone_id, since=since, until=until, points=points)
