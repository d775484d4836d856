"""Prometheus ``GET /metrics`` (text exposition format 0.0.4, written by hand).

Who: admins, or a scraper with the dedicated bearer token (``api.metrics_token`` / ``PINGAN_METRICS_TOKEN``).
Labels carry ids only (camera id, event type, state): never a URL, a key or a reason text.

Per camera (from its latest status report): ``pingan_camera_up`` (1 when it runs: health ok or behind),
``_behind`` (1 when the detector is not keeping up with it), ``_result_age_seconds`` (p95 capture → result),
``_shed_ratio`` (due frames shed undetected), ``_fps``,
``_frames_total``, ``_dropped_frames_total``, ``_gated_frames_total`` (detection skipped: static scene),
``_undecoded_keyframes_total`` (decoding skipped: the packet gate), ``_keyframe_interval_seconds`` and
``_decodes_every_frame`` (keyframes too seldom for keyframe-only decoding), ``_main_stream_up`` (sub-stream
cameras),
``_detections_total``, ``_detector_latency_seconds``, ``_outbox_depth``, ``_reconnects_total``,
``_last_report_timestamp_seconds``. Events: ``pingan_events{type,state}``, ``pingan_event_dispositions{type,
disposition}``, ``pingan_events_escalated{type}``. Live feed: ``pingan_sse_subscribers``. MQTT:
``pingan_mqtt_connected``, ``pingan_mqtt_messages_sent_total``, ``pingan_mqtt_messages_dropped_total``,
``pingan_mqtt_queue_depth``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

from api.auth import AUTH_ATTR, Principal, require
from api.runtime import Runtime, RuntimeDep
from api.store import Scope, events_t

from .common import camera_public

router = APIRouter(tags=["metrics"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_admin = require("admin")


def metrics_rule(request: Request) -> Principal:
    """Admins (session or bearer), or the metrics token as a bearer; 401/403 otherwise."""
    rt: Runtime = request.app.state.pingan
    token = rt.settings.metrics_token
    header = request.headers.get("authorization")
    if token is not None and header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.get_secret_value().encode()
        ):
            who = Principal(kind="user", name="metrics", role="metrics", scope=Scope(cameras=frozenset()))
            request.state.principal = who
            return who
    return _admin(request)


setattr(metrics_rule, AUTH_ATTR, ("roles", ("admin", "metrics")))
Scraper = Annotated[Principal, Depends(metrics_rule)]


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float | int]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{body}}} {_num(value)}")
            else:
                self.lines.append(f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _counts(rt: Runtime, *cols: str) -> list[tuple[Any, ...]]:
    columns = [events_t.c[c] for c in cols]
    q = select(*columns, func.count()).group_by(*columns).order_by(*columns)
    with rt.store._read() as c:
        return [tuple(r) for r in c.execute(q)]


def _escalated(rt: Runtime) -> list[tuple[Any, ...]]:
    q = (
        select(events_t.c.type, func.count())
        .where(events_t.c.escalated_at.is_not(None))
        .group_by(events_t.c.type)
        .order_by(events_t.c.type)
    )
    with rt.store._read() as c:
        return [tuple(r) for r in c.execute(q)]


def render(rt: Runtime, now: datetime | None = None, relay_subscribed: bool = False) -> str:
    """The exposition. ``relay_subscribed``: the NATS live relay holds a subscription (not an SSE client)."""
    now = now or datetime.now(UTC)
    out = _Exposition()
    cams = [(row, camera_public(row, rt, now)) for row in rt.store.cameras()]

    def per_camera(fn: Any) -> list[tuple[dict[str, str], float | int]]:
        samples = []
        for row, pub in cams:
            value = fn(row, pub)
            if value is not None:
                samples.append(({"camera": pub.id}, value))
        return samples

    def stat(key: str) -> Any:
        return lambda row, _pub: (row.get("stats") or {}).get(key)

    def seconds(key: str) -> Any:  # a stat reported in milliseconds
        return lambda row, _pub: None if (ms := stat(key)(row, _pub)) is None else ms / 1000

    out.family(
        "pingan_camera_up",
        "gauge",
        "1 when the camera reports and runs (health ok or behind), else 0",
        per_camera(lambda _r, p: int(p.health in ("ok", "behind"))),
    )
    out.family(
        "pingan_camera_behind",
        "gauge",
        "1 when the detector is not keeping up with the camera (late results or shed frames): past capacity",
        per_camera(lambda r, p: None if (v := stat("behind")(r, p)) is None else int(v)),
    )
    out.family(
        "pingan_camera_result_age_seconds",
        "gauge",
        "p95 time from a frame's capture to its detections being applied, over the last 30 s",
        per_camera(seconds("result_age_ms")),
    )
    out.family(
        "pingan_camera_shed_ratio",
        "gauge",
        "share of due frames over the last 30 s that were shed before the detector saw them",
        per_camera(stat("shed_share")),
    )
    out.family("pingan_camera_fps", "gauge", "frames per second read", per_camera(lambda r, _p: r["fps"]))
    out.family("pingan_camera_frames_total", "counter", "frames read", per_camera(lambda r, _p: r["frames"]))
    out.family(
        "pingan_camera_dropped_frames_total",
        "counter",
        "frames dropped: a lagging consumer, or due keyframes shed by a reader behind its stream",
        per_camera(lambda r, _p: r["dropped"]),
    )
    out.family(
        "pingan_camera_gated_frames_total",
        "counter",
        "frames whose detection was skipped (static scene)",
        per_camera(stat("gated")),
    )
    out.family(
        "pingan_camera_undecoded_keyframes_total",
        "counter",
        "due keyframes not even decoded (packet gate: nothing moved)",
        per_camera(stat("undecoded")),
    )
    out.family(
        "pingan_camera_keyframe_interval_seconds",
        "gauge",
        "the detected stream's keyframe interval, as learnt from its packets",
        per_camera(stat("keyframe_interval_s")),
    )
    out.family(
        "pingan_camera_decodes_every_frame",
        "gauge",
        "1 when keyframes come too seldom for the camera's min_detect_fps and every frame is decoded "
        "(~4x the CPU of keyframe-only decoding), 0 when keyframes alone are",
        per_camera(lambda r, p: None if (v := stat("decode")(r, p)) is None else int(v == "every_frame")),
    )
    out.family(
        "pingan_camera_main_stream_up",
        "gauge",
        "cameras detecting on their sub-stream: 1 while the main stream (evidence stills) runs",
        per_camera(lambda r, p: None if (v := stat("evidence_state")(r, p)) is None else int(v == "running")),
    )
    out.family("pingan_camera_detections_total", "counter", "detector runs", per_camera(stat("detections")))
    out.family(
        "pingan_camera_detector_latency_seconds",
        "gauge",
        "recent detector latency per frame",
        per_camera(seconds("detector_ms")),
    )
    out.family(
        "pingan_camera_outbox_depth",
        "gauge",
        "messages and files waiting in the worker's outbox",
        per_camera(stat("outbox_depth")),
    )
    out.family(
        "pingan_camera_reconnects_total",
        "counter",
        "stream reconnect attempts",
        per_camera(lambda r, _p: r["reconnects"]),
    )
    out.family(
        "pingan_camera_last_report_timestamp_seconds",
        "gauge",
        "when the camera's worker last reported (unix time)",
        per_camera(lambda r, _p: r["reported_at"].timestamp() if r.get("reported_at") else None),
    )
    out.family(
        "pingan_events",
        "gauge",
        "stored events by type and lifecycle state",
        [({"type": t, "state": s}, n) for t, s, n in _counts(rt, "type", "state")],
    )
    out.family(
        "pingan_event_dispositions",
        "gauge",
        "stored events by type and disposition",
        [({"type": t, "disposition": d}, n) for t, d, n in _counts(rt, "type", "disposition")],
    )
    out.family(
        "pingan_events_escalated",
        "gauge",
        "events escalated for staying unacknowledged past their SLA",
        [({"type": t}, n) for t, n in _escalated(rt)],
    )
    sse = rt.broadcaster.subscribers - rt.mqtt.bridged - int(relay_subscribed)
    out.family("pingan_sse_subscribers", "gauge", "open live-feed streams", [({}, max(sse, 0))])
    mq = rt.mqtt
    if mq.enabled:
        out.family(
            "pingan_mqtt_connected", "gauge", "1 while connected to the broker", [({}, int(mq.connected))]
        )
        out.family(
            "pingan_mqtt_messages_sent_total", "counter", "messages handed to the broker", [({}, mq.sent)]
        )
        out.family(
            "pingan_mqtt_messages_dropped_total",
            "counter",
            "messages given up (queue full)",
            [({}, mq.dropped)],
        )
        out.family("pingan_mqtt_queue_depth", "gauge", "messages waiting to be sent", [({}, mq.queued)])
    return out.text()


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(who: Scraper, rt: RuntimeDep, request: Request) -> PlainTextResponse:
    consumer = getattr(request.app.state, "bus_consumer", None)
    relay = getattr(consumer, "_relay_sub", None) is not None
    text = render(rt, relay_subscribed=relay)
    return PlainTextResponse(text, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
