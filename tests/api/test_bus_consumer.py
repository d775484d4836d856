"""api.bus_consumer against the machine's NATS JetStream (fails, never skips, when CI=true)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from api.app import create_app
from api.broadcast import Subscription
from api.bus_consumer import BusConsumer
from api.runtime import Runtime
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
def replica(
    s: Settings, prepare: Callable[[Runtime], None] | None = None
) -> Iterator[tuple[TestClient, BusConsumer]]:
    app = create_app(s)
    if prepare is not None:  # before the consumer starts: what is in the stream then comes as one batch
        prepare(app.state.pingan)
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


def with_still(jpg: bytes) -> dict[str, Any]:
    """An event message that lists ``jpg`` as its evidence ``scene-1.jpg``."""
    still = {
        "name": "scene-1.jpg",
        "taken_at": datetime.now(UTC).isoformat(),
        "sha256": hashlib.sha256(jpg).hexdigest(),
        "kind": "scene",
    }
    return make_event(evidence=[still])


def test_bus_messages_are_stored_with_evidence_then_acked(tmp_path: Path, bus_cfg: BusConfig) -> None:
    jpg = b"\xff\xd8" + bytes(range(256)) * 400 + b"\xff\xd9"
    body = with_still(jpg)
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


# ---- one transaction per fetched batch ---------------------------------------------------------------


def publish(cfg: BusConfig, items: list[tuple[str, bytes]]) -> list[int]:
    """Put raw messages in the stream, in order, before any replica runs; returns their stream sequences."""

    async def main(_nc: Any, js: Any) -> list[int]:
        await bus.ensure_stream(js, cfg.stream, cfg.subject_prefix)
        return [(await js.publish(subject, body)).seq for subject, body in items]

    return list(_run(cfg.nats_url, main))


def wire(cfg: BusConfig, body: dict[str, Any], site: str = "compound-7") -> tuple[str, bytes]:
    subject = bus.event_subject(cfg.subject_prefix, site, body["camera_id"], body["type"])
    return subject, json.dumps(body).encode()


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, float | None]]]:
    """What the consumer answered each message: ack / nak / term → [(stream sequence, nak delay)]."""
    from nats.aio.msg import Msg

    got: dict[str, list[tuple[int, float | None]]] = {"ack": [], "nak": [], "term": []}
    for name in got:

        def answer(msg: Any, *a: Any, _name: str = name, _real: Any = getattr(Msg, name), **kw: Any) -> Any:
            got[_name].append((msg.metadata.sequence.stream, kw.get("delay")))
            return _real(msg, *a, **kw)

        monkeypatch.setattr(Msg, name, answer)
    return got


def count_batches(calls: list[list[tuple[str, int]]]) -> Callable[[Runtime], None]:
    """A ``prepare`` that records each ``put_events`` call as its messages' (id, seq)."""

    def prepare(rt: Runtime) -> None:
        real = rt.store.put_events

        def put_events(evs: Any, worker: Any = None) -> Any:
            calls.append([(ev.id, ev.seq) for ev in evs])
            return real(evs, worker)

        rt.store.put_events = put_events  # type: ignore[method-assign]

    return prepare


def test_a_fetched_batch_is_stored_in_one_call_and_only_bad_messages_are_terminated(
    tmp_path: Path, bus_cfg: BusConfig, replies: dict[str, list[tuple[int, float | None]]]
) -> None:
    a = make_event()
    b = make_event(camera_id="lot-north")
    c = make_event()
    a_closed = dict(a, seq=1, state="closed", ended_at=a["updated_at"])
    a_elsewhere = dict(a, camera_id="lot-north", seq=2)  # valid alone; the batch has the id on gate-east
    gate = bus.event_subject(bus_cfg.subject_prefix, "compound-7", "gate-east", "illegal_parking")
    seqs = publish(
        bus_cfg,
        [
            wire(bus_cfg, a),
            (gate, b"{not json"),
            wire(bus_cfg, b, site="compound-9"),
            wire(bus_cfg, a_elsewhere),
            wire(bus_cfg, a_closed),
            (gate, json.dumps(make_event(camera_id="lot-north")).encode()),  # subject ≠ body
            wire(bus_cfg, c),
            wire(bus_cfg, make_event(camera_id="not-ours")),
        ],
    )
    calls: list[list[tuple[str, int]]] = []
    with replica(settings(tmp_path, bus_cfg), count_batches(calls)) as (client, consumer):
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        wait_for(
            lambda: len(replies["ack"]) + len(replies["term"]) == len(seqs), what="every message answered"
        )
        assert calls == [[(a["id"], 0), (b["id"], 0), (a["id"], 2), (a["id"], 1), (c["id"], 0)]]
        assert sorted(s for s, _ in replies["term"]) == [seqs[i] for i in (1, 3, 5, 7)]
        assert sorted(s for s, _ in replies["ack"]) == [seqs[i] for i in (0, 2, 4, 6)]
        assert replies["nak"] == []
        assert consumer.stored == 4
        assert store.count_events() == 3
        view = store.get_event(a["id"])
        assert view.payload["camera_id"] == "gate-east" and view.payload["state"] == "closed"
        assert [(m["seq"], m["worker"]) for m in store.messages(a["id"])] == [
            (0, "nats:compound-7"),
            (1, "nats:compound-7"),
        ]
        assert [m["worker"] for m in store.messages(b["id"])] == ["nats:compound-9"]
        info = wait_for(lambda: (i := consumer_info(bus_cfg)) and i.num_ack_pending == 0 and i, what="acks")
        assert info.num_pending == 0


def test_a_database_failure_naks_the_whole_batch_and_it_is_stored_once_when_back(
    tmp_path: Path, bus_cfg: BusConfig, replies: dict[str, list[tuple[int, float | None]]]
) -> None:
    events = [make_event(camera_id=cam) for cam in ("gate-east", "lot-north", "gate-east")]
    items = []
    for body in events:
        items += [
            wire(bus_cfg, body),
            wire(bus_cfg, dict(body, seq=1, state="closed", ended_at=body["updated_at"])),
        ]
    seqs = publish(bus_cfg, items)
    down = threading.Event()
    down.set()
    calls: list[list[tuple[str, int]]] = []

    def prepare(rt: Runtime) -> None:
        count_batches(calls)(rt)

        # fails inside the transaction, after the batch's messages were inserted: they must roll back too
        @sa.event.listens_for(rt.store.engine, "before_cursor_execute")
        def fail(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
            if down.is_set() and statement.lstrip().upper().startswith("INSERT INTO EVENTS "):
                raise sa.exc.OperationalError(statement, None, ConnectionError("database is down"))

    with replica(settings(tmp_path, bus_cfg), prepare) as (client, consumer):
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        wait_for(lambda: len(replies["nak"]) >= len(seqs), what="the batch nak'ed")
        assert calls[0] == [(e["id"], s) for e in events for s in (0, 1)]
        assert sorted(replies["nak"][: len(seqs)]) == [(s, 2.0) for s in seqs]
        assert replies["ack"] == [] and replies["term"] == []
        assert store.count_events() == 0
        with store.engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM event_messages")).scalar_one() == 0
        down.clear()
        # JetStream delivers at least once: a nak'ed message can come back twice (CI saw 6 acked twice before
        # 1 was), and a duplicate is acked but not stored again: wait for every message, count stores
        wait_for(
            lambda: {s for s, _ in replies["ack"]} == set(seqs),
            timeout=20,
            what="the batch stored after the outage",
        )
        assert consumer.stored == len(seqs)
        for e in events:
            assert [m["seq"] for m in store.messages(e["id"])] == [0, 1]
            assert store.get_event(e["id"]).payload["state"] == "closed"
        assert store.count_events() == len(events)


def test_open_and_closed_in_one_batch_end_closed_and_are_shown_in_order_with_evidence(
    tmp_path: Path, bus_cfg: BusConfig, replies: dict[str, list[tuple[int, float | None]]]
) -> None:
    jpg = b"\xff\xd8" + bytes(range(256)) * 40 + b"\xff\xd9"
    body = with_still(jpg)
    ev = Event.model_validate(body)
    closed = Event.model_validate(dict(body, seq=1, state="closed", ended_at=body["updated_at"]))
    with sink(bus_cfg) as snk:
        snk.send(ev, {"scene-1.jpg": jpg})
        snk.send(closed, {})
    calls: list[list[tuple[str, int]]] = []
    shown: list[dict[str, Any]] = []

    def prepare(rt: Runtime) -> None:
        count_batches(calls)(rt)
        real = rt.broadcaster.publish

        def publish(kind: str, data: dict[str, Any], meta: dict[str, Any]) -> None:
            if kind == "event":
                shown.append(data)
            real(kind, data, meta)

        rt.broadcaster.publish = publish  # type: ignore[method-assign]

    with replica(settings(tmp_path, bus_cfg), prepare) as (client, consumer):
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        wait_for(lambda: len(replies["ack"]) == 2, what="both acked")
        assert calls == [[(ev.id, 0), (ev.id, 1)]]
        assert store.get_event(ev.id).payload["state"] == "closed"
        # each message as it was stored (an MQTT "new" then "end"), both with the still copied in this batch
        assert [(d["seq"], d["state"]) for d in shown] == [(0, "open"), (1, "closed")]
        assert all(d["evidence"][0]["stored"] and d["evidence"][0]["size"] == len(jpg) for d in shown)
        found = store.get_evidence(ev.id, store_scope(), "scene-1.jpg")
        assert found is not None and found[1].read_bytes() == jpg
        assert consumer.stored == 2 and replies["nak"] == [] and replies["term"] == []


def test_an_older_message_after_a_newer_one_is_stored_and_counted(
    tmp_path: Path, bus_cfg: BusConfig, replies: dict[str, list[tuple[int, float | None]]]
) -> None:
    # Redelivery after an outage reorders: an event's "closed" message can be stored before its "open" one.
    # The older one is recorded (stale: the event stays closed) and is a stored message, not a duplicate; the
    # count left it out and the outage test failed on CI (5 stored of 6).
    body = make_event(camera_id="gate-east")
    seqs = publish(
        bus_cfg,
        [wire(bus_cfg, dict(body, seq=1, state="closed", ended_at=body["updated_at"])), wire(bus_cfg, body)],
    )
    with replica(settings(tmp_path, bus_cfg)) as (client, consumer):
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        wait_for(lambda: {s for s, _ in replies["ack"]} == set(seqs), what="both acked")
        assert [m["seq"] for m in store.messages(body["id"])] == [0, 1]
        assert store.get_event(body["id"]).payload["state"] == "closed"
        assert consumer.stored == 2


def test_a_replica_stopping_mid_batch_naks_it_for_another_at_once(
    tmp_path: Path, bus_cfg: BusConfig, replies: dict[str, list[tuple[int, float | None]]]
) -> None:
    events = [make_event() for _ in range(3)]
    seqs = publish(bus_cfg, [wire(bus_cfg, e) for e in events])
    entered = threading.Event()

    def prepare(rt: Runtime) -> None:
        def put_events(evs: Any, worker: Any = None) -> Any:
            entered.set()  # the batch is in the worker thread: hold it until the app has shut down
            deadline = time.monotonic() + 30
            while not rt.broadcaster.closed and time.monotonic() < deadline:
                time.sleep(0.02)
            raise ConnectionError("the process is going away")

        rt.store.put_events = put_events  # type: ignore[method-assign]

    s = settings(tmp_path, bus_cfg)
    with replica(s, prepare):
        assert entered.wait(15)
    assert sorted(replies["nak"]) == [(q, None) for q in seqs]  # no delay: not after ack_wait (10 s)
    t0 = time.monotonic()
    with replica(s) as (client, consumer):
        store = client.app.state.pingan.store  # type: ignore[attr-defined]
        wait_for(lambda: store.count_events() == len(events), what="the other replica storing them")
        assert time.monotonic() - t0 < 8.0
        assert consumer.stored == len(events)
