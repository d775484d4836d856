"""Signed webhook push: a receiver that is down for a while gets each message once it is back, signed, with a
stable idempotency key; endpoints get only their event types and grids; the queue survives API restarts."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from api.webhooks import backoff_s, sign, verify_signature
from pipeline.config import WebhookConfig
from tests.fixtures.api import WORKER, make_event, make_settings

SECRET = "police-shared-secret-0123456789"
CLEANING_SECRET = "cleaning-shared-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A real HTTP server on 127.0.0.1 in a thread; answers ``fail_first`` requests with 503, then 200."""

    def __init__(self, port: int, fail_first: int = 0) -> None:
        self.port, self.fail_first = port, fail_first
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    status = 503 if receiver.fail_first > 0 else 200
                    receiver.fail_first -= 1
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body, "status": status}
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None

    def got(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if path is None or r["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(_free_port())
    try:
        yield r
    finally:
        r.stop()


def hook_settings(tmp_path: Path, port: int, **hook: Any) -> Settings:
    police = {
        "id": "police",
        "url": f"http://127.0.0.1:{port}/police",
        "secret": SecretStr(SECRET),
        "event_types": ["illegal_parking"],
        "timeout_s": 2.0,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        **hook,
    }
    cleaning = {
        "id": "cleaning",
        "url": f"http://127.0.0.1:{port}/cleaning",
        "secret": SecretStr(CLEANING_SECRET),
        "event_types": ["bin_overflow"],
        "grid_prefix": "fangshan/dongcheng",
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
    }
    hooks = [WebhookConfig.model_validate(police), WebhookConfig.model_validate(cleaning)]
    return make_settings(tmp_path, webhooks=hooks, webhook_poll_s=0.05)


@pytest.fixture
def api_settings(tmp_path: Path, receiver: Receiver) -> Settings:  # the fixtures' API, with webhooks
    return hook_settings(tmp_path, receiver.port)


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def deliveries(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/webhooks/deliveries", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_signature_and_backoff():
    body = b'{"id":"x"}'
    sig = sign(SECRET, "1700000000", body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_signature(SECRET, "1700000000", body, sig, now=1700000100)
    assert not verify_signature(SECRET, "1700000000", body + b" ", sig, now=1700000100)
    assert not verify_signature("another-secret-0123456789", "1700000000", body, sig, now=1700000100)
    assert not verify_signature(SECRET, "1700000000", body, sig, now=1700009999)  # too old: a replay
    delays = [backoff_s(n, 2.0, 600.0, rand=lambda: 1.0) for n in range(1, 13)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0] and max(delays) == 600.0
    assert backoff_s(3, 2.0, 600.0, rand=lambda: 0.0) == 4.0  # jitter: 50-100 %


def test_down_receiver_gets_each_message_once_it_is_back(api_client, auth_headers, receiver):
    admin = auth_headers("admin")
    ev = make_event()
    assert api_client.post("/api/events", json=ev, headers=WORKER).status_code == 201
    # the receiver is down: connection refused, tried again and again with backoff
    wait_for(lambda: [d for d in deliveries(api_client, admin) if d["attempts"] >= 3], what="3 failed tries")
    upd = {**ev, "state": "update", "seq": 1, "dwell_s": 120.0}
    assert api_client.post("/api/events", json=upd, headers=WORKER).status_code == 200
    # back, but answering 503 twice more before it accepts
    receiver.fail_first = 2
    receiver.start()

    def both_delivered() -> bool:
        items = deliveries(api_client, admin, endpoint_id="police")
        return len(items) == 2 and all(d["status"] == "delivered" for d in items)

    wait_for(both_delivered, what="delivery")
    time.sleep(0.3)  # nothing more arrives
    got = receiver.got("/police")
    keys = [r["headers"]["Idempotency-Key"] for r in got]
    assert keys == [f"{ev['id']}:0"] * 3 + [f"{ev['id']}:1"]  # in order, the key stable across retries
    assert [r["status"] for r in got] == [503, 503, 200, 200]  # accepted exactly once each
    for r in got:
        ts = r["headers"]["X-Pingan-Timestamp"]
        assert verify_signature(SECRET, ts, r["body"], r["headers"]["X-Pingan-Signature"])
        assert r["headers"]["Content-Type"] == "application/json"
    sent = json.loads(got[-1]["body"])
    assert (sent["id"], sent["seq"], sent["state"], sent["type"]) == (
        ev["id"],
        1,
        "update",
        "illegal_parking",
    )
    first = deliveries(api_client, admin, event_id=ev["id"])[-1]
    assert first["seq"] == 0 and first["attempts"] >= 5 and first["last_status"] == 200
    assert first["idempotency_key"] == f"{ev['id']}:0" and first["history"][-1]["status"] == 200
    assert any("ConnectError" in (h["error"] or "") for h in first["history"])
    # a duplicate post of the same message is not pushed again
    assert api_client.post("/api/events", json=upd, headers=WORKER).status_code == 200
    time.sleep(0.3)
    assert len(receiver.got("/police")) == 4


def test_bin_events_go_to_cleaning_not_to_police(api_client, auth_headers, receiver):
    receiver.start()
    admin = auth_headers("admin")
    park = make_event()
    bins = make_event(
        type="bin_overflow", camera_id="bins-west", zone_id="station-1", grid="fangshan/dongcheng/lane/0007"
    )
    elsewhere = make_event(
        type="bin_overflow", camera_id="bins-west", zone_id="station-1", grid="fangshan/xilu/lane/0001"
    )
    for e in (park, bins, elsewhere):
        assert api_client.post("/api/events", json=e, headers=WORKER).status_code == 201
    wait_for(lambda: receiver.got("/police") and receiver.got("/cleaning"), what="both endpoints")
    time.sleep(0.3)
    assert [json.loads(r["body"])["id"] for r in receiver.got("/police")] == [park["id"]]
    assert [json.loads(r["body"])["id"] for r in receiver.got("/cleaning")] == [bins["id"]]
    cleaning = receiver.got("/cleaning")[0]
    assert verify_signature(CLEANING_SECRET, cleaning["headers"]["X-Pingan-Timestamp"], cleaning["body"],
                            cleaning["headers"]["X-Pingan-Signature"])  # fmt: skip
    assert {d["endpoint_id"] for d in deliveries(api_client, admin, event_id=bins["id"])} == {"cleaning"}
    assert deliveries(api_client, admin, event_id=elsewhere["id"]) == []
    for who in ("op", "police"):
        assert api_client.get("/api/webhooks/deliveries", headers=auth_headers(who)).status_code == 403
    assert api_client.get("/api/webhooks/deliveries", headers=WORKER).status_code == 403


def test_queue_survives_an_api_restart(tmp_path, api_users, receiver):
    settings = hook_settings(tmp_path, receiver.port)
    ev = make_event(start=datetime.now(UTC) - timedelta(minutes=5))
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
        token = client.post("/api/token", json={"username": "admin", "password": "correct-horse-battery"})
        admin = {"Authorization": f"Bearer {token.json()['access_token']}"}
        wait_for(lambda: [d for d in deliveries(client, admin) if d["attempts"] >= 1], what="a failed try")
    receiver.start()
    time.sleep(0.3)
    assert receiver.got() == []  # nobody is sending while the API is down
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: deliveries(client, admin)[0]["status"] == "delivered", what="delivery after restart")
    assert [r["headers"]["Idempotency-Key"] for r in receiver.got()] == [f"{ev['id']}:0"]


def test_given_up_delivery_can_be_retried(tmp_path, api_users, receiver):
    settings = hook_settings(tmp_path, receiver.port, max_attempts=2)
    ev = make_event()
    with TestClient(create_app(settings)) as client:
        token = client.post("/api/token", json={"username": "admin", "password": "correct-horse-battery"})
        admin = {"Authorization": f"Bearer {token.json()['access_token']}", "X-Pingan-Csrf": "1"}
        shared = random.getstate()
        assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
        failed = wait_for(lambda: deliveries(client, admin, status="failed"), what="give-up")[0]
        assert failed["attempts"] == 2 and failed["next_attempt_at"] is None
        assert random.getstate() == shared  # the retry's jitter came from the dispatcher's own generator
        receiver.start()
        r = client.post(f"/api/webhooks/deliveries/{failed['id']}/retry", headers=admin)
        assert r.status_code == 200 and r.json()["status"] == "pending"
        wait_for(lambda: deliveries(client, admin)[0]["status"] == "delivered", what="delivery after retry")
        assert client.post(f"/api/webhooks/deliveries/{failed['id']}/retry", headers=admin).status_code == 409
    assert len(receiver.got("/police")) == 1


def test_dispatcher_on_each_database(any_db_settings):
    """The queue's SQL (insert-or-ignore, leases) on SQLite and PostgreSQL, with an in-process transport."""
    import httpx

    from api.db import make_engine, migrate
    from api.store import Store
    from api.webhooks import WebhookDispatcher
    from pipeline.events import Event
    from tests.fixtures.api import CAMERAS

    sent: list[httpx.Request] = []
    answers = iter([500, 200, 200])

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(next(answers))

    engine = make_engine(any_db_settings.database_url)
    try:
        migrate(engine)
        store = Store(engine, any_db_settings.media_dir)
        store.sync_cameras(CAMERAS)
        hooks = hook_settings(any_db_settings.media_dir.parent, 9).webhooks
        ev = Event.model_validate(make_event())
        store.put_event(ev)
        disp = WebhookDispatcher(engine, hooks, transport=httpx.MockTransport(handle))
        try:
            assert disp.sweep() == 1
            assert disp.sweep() == 0  # already queued
            other = WebhookDispatcher(engine, hooks)  # a second replica (or a restart) sweeps the same
            assert other.sweep() == 1  # offered again, ignored by the unique key
            assert disp.tick() == 0  # 500: backs off
            time.sleep(0.3)
            store.put_event(Event.model_validate({**ev.to_wire(), "seq": 1, "state": "update"}))
            assert disp.tick() == 2  # the first again, then the update, in order
            keys = [r.headers["Idempotency-Key"] for r in sent]
            assert keys == [f"{ev.id}:0", f"{ev.id}:0", f"{ev.id}:1"]
            assert disp.prune() == 0  # the log keeps recent rows
            assert disp.prune(now=datetime.now(UTC) + timedelta(days=31)) == 2
            assert disp.sweep() == 0  # not queued again (rows that old lie far outside the look-back)
        finally:
            disp.close()
    finally:
        engine.dispose()
