"""HttpSink.send_batch and the outbox's batched delivery: one POST /api/events/batch per backlog slice,
each item judged like a single send, evidence PUT as before, fallback to single requests on an older API,
and exactly-once storage through the real API (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from pipeline.errors import BatchUnsupported, PermanentSinkError, SinkError
from pipeline.outbox import Outbox
from pipeline.protocols import BatchEventSink
from pipeline.sinks import HttpSink
from tests.fakes import RecordingApi
from tests.fixtures.api import WORKER_KEY, start_live_server
from tests.pipeline.test_sinks import JPEG, event

FAST = {"backoff_base_s": 0.005, "backoff_cap_s": 0.02, "poll_s": 0.01}


def posts(api: RecordingApi) -> list[str]:
    return [p for m, p, _, _ in api.requests if m == "POST"]


@contextmanager
def spool(tmp_path: Path, url: str) -> Iterator[Outbox]:
    """An outbox (sender not started) over an HttpSink to ``url``; both closed afterwards."""
    with (
        HttpSink(url, "k") as sink,
        Outbox(tmp_path / "o.db", sink, threading.Event(), start=False, **FAST) as box,  # type: ignore[arg-type]
    ):
        yield box


def test_http_sink_is_a_batch_sink() -> None:
    with HttpSink("http://127.0.0.1:9", "k") as sink:
        assert isinstance(sink, BatchEventSink) and sink.batching


def test_one_post_for_the_batch_then_the_files_of_each() -> None:
    files = {"scene-1.jpg": JPEG}
    evs = [event(), event(files=files), event()]
    items = [(evs[0], {}), (evs[1], files), (evs[2], {})]
    with RecordingApi(batch=True) as api, HttpSink(api.url, "secret-key") as sink:
        assert sink.send_batch(items) == [None, None, None]
        assert sink.send_batch(items) == [None, None, None]  # redelivered: duplicates are acknowledged
    assert posts(api) == ["/api/events/batch", "/api/events/batch"]
    assert api.created == [(e.id, 0) for e in evs]
    assert api.evidence == {(evs[1].id, "scene-1.jpg"): JPEG}
    first = json.loads(api.requests[0][3])
    assert first == {"events": [json.loads(e.model_dump_json()) for e in evs]}
    assert api.requests[0][2]["authorization"] == "Bearer secret-key"


def test_chunks_of_batch_max() -> None:
    evs = [event() for _ in range(7)]
    with RecordingApi(batch=True) as api, HttpSink(api.url, "k", batch_max=3) as sink:
        assert sink.send_batch([(e, {}) for e in evs]) == [None] * 7
    assert [len(json.loads(b)["events"]) for m, _, _, b in api.requests if m == "POST"] == [3, 3, 1]


def test_each_item_is_judged_like_a_single_send() -> None:
    codes = [201, 200, 409, 403, 422, 503]
    puts: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "PUT":
            puts.append(req.url.path)
            return httpx.Response(201)
        items = [{"index": i, "code": c, "message": f"m{c}"} for i, c in enumerate(codes)]
        return httpx.Response(200, json={"items": items, "counts": {}})

    files = {"scene-1.jpg": JPEG}
    evs = [event(files=files) for _ in codes]
    with HttpSink("http://api", "k", transport=httpx.MockTransport(handler)) as sink:
        out = sink.send_batch([(e, files) for e in evs])
    assert out[:3] == [None, None, None]  # created, duplicate, already held (409) are acknowledged
    assert isinstance(out[3], SinkError) and not isinstance(out[3], PermanentSinkError)  # key scope: wait
    assert isinstance(out[4], PermanentSinkError) and "m422" in str(out[4])  # invalid: dead letter
    assert isinstance(out[5], SinkError) and not isinstance(out[5], PermanentSinkError)
    assert puts == [f"/api/events/{e.id}/evidence/scene-1.jpg" for e in evs[:3]]  # only acknowledged ones


@pytest.mark.parametrize("code", [500, 503, 429, 401, 403])
def test_a_transient_answer_to_the_whole_batch_fails_every_item(code: int) -> None:
    with RecordingApi(batch=True, script=[code]) as api, HttpSink(api.url, "k") as sink:
        with pytest.raises(SinkError) as err:
            sink.send_batch([(event(), {}), (event(), {})])
        assert not isinstance(err.value, PermanentSinkError)
        assert api.created == [] and sink.batching


def test_a_batch_refused_as_a_whole_goes_one_by_one() -> None:
    with RecordingApi(batch=True, script=[413]) as api, HttpSink(api.url, "k") as sink:
        evs = [event(), event()]
        assert sink.send_batch([(e, {}) for e in evs]) == [None, None]
    assert posts(api) == ["/api/events/batch", "/api/events", "/api/events"]
    assert api.created == [(e.id, 0) for e in evs]


def test_an_older_api_without_the_route_gets_single_requests() -> None:
    evs = [event(), event()]
    with RecordingApi(batch=False) as api, HttpSink(api.url, "k") as sink:
        with pytest.raises(BatchUnsupported):  # nothing was sent: the caller sends them one by one
            sink.send_batch([(e, {}) for e in evs])
        assert not sink.batching
        assert sink.send_batch([(e, {}) for e in evs]) == [None, None]  # while not batching: singles
    assert posts(api) == ["/api/events/batch", "/api/events", "/api/events"]
    assert api.created == [(e.id, 0) for e in evs]


def test_unreachable_api_raises_without_a_timeout_per_item() -> None:
    with HttpSink("http://127.0.0.1:9", "k", timeout_s=1) as sink:
        t0 = time.monotonic()
        with pytest.raises(SinkError):
            sink.send_batch([(event(), {}) for _ in range(20)])
        assert time.monotonic() - t0 < 3


def test_outbox_sends_a_backlog_in_batches_exactly_once(tmp_path: Path) -> None:
    evs = [event() for _ in range(250)]
    # the first batch fails as a whole (503), then it is retried
    with RecordingApi(batch=True, script=[503]) as api, spool(tmp_path, api.url) as box:
        for e in evs:
            box.put(e, {"scene-1.jpg": JPEG} if e is evs[7] else {})
        box.start()
        assert box.flush(20.0)
        assert box.dead_letters() == []
    assert sorted(api.created) == sorted((e.id, 0) for e in evs)
    assert len(api.created) == len(set(api.created))
    assert api.evidence == {(evs[7].id, "scene-1.jpg"): JPEG}
    batches = [p for p in posts(api) if p == "/api/events/batch"]
    assert 3 <= len(batches) <= 6 and "/api/events" not in posts(api)  # 250 = 3 batches (+ the 503 one)


def test_outbox_with_an_older_api_delivers_one_by_one(tmp_path: Path) -> None:
    evs = [event() for _ in range(5)]
    with RecordingApi(batch=False) as api, spool(tmp_path, api.url) as box:
        for e in evs:
            box.put(e, {})
        box.start()
        assert box.flush(10.0)
    assert sorted(api.created) == sorted((e.id, 0) for e in evs)
    assert posts(api).count("/api/events/batch") == 1 and posts(api).count("/api/events") == 5


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_outbox_through_the_real_api_keeps_out_of_scope_events_and_stores_the_rest_once(
    tmp_path: Path, any_db_settings
) -> None:
    """Real Outbox → HttpSink → API (SQLite and PostgreSQL): a backlog goes in a few batch requests, every
    message is stored once, evidence lands, and a message the key may not post waits in the spool (403 is
    an operator's fix, never a loss)."""
    live = start_live_server(any_db_settings)
    transport = CountingTransport()
    sink = HttpSink(live.url, WORKER_KEY, transport=transport)
    try:
        files = {"scene-1.jpg": JPEG}
        evs = [event() for _ in range(120)] + [event(files=files)]
        stray = event().model_copy(update={"camera_id": "elsewhere"})
        with Outbox(tmp_path / "o.db", sink, threading.Event(), start=False, **FAST) as box:
            for e in [*evs[:60], stray, *evs[60:]]:
                box.put(e, files if e.evidence else {})
            box.start()
            deadline = time.monotonic() + 30
            while box.depth() > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert box.depth() == 1
            pending = box.pending()
            assert [p.event_id for p in pending] == [stray.id] and "403" in (pending[0].last_error or "")
            assert box.dead_letters() == []
        store = live.server.config.app.state.pingan.store  # type: ignore[union-attr]
        assert store.count_events() == len(evs)
        for e in evs[:3] + evs[-1:]:
            assert [m["seq"] for m in store.messages(e.id)] == [0]
        view = store.get_event(evs[-1].id)
        assert view is not None and view.evidence[0]["stored"] is True
        batch_posts = transport.paths.count("POST /api/events/batch")
        assert 2 <= batch_posts <= 6, transport.paths[:10]
        assert transport.paths[:2] == ["POST /api/events/batch"] * 2  # the stray alone is retried singly
    finally:
        sink.close()
        live.stop()
