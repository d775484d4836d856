"""api.bus_consumer against the machine's NATS JetStream (fails, never skips, when CI=true)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.broadcast import Subscription
from api.bus_consumer import BusConsumer
from api.settings import Settings
from pipeline import bus
from pipeline.config import BusConfig
from pipeline.events import Event
from pipeline.sinks_nats import NatsSink
from tests.fixtures.api import TestClient, make_event, make_settings

pytestmark = pytest.mark.nats


def _run(url: str, fn: Callable[[Any, Any], Any]) -> Any:
    import nats

    async def main() -> Any:
        nc = await nats.connect(url)
        try:
            return await fn(nc, nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


@pytest.fixture
def bus_cfg(nats_url: str) -> Iterator[BusConfig]:
    tag = uuid.uuid4().hex[:10]
    cfg = BusConfig(kind="nats", nats_url=nats_url, stream=f"T{tag}", subject_prefix=f"t{tag}")
    yield cfg

    async def cleanup(_nc: Any, js: Any) -> None:
        for name in (cfg.stream, f"OBJ_{bus.evidence_bucket(cfg.subject_prefix)}"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)

    _run(nats_url, cleanup)


def settings(tmp_path: Path, cfg: BusConfig, **kw: Any) -> Settings:
    return make_settings(tmp_path, bus=cfg, site_id="site-1", **kw)


def sink(cfg: BusConfig) -> NatsSink:
    return NatsSink(cfg.nats_url, cfg.stream, cfg.subject_prefix, "compound-7")


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@contextlib.contextmanager
def replica(s: Settings) -> Iterator[tuple[TestClient, BusConsumer]]:
    app = create_app(s)
    with TestClient(app) as client:
        consumer: BusConsumer = app.state.bus_consumer
        client.portal.call(_wait_ready, consumer)
        yield client, consumer


async def _wait_ready(consumer: BusConsumer) -> None:
    await asyncio.wait_for(consumer.ready.wait(), 15)


async def _subscribe(client: TestClient) -> Subscription:
    return client.app.state.pingan.broadcaster.subscribe()  # type: ignore[attr-defined,no-any-return]


async def _drain(sub: Subscription) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while not sub.queue.empty():
        msg = sub.queue.get_nowait()
        out.append((msg.kind, json.loads(msg.text.split("\ndata: ", 1)[1])))
    return out


def consumer_info(cfg: BusConfig) -> Any:
    return _run(cfg.nats_url, lambda _nc, js: js.consumer_info(cfg.stream, "pingan-api"))


def test_bus_messages_are_stored_with_evidence_then_acked(tmp_path: Path, bus_cfg: BusConfig) -> None:
    jpg = b"\xff\xd8" + bytes(range(256)) * 400 + b"\xff\xd9"
    body = make_event(
        evidence=[
            {
                "name": "scene-1.jpg",
                "taken_at": datetime.now(UTC).isoformat(),
                "sha256": hashlib.sha256(jpg).hexdigest(),
                "kind": "scene",
            }
        ]
    )
    ev = Event.model_validate(body)
    upd = Event.model_validate(dict(body, seq=1, state="update", dwell_s=120.0))
    with replica(settings(tmp_path, bus_cfg)) as (client, _c), sink(bus_cfg) as snk:
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        snk.send(ev, {"scene-1.jpg": jpg})
        snk.send(upd, {})
        snk.send(upd, {})  # a re-send: JetStream drops it
        view = wait_for(lambda: (v := store.get_event(ev.id)) and v.payload["seq"] == 1 and v, what="update")
        assert view.evidence[0]["stored"] is True
        found = store.get_evidence(ev.id, store_scope(), "scene-1.jpg")
        assert found is not None and found[1].read_bytes() == jpg
        assert [(m["seq"], m["worker"]) for m in store.messages(ev.id)] == [
            (0, "nats:compound-7"),
            (1, "nats:compound-7"),
        ]
        info = wait_for(lambda: (i := consumer_info(bus_cfg)) and i.num_ack_pending == 0 and i, what="acks")
        assert info.num_pending == 0 and info.num_redelivered == 0
        assert str(info.config.ack_policy) in ("explicit", "AckPolicy.EXPLICIT")


def store_scope() -> Any:
    from api.store import EVERYTHING

    return EVERYTHING


def test_messages_that_cannot_be_valid_are_terminated(tmp_path: Path, bus_cfg: BusConfig) -> None:
    good = Event.model_validate(make_event())
    p = bus_cfg.subject_prefix

    async def publish_bad(_nc: Any, js: Any) -> None:
        await bus.ensure_stream(js, bus_cfg.stream, p)
        await js.publish(f"{p}.s.gate-east.event.illegal_parking", b"{not json")
        wrong_cam = make_event(camera_id="lot-north")
        await js.publish(f"{p}.s.gate-east.event.illegal_parking", json.dumps(wrong_cam).encode())
        unknown = make_event(camera_id="not-ours")
        await js.publish(f"{p}.s.not-ours.event.illegal_parking", json.dumps(unknown).encode())

    _run(bus_cfg.nats_url, publish_bad)
    with replica(settings(tmp_path, bus_cfg)) as (client, _c), sink(bus_cfg) as snk:
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        snk.send(good, {})
        wait_for(lambda: store.get_event(good.id), what="the valid event")
        info = wait_for(lambda: (i := consumer_info(bus_cfg)) and i.num_ack_pending == 0 and i, what="acks")
        assert info.num_pending == 0 and info.num_redelivered == 0
        assert store.count_events() == 1


def test_replicas_share_the_consumer_and_the_live_feed(tmp_path: Path, bus_cfg: BusConfig) -> None:
    s = settings(tmp_path, bus_cfg)
    with replica(s) as (a, ca), replica(s) as (b, cb), sink(bus_cfg) as snk:
        sub_b = b.portal.call(_subscribe, b)
        cams = ("gate-east", "lot-north")
        events = [Event.model_validate(make_event(camera_id=cams[i % 2])) for i in range(40)]
        for ev in events:
            snk.send(ev, {})
        store = a.app.state.pingan.store  # type: ignore[attr-defined]
        wait_for(lambda: store.count_events() == len(events), what="all events stored")
        assert all(len(store.messages(ev.id)) == 1 for ev in events)
        assert ca.stored + cb.stored == len(events)
        seen: set[str] = set()

        def live_b() -> bool:
            seen.update(d["id"] for k, d in b.portal.call(_drain, sub_b) if k == "event")
            return seen >= {ev.id for ev in events}

        wait_for(live_b, what="every event on replica b's live feed")
        # a disposition made on replica a reaches b's live feed too
        view, _entry = store.dispose(events[0].id, "acknowledge", "op", "operator", None, store_scope())
        from api.routers.common import event_meta, event_public

        pub = event_public(view, a.app.state.pingan)  # type: ignore[attr-defined]
        a.app.state.pingan.broadcaster.publish(  # type: ignore[attr-defined]
            "disposition", {"event": pub.model_dump(mode="json")}, event_meta(pub)
        )
        wait_for(lambda: any(k == "disposition" for k, _ in b.portal.call(_drain, sub_b)), what="disposition")


def test_camera_status_arrives_over_the_bus(tmp_path: Path, bus_cfg: BusConfig) -> None:
    with replica(settings(tmp_path, bus_cfg)) as (client, _c), sink(bus_cfg) as snk:
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        payload = {
            "name": "东门",
            "state": "running",
            "fps": 1.0,
            "frames": 10,
            "last_frame_at": time.time(),
            "detections": 4,
            "outbox_depth": 0,
        }

        def reported() -> bool:
            snk.put_status("gate-east", payload)
            row = store.camera("gate-east")
            return bool(row and row["state"] == "running" and row["frames"] == 10)

        wait_for(reported, what="camera status")


def test_a_durable_configured_by_an_operator_is_used_as_found(tmp_path: Path, bus_cfg: BusConfig) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def precreate(_nc: Any, js: Any) -> None:  # e.g. a replay from a start time, another ack wait
        await bus.ensure_stream(js, bus_cfg.stream, bus_cfg.subject_prefix)
        await js.add_consumer(
            bus_cfg.stream,
            ConsumerConfig(
                durable_name="pingan-api",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time="2026-01-01T00:00:00Z",
                filter_subject=bus.events_filter(bus_cfg.subject_prefix),
            ),
        )

    _run(bus_cfg.nats_url, precreate)
    ev = Event.model_validate(make_event())
    with replica(settings(tmp_path, bus_cfg)) as (client, _c), sink(bus_cfg) as snk:
        snk.send(ev, {})
        wait_for(lambda: client.app.state.pingan.store.get_event(ev.id), what="the event")  # type: ignore[attr-defined]
    assert consumer_info(bus_cfg).config.ack_wait == 30.0
