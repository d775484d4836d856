"""NatsSink against the machine's NATS JetStream (fails, never skips, when CI=true)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline import bus
from pipeline.errors import SinkError
from pipeline.events import Event, Evidence
from pipeline.ids import uuid7
from pipeline.outbox import Outbox
from pipeline.sinks_nats import NatsSink

pytestmark = pytest.mark.nats


@dataclass
class Bus:
    url: str
    stream: str
    prefix: str

    def sink(self, **kw: Any) -> NatsSink:
        return NatsSink(self.url, self.stream, self.prefix, kw.pop("site_id", "site-1"), **kw)

    def run(self, fn: Any) -> Any:
        """Run ``await fn(js)`` on a fresh connection."""
        import nats

        async def main() -> Any:
            nc = await nats.connect(self.url)
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())


@pytest.fixture
def nbus(nats_url: str) -> Iterator[Bus]:
    tag = uuid.uuid4().hex[:10]
    b = Bus(nats_url, f"T{tag}", f"t{tag}")
    yield b

    async def cleanup(js: Any) -> None:
        for name in (b.stream, f"OBJ_{bus.evidence_bucket(b.prefix)}"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)

    b.run(cleanup)


def event(
    camera: str = "gate.east", seq: int = 0, evidence: list[Evidence] | None = None, **kw: Any
) -> Event:
    start = datetime.now(UTC) - timedelta(minutes=5)
    values: dict[str, Any] = {
        "id": str(uuid7()),
        "type": "illegal_parking",
        "state": "open" if seq == 0 else "update",
        "camera_id": camera,
        "started_at": start,
        "updated_at": start + timedelta(seconds=seq),
        "seq": seq,
        "evidence": evidence or [],
    }
    values.update(kw)
    return Event.model_validate(values)


def jpeg(n: int, seed: int = 0) -> bytes:
    return b"\xff\xd8" + bytes((i * 31 + seed) % 256 for i in range(n)) + b"\xff\xd9"


def stream_msgs(b: Bus) -> list[Any]:
    async def fn(js: Any) -> list[Any]:
        info = await js.stream_info(b.stream)
        return [await js.get_msg(b.stream, s) for s in range(info.state.first_seq, info.state.last_seq + 1)]

    return b.run(fn)  # type: ignore[no-any-return]


def test_send_publishes_once_per_id_and_seq(nbus: Bus) -> None:
    ev = event()
    with nbus.sink() as sink:
        sink.send(ev, {})
        sink.send(ev, {})  # a retry after a lost PubAck: JetStream drops it (Nats-Msg-Id)
        nxt = event(seq=1, id=ev.id, started_at=ev.started_at)
        sink.send(nxt, {})
    msgs = stream_msgs(nbus)
    assert [m.subject for m in msgs] == [f"{nbus.prefix}.site-1.gate~east.event.illegal_parking"] * 2
    assert [m.headers[bus.MSG_ID] for m in msgs] == [f"{ev.id}:0", f"{ev.id}:1"]
    assert Event.model_validate_json(msgs[0].data) == ev
    assert bus.parse_event_subject(msgs[0].subject) == ("site-1", "gate.east", "illegal_parking")


def test_stream_is_file_backed_with_a_duplicate_window_and_ensured_idempotently(nbus: Bus) -> None:
    from nats.js.api import StorageType

    async def precreate(js: Any) -> None:  # an older deployment's stream: other window, other subjects
        await js.add_stream(name=nbus.stream, subjects=[f"{nbus.prefix}.old"], duplicate_window=5.0)

    nbus.run(precreate)
    with nbus.sink() as a, nbus.sink() as b:
        a.send(event(), {})
        b.send(event(), {})
    info = nbus.run(lambda js: js.stream_info(nbus.stream))
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == bus.DUPLICATE_WINDOW_S
    assert info.config.subjects == [bus.events_filter(nbus.prefix)]
    assert info.state.messages == 2


def test_evidence_goes_to_the_object_store_before_the_message(nbus: Bus) -> None:
    small, big = jpeg(50_000), jpeg(2_500_000, seed=7)  # big: 2.5 MB, over the 1 MB max_payload
    now = datetime.now(UTC)
    ev = event(
        evidence=[
            Evidence(
                name="scene-1.jpg", taken_at=now, sha256=hashlib.sha256(small).hexdigest(), kind="scene"
            ),
            Evidence(name="plate-1.jpg", taken_at=now, sha256=hashlib.sha256(big).hexdigest(), kind="plate"),
        ]
    )
    with nbus.sink() as sink:
        sink.send(ev, {"scene-1.jpg": small, "plate-1.jpg": big})

        async def read(js: Any) -> tuple[bytes, bytes, str]:
            obj = await js.object_store(bus.evidence_bucket(nbus.prefix))
            a = await obj.get(bus.evidence_key(ev.id, "scene-1.jpg"))
            b = await obj.get(bus.evidence_key(ev.id, "plate-1.jpg"))
            return a.data, b.data, a.info.nuid

        got_small, got_big, nuid = nbus.run(read)
        assert (got_small, got_big) == (small, big)
        sink.send(ev, {"scene-1.jpg": small})  # a retry does not upload the same bytes again
        nuid_after = nbus.run(
            lambda js: _info(js, bus.evidence_bucket(nbus.prefix), bus.evidence_key(ev.id, "scene-1.jpg"))
        )
        assert nuid_after == nuid
    assert len(stream_msgs(nbus)) == 1


async def _info(js: Any, bucket: str, key: str) -> str:
    obj = await js.object_store(bucket)
    return str((await obj.get_info(key)).nuid)


def test_unreachable_server_is_a_quick_transient_error() -> None:
    sink = NatsSink("nats://user:hunter2@127.0.0.1:1", "X", "x", connect_timeout_s=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(SinkError) as err:
            sink.send(event(), {})
        assert time.monotonic() - t0 < 5.0
        assert "hunter2" not in str(err.value)
        assert sink.put_status("cam", {"state": "running"}) is False
    finally:
        sink.close()
    with pytest.raises(SinkError):
        sink.send(event(), {})  # closed


def test_deleted_stream_is_created_again(nbus: Bus) -> None:
    with nbus.sink() as sink:
        sink.send(event(), {})
        nbus.run(lambda js: js.delete_stream(nbus.stream))
        ev = event()
        for _ in range(3):  # the first try may fail (no stream answered); the outbox would retry
            try:
                sink.send(ev, {})
                break
            except SinkError:
                continue
        else:
            pytest.fail("the sink did not recreate the stream")
    assert [m.headers[bus.MSG_ID] for m in stream_msgs(nbus)] == [f"{ev.id}:0"]


def test_camera_status_is_a_core_nats_message(nbus: Bus) -> None:
    import json

    import nats

    got: list[tuple[str, dict[str, Any]]] = []
    ready, done = threading.Event(), threading.Event()

    async def listen() -> None:
        nc = await nats.connect(nbus.url)

        async def cb(msg: Any) -> None:
            got.append((msg.subject, json.loads(msg.data)))
            done.set()

        await nc.subscribe(bus.status_filter(nbus.prefix), cb=cb)
        await nc.flush()
        ready.set()
        for _ in range(100):
            if done.is_set():
                break
            await asyncio.sleep(0.05)
        await nc.close()

    t = threading.Thread(target=lambda: asyncio.run(listen()))
    t.start()
    assert ready.wait(5)
    with nbus.sink() as sink:
        assert sink.put_status("gate.east", {"state": "running", "fps": 1.0}) is True
    t.join(10)
    assert got == [(f"{nbus.prefix}.site-1.gate~east.status", {"state": "running", "fps": 1.0})]
    assert bus.parse_status_subject(got[0][0]) == ("site-1", "gate.east")


def test_outbox_delivers_through_the_sink(nbus: Bus, tmp_path: Any) -> None:
    stop = threading.Event()
    sink = nbus.sink()
    outbox = Outbox(tmp_path / "outbox.db", sink, stop)
    try:
        events = [event(camera=f"cam-{i % 3}") for i in range(20)]
        for ev in events:
            assert outbox.put(ev, {})
        assert outbox.flush(15.0)
        assert outbox.depth() == 0
    finally:
        stop.set()
        outbox.close(5.0)
        sink.close()
    ids = {m.headers[bus.MSG_ID] for m in stream_msgs(nbus)}
    assert ids == {f"{e.id}:0" for e in events}


def test_bus_config_and_the_sink_it_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import parse_config
    from pipeline.errors import ConfigError
    from pipeline.sinks import HttpSink
    from pipeline.sinks_nats import sink_for

    cams = "cameras: [{id: c1, name: c1, source: {path: x.mp4}}]\n"
    cfg = parse_config(cams)
    b = cfg.bus
    assert (b.kind, b.stream, b.subject_prefix, b.replicas) == ("http", "PINGAN", "pingan", 1)
    http = sink_for(cfg)
    assert isinstance(http, HttpSink)
    http.close()
    monkeypatch.setenv("NATS_PW", "s3cret")
    cfg = parse_config(
        "site: {id: haiyi}\nbus: {kind: nats, nats_url: 'nats://w:${NATS_PW}@h1:4222,nats://w:${NATS_PW}@h2:4222',"
        " replicas: 3}\n" + cams
    )
    assert cfg.bus.nats_url == "nats://w:s3cret@h1:4222,nats://w:s3cret@h2:4222"
    nsink = sink_for(cfg)
    try:
        assert isinstance(nsink, NatsSink)
        assert (nsink.site_id, nsink.replicas, nsink.prefix) == ("haiyi", 3, "pingan")
        assert "s3cret" not in nsink._masked
    finally:
        nsink.close()
    for bad in (
        "bus: {kind: kafka}",
        "bus: {kind: nats, nats_url: 'http://h:4222'}",
        "bus: {kind: nats, nats_url: 'nats://${UNSET_VAR_X}@h'}",
        "bus: {stream: 'a.b'}",
    ):
        with pytest.raises(ConfigError):
            parse_config(bad + "\n" + cams)


def test_subject_tokens_round_trip() -> None:
    subject = bus.event_subject("pingan", "site.a", "cam.1", "bin_overflow")
    assert subject == "pingan.site~a.cam~1.event.bin_overflow"
    assert bus.parse_event_subject(subject) == ("site.a", "cam.1", "bin_overflow")
    assert bus.parse_event_subject("pingan.s.live") is None
    assert bus.live_subject("pingan", "site.a") == "pingan.site~a.live"
    assert bus.msg_id("x", 3) == "x:3"
