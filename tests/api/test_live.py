"""SSE: a posted event reaches an open stream; scopes filter it; streams end when the server stops."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx

from tests.fixtures.api import PASSWORD, WORKER, make_event, start_live_server


def _token(client: httpx.Client, name: str) -> dict[str, str]:
    r = client.post("/api/token", json={"username": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _reader(url: str, headers: dict[str, str], out: queue.Queue, ready: threading.Event) -> None:
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=10)) as c,
        c.stream("GET", "/api/events/stream", headers=headers) as r,
    ):
        out.put(("status", r.status_code, r.headers.get("content-type")))
        kind = None
        for line in r.iter_lines():
            if line.startswith(": connected"):
                ready.set()
            elif line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.put((kind, json.loads(line.removeprefix("data: ")), time.monotonic()))
                if kind == "bye":
                    break
    out.put(("ended", None, time.monotonic()))


def test_sse_delivers_posted_event_and_ends_on_shutdown(api_settings, api_users):
    live = start_live_server(api_settings)
    stopped = False
    try:
        with httpx.Client(base_url=live.url) as c:
            streams = {}
            # police pull violations; the live feed is the security room's only
            denied = c.get("/api/events/stream", headers=_token(c, "police"))
            assert denied.status_code == 403
            for who in ("op", "op_bins"):
                q: queue.Queue = queue.Queue()
                ready = threading.Event()
                t = threading.Thread(target=_reader, args=(live.url, _token(c, who), q, ready), daemon=True)
                t.start()
                assert ready.wait(5), who
                streams[who] = (q, t)
                assert q.get(timeout=1)[1:] == (200, "text/event-stream; charset=utf-8")
            ev = make_event()
            sent = time.monotonic()
            assert c.post("/api/events", json=ev, headers=WORKER).status_code == 201
            for who in ("op",):
                kind, data, at = streams[who][0].get(timeout=5)
                assert (kind, data["id"]) == ("event", ev["id"]), who
                assert at - sent < 2.0
            # a duplicate is not re-published; the bin operator sees nothing of a parking event
            assert c.post("/api/events", json=ev, headers=WORKER).status_code == 200
            assert streams["op"][0].empty()
            assert streams["op_bins"][0].empty()
        t0 = time.monotonic()
        live.stop()
        stopped = True
        assert time.monotonic() - t0 < 5, "server did not stop promptly with streams open"
        for who, (q, t) in streams.items():
            t.join(timeout=5)
            assert not t.is_alive(), who
            items = []
            while not q.empty():
                items.append(q.get())
            assert items[-1][0] == "ended"
    finally:
        if not stopped:
            live.stop()


def test_stream_requires_reader(api_client):
    assert api_client.get("/api/events/stream").status_code == 401
    assert api_client.get("/api/events/stream", headers=WORKER).status_code == 403


def test_broadcaster_drops_oldest_when_full():
    import asyncio

    from api.broadcast import Broadcaster

    async def run() -> list[int]:
        bc = Broadcaster(queue_size=3)
        bc.bind(asyncio.get_running_loop())
        sub = bc.subscribe()
        for i in range(10):
            bc.publish("event", {"i": i}, {})
        got = [json.loads(sub.queue.get_nowait().text.split("data: ")[1])["i"] for _ in range(3)]
        assert sub.dropped == 7
        bc.close()
        assert sub.queue.get_nowait().kind == "close"
        return got

    assert asyncio.run(run()) == [7, 8, 9]


def test_concurrent_writers_on_sqlite_never_fail(live_api):
    """Eight workers posting at once (new events, duplicates, status) through a real server: all 2xx."""
    from concurrent.futures import ThreadPoolExecutor

    events = [make_event(camera_id=("gate-east", "lot-north")[i % 2]) for i in range(80)]
    status = {"state": "running", "fps": 1.0}

    def send(i: int) -> list[int]:
        with httpx.Client(base_url=live_api.url, headers=WORKER, timeout=30) as c:
            codes = [
                c.post("/api/events", json=events[i]).status_code,
                c.post("/api/events", json=events[i]).status_code,
                c.put("/api/cameras/gate-east/status", json=status).status_code,
            ]
            return codes

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(len(events))))
    assert all(r == [201, 200, 204] for r in results), results
    with httpx.Client(base_url=live_api.url) as c:
        tok = _token(c, "admin")
        seen, cursor = [], None
        while True:
            page = c.get(
                "/api/events", params={"limit": 500} | ({"cursor": cursor} if cursor else {}), headers=tok
            ).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert sorted(seen) == sorted(e["id"] for e in events)
