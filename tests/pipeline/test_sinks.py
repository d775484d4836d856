from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from pipeline.errors import PermanentSinkError, SinkError
from pipeline.events import Event, EventState, EventType, Evidence
from pipeline.evidence import sha256_hex
from pipeline.ids import uuid7
from pipeline.outbox import Outbox
from pipeline.protocols import EventSink
from pipeline.sinks import HttpSink
from tests.fakes import MemorySink, RecordingApi, free_port

JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


def event(seq: int = 0, files: dict[str, bytes] | None = None, eid: str | None = None) -> Event:
    now = datetime.now(UTC)
    return Event(
        id=eid or str(uuid7()),
        type=EventType.ILLEGAL_PARKING,
        state=EventState.OPEN if seq == 0 else EventState.UPDATE,
        camera_id="gate-east",
        zone_id="fire-lane-3",
        started_at=now,
        updated_at=now,
        seq=seq,
        evidence=[
            Evidence(name=n, taken_at=now, sha256=sha256_hex(d), kind="scene")
            for n, d in (files or {}).items()
        ],
    )


def test_sinks_satisfy_the_protocol() -> None:
    with HttpSink("http://127.0.0.1:9", "k") as sink:
        assert isinstance(sink, EventSink)
    assert isinstance(MemorySink(), EventSink)


def test_posts_the_message_then_puts_each_file() -> None:
    files = {"scene-1.jpg": JPEG, "plate-1.jpg": JPEG + b"2"}
    e = event(files=files)
    with RecordingApi() as api, HttpSink(api.url + "/", "secret-key") as sink:
        sink.send(e, files)
        sink.send(e, files)  # idempotent: duplicate answered 200, files PUT again
    assert api.created == [(e.id, 0)]
    assert api.messages[(e.id, 0)] == json.loads(e.model_dump_json())
    assert api.evidence == {(e.id, "scene-1.jpg"): JPEG, (e.id, "plate-1.jpg"): JPEG + b"2"}
    methods = [(m, p) for m, p, _, _ in api.requests]
    assert methods[:3] == [
        ("POST", "/api/events"),
        ("PUT", f"/api/events/{e.id}/evidence/scene-1.jpg"),
        ("PUT", f"/api/events/{e.id}/evidence/plate-1.jpg"),
    ]
    for _, path, headers, _ in api.requests:
        assert headers["authorization"] == "Bearer secret-key"
        if "/evidence/" in path:
            assert headers["content-type"] == "image/jpeg"
        else:
            assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("code", [500, 502, 503, 408, 429, 401, 403])
def test_server_errors_and_throttling_are_transient(code: int) -> None:
    with RecordingApi(script=[code]) as api, HttpSink(api.url, "k") as sink:
        with pytest.raises(SinkError) as err:
            sink.send(event(), {})
        assert not isinstance(err.value, PermanentSinkError)
        assert str(code) in str(err.value)


@pytest.mark.parametrize("code", [400, 404, 413, 422])
def test_client_errors_are_permanent(code: int) -> None:
    with (
        RecordingApi(script=[code]) as api,
        HttpSink(api.url, "k") as sink,
        pytest.raises(PermanentSinkError),
    ):
        sink.send(event(), {})


def test_409_on_the_message_is_a_duplicate_but_on_evidence_a_rejection() -> None:
    e = event(files={"scene-1.jpg": JPEG})
    with RecordingApi(script=[409]) as api, HttpSink(api.url, "k") as sink:
        sink.send(e, {})  # 409 on POST: the API already has it
    calls: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(201 if req.method == "POST" else 409)

    with (
        HttpSink("http://api", "k", transport=httpx.MockTransport(handler)) as sink,
        pytest.raises(PermanentSinkError, match="409"),
    ):
        sink.send(e, {"scene-1.jpg": b"other bytes"})
    assert len(calls) == 2


def test_refused_connection_and_timeout_are_transient() -> None:
    with HttpSink(f"http://127.0.0.1:{free_port()}", "k", timeout_s=1) as sink, pytest.raises(SinkError):
        sink.send(event(), {})
    with RecordingApi(delay_s=0.5) as api, HttpSink(api.url, "k", timeout_s=0.1) as sink:
        t0 = time.monotonic()
        with pytest.raises(SinkError) as err:
            sink.send(event(), {})
        assert time.monotonic() - t0 < 0.45
        assert not isinstance(err.value, PermanentSinkError)


def test_put_status_is_best_effort() -> None:
    payload = {"name": "东门", "state": "running", "reason": None, "fps": 1.0}
    with HttpSink(f"http://127.0.0.1:{free_port()}", "k", timeout_s=0.5) as sink:
        assert sink.put_status("gate-east", payload) is False  # refused: no exception
    with RecordingApi(script=[503]) as api, HttpSink(api.url, "k") as sink:
        assert sink.put_status("gate-east", payload) is False
        assert sink.put_status("gate-east", payload) is True
    assert api.statuses == [("gate-east", payload)]


def test_outbox_over_http_retries_until_the_api_returns_and_delivers_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    files = {"scene-1.jpg": JPEG}
    eid = str(uuid7())
    msgs = [event(0, files, eid), event(1, files, eid), event(0, files)]
    sink = HttpSink(f"http://127.0.0.1:{port}", "k", timeout_s=1)
    box = Outbox(
        tmp_path / "o.db", sink, threading.Event(), backoff_base_s=0.02, backoff_cap_s=0.1, poll_s=0.01
    )
    try:
        for m in msgs:
            box.put(m, files)
        assert not box.flush(0.4)  # nothing listens yet: refused, retried
        assert box.stats()["failing"] > 0
        with RecordingApi(port=port, script=[503, 500, 503]) as api:  # up, but failing at first
            assert box.flush(10.0)
            assert sorted(api.created) == sorted((m.id, m.seq) for m in msgs)  # exactly once each
            assert api.created.index((eid, 0)) < api.created.index((eid, 1))
            assert set(api.evidence) == {(eid, "scene-1.jpg"), (msgs[2].id, "scene-1.jpg")}
            assert len(api.created) == len(set(api.created))
            posts = [r for r in api.requests if r[0] == "POST"]
            assert len(posts) > len(msgs)  # the scripted 5xx were retried
    finally:
        box.close(2.0)
        sink.close()
