"""POST /api/events/batch: one transaction, per-item results, the single route's semantics per message
(idempotency by (id, seq), order, scope, validation), live-feed publish, cap and malformed bodies."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from api.app import create_app
from api.routers.events import BATCH_MAX
from tests.fixtures.api import OTHER_WORKER_KEY, WORKER, TestClient, iso, make_event

OTHER = {"Authorization": f"Bearer {OTHER_WORKER_KEY}"}


def batch(client: TestClient, events: list[Any], headers: dict[str, str] = WORKER) -> Any:
    return client.post("/api/events/batch", json={"events": events}, headers=headers)


def closed(ev: dict[str, Any], seq: int, minutes: int = 5) -> dict[str, Any]:
    start = datetime.fromisoformat(ev["started_at"])
    end = iso(start + timedelta(minutes=minutes))
    return dict(ev, seq=seq, state="closed", ended_at=end, updated_at=end, dwell_s=60.0 * minutes)


def test_batch_stores_each_once_and_a_redelivery_is_acknowledged(any_db_settings) -> None:
    with TestClient(create_app(any_db_settings)) as client:
        evs = [make_event(), make_event(camera_id="lot-north", zone_id="no-park-1"), make_event()]
        r = batch(client, evs)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [(i["index"], i["id"], i["seq"], i["status"], i["code"]) for i in body["items"]] == [
            (n, e["id"], 0, "created", 201) for n, e in enumerate(evs)
        ]
        assert body["counts"] == {"created": 3}
        again = batch(client, evs)  # the worker did not see the answer and sends the same batch again
        assert again.status_code == 200
        assert [i["status"] for i in again.json()["items"]] == ["duplicate"] * 3
        assert [i["code"] for i in again.json()["items"]] == [200] * 3
        store = client.app.state.pingan.store
        assert store.count_events() == 3
        for e in evs:
            msgs = store.messages(e["id"])
            assert [(m["seq"], m["worker"]) for m in msgs] == [(0, "worker-1")]
            assert msgs[0]["received_at"] is not None  # the webhook sweep reads received_at
        # the single route sees the batch's messages as stored
        single = client.post("/api/events", json=evs[0], headers=WORKER)
        assert (single.status_code, single.json()["status"]) == (200, "duplicate")


def test_one_bad_item_is_rejected_alone_and_the_rest_is_stored(any_db_settings) -> None:
    with TestClient(create_app(any_db_settings)) as client:
        held = make_event()
        assert client.post("/api/events", json=held, headers=WORKER).status_code == 201
        good = make_event()
        inverted = make_event(object=dict(make_event()["object"], box_xyxy=[640, 230, 412, 388]))
        unknown_field = dict(make_event(), colour="red")
        string_seq = dict(make_event(), seq="1")  # strict: no "1" -> 1 coercion, as on the single route
        reused = dict(held, seq=1, state="update", camera_id="lot-north")  # id of another camera: 409
        items = [good, inverted, 42, unknown_field, string_seq, reused, make_event(camera_id="elsewhere")]
        r = batch(client, items)
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        assert [(i["status"], i["code"]) for i in got] == [
            ("created", 201),
            ("rejected", 422),
            ("rejected", 422),
            ("rejected", 422),
            ("rejected", 422),
            ("rejected", 409),
            ("rejected", 403),
        ]
        assert got[1]["id"] == inverted["id"] and got[1]["error"] == "invalid"
        assert any("box" in d["msg"] for d in got[1]["detail"])
        assert got[2]["id"] is None and got[2]["detail"]
        assert got[3]["detail"][0]["loc"] == ["colour"]
        assert got[4]["detail"][0]["loc"] == ["seq"] and got[4]["seq"] is None
        assert got[5]["error"] == "conflict" and got[5]["id"] == held["id"]
        assert got[6]["error"] == "forbidden"
        assert r.json()["counts"] == {"created": 1, "rejected": 6}
        store = client.app.state.pingan.store
        assert store.count_events() == 2  # held + good
        assert [m["seq"] for m in store.messages(held["id"])] == [0]  # the 409 recorded nothing
        assert store.get_event(inverted["id"]) is None


def test_messages_of_one_event_in_one_batch_apply_in_order(any_db_settings) -> None:
    with TestClient(create_app(any_db_settings)) as client:
        ev = make_event()
        ev["evidence"] = [
            {"name": "scene-1.jpg", "taken_at": ev["started_at"], "sha256": "a" * 64, "kind": "scene"}
        ]
        start = datetime.fromisoformat(ev["started_at"])
        late = dict(ev, seq=1, state="update", dwell_s=120.0, updated_at=iso(start + timedelta(minutes=2)))
        late["evidence"] = [
            {"name": "plate-1.jpg", "taken_at": late["updated_at"], "sha256": "b" * 64, "kind": "plate"}
        ]
        moved = dict(closed(ev, 3), started_at=iso(start + timedelta(seconds=30)))  # started_at may not move
        r = batch(client, [ev, moved, late, ev])
        assert [i["status"] for i in r.json()["items"]] == ["created", "updated", "stale", "duplicate"]
        store = client.app.state.pingan.store
        assert [m["seq"] for m in store.messages(ev["id"])] == [0, 1, 3]
        view = store.get_event(ev["id"])
        assert view is not None
        assert view.payload["state"] == "closed" and view.payload["seq"] == 3
        assert view.payload["started_at"] == ev["started_at"]
        assert [e["name"] for e in view.evidence] == ["scene-1.jpg", "plate-1.jpg"]  # stale still declares
        # declared evidence can be uploaded (sha256 must match the declaration: 409 otherwise)
        put = client.put(
            f"/api/events/{ev['id']}/evidence/scene-1.jpg",
            content=b"x",
            headers=WORKER | {"content-type": "image/jpeg"},
        )
        assert put.status_code == 409


def test_the_same_answers_as_the_single_route(api_client) -> None:
    """Per item, the batch reports what POST /api/events answers for the same sequence of messages."""
    a, b = make_event(), make_event(camera_id="bins-west", type="bin_overflow", zone_id="station-1")
    seq = [a, b, closed(a, 2), dict(a, seq=1, state="update"), b, dict(a, camera_id="lot-north", seq=5)]
    singles = []
    for m in seq:
        r = api_client.post("/api/events", json=m, headers=WORKER)
        singles.append((r.status_code, r.json().get("status")))
    fresh = [dict(m, id=x) for m, x in zip(seq, _renamed(seq), strict=True)]
    got = batch(api_client, fresh).json()["items"]
    assert [(i["code"], i["status"] if i["code"] < 400 else None) for i in got] == singles


def _renamed(seq: list[dict[str, Any]]) -> list[str]:
    fresh: dict[str, str] = {}
    for m in seq:
        fresh.setdefault(m["id"], make_event()["id"])
    return [fresh[m["id"]] for m in seq]


def test_stored_items_reach_the_live_feed_once_each(api_client) -> None:
    rt = api_client.app.state.pingan
    sub = rt.broadcaster.subscribe()
    try:
        a, b = make_event(), make_event()
        assert client_ok(batch(api_client, [a, b, a, make_event(camera_id="elsewhere"), closed(a, 1)]))
        deadline = time.monotonic() + 5
        while sub.queue.qsize() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # nothing more arrives
        got = []
        while not sub.queue.empty():
            m = sub.queue.get_nowait()
            data = json.loads(m.text.split("data: ", 1)[1])
            got.append((m.kind, data["id"], data["seq"], m.meta["camera_id"]))
        assert got == [
            ("event", a["id"], 0, "gate-east"),
            ("event", b["id"], 0, "gate-east"),
            ("event", a["id"], 1, "gate-east"),
        ]
    finally:
        rt.broadcaster.unsubscribe(sub)


def client_ok(r: Any) -> bool:
    assert r.status_code == 200, r.text
    return True


@pytest.mark.parametrize(
    ("why", "content", "ctype", "status"),
    [
        ("not JSON", b"{nope", "application/json", 400),
        ("NaN", b'{"events": [NaN]}', "application/json", 400),
        ("wrong content type", b'{"events": []}', "text/plain", 415),
        ("a list, not an object", b"[]", "application/json", 422),
        ("events not a list", b'{"events": {}}', "application/json", 422),
        ("no events key", b'{"items": []}', "application/json", 422),
        ("an extra key", b'{"events": [], "x": 1}', "application/json", 422),
        ("empty", b'{"events": []}', "application/json", 422),
    ],
)
def test_malformed_bodies_are_4xx_and_store_nothing(api_client, why, content, ctype, status) -> None:
    r = api_client.post("/api/events/batch", content=content, headers=WORKER | {"content-type": ctype})
    assert r.status_code == status, (why, r.text)
    assert r.json()["error"] and r.json()["message"]
    assert api_client.app.state.pingan.store.count_events() == 0


def test_over_the_cap_is_413_with_a_clear_message(api_client) -> None:
    start = datetime.now(UTC) - timedelta(minutes=10)
    evs = [make_event(start=start - timedelta(milliseconds=i)) for i in range(BATCH_MAX + 1)]
    r = batch(api_client, evs)
    assert r.status_code == 413
    assert (
        r.json()["message"] == f"at most {BATCH_MAX} events per batch, got {BATCH_MAX + 1}: split the batch"
    )
    assert api_client.app.state.pingan.store.count_events() == 0
    ok = batch(api_client, evs[:BATCH_MAX])
    assert ok.status_code == 200 and ok.json()["counts"] == {"created": BATCH_MAX}


def test_workers_only_and_each_key_for_its_cameras(api_client, auth_headers) -> None:
    ev = make_event()
    assert api_client.post("/api/events/batch", json={"events": [ev]}).status_code == 401
    for who in ("op", "police", "admin"):
        assert batch(api_client, [ev], auth_headers(who)).status_code == 403, who
    r = batch(api_client, [ev], OTHER)  # a worker key scoped to other cameras
    assert r.status_code == 200
    assert [(i["status"], i["code"], i["error"]) for i in r.json()["items"]] == [
        ("rejected", 403, "forbidden")
    ]
    assert api_client.app.state.pingan.store.count_events() == 0


def test_store_batch_costs_a_constant_number_of_statements(any_db_settings) -> None:
    """One transaction, three look-ups and one executemany per kind of write, whatever the batch size."""
    from api.db import make_engine, migrate
    from api.store import Store
    from pipeline.events import Event

    engine = make_engine(any_db_settings.database_url)
    try:
        migrate(engine)
        store = Store(engine, any_db_settings.media_dir)
        statements: list[str] = []

        def count(conn, cursor, statement, parameters, context, executemany) -> None:
            statements.append(statement.split()[0].upper())

        first = [Event.model_validate(make_event()) for _ in range(5)]
        store.put_events(first)
        sa_event.listen(engine, "before_cursor_execute", count)
        evs = [Event.model_validate(make_event()) for _ in range(200)]
        evs += [Event.model_validate(closed(e.to_wire(), 1)) for e in first]
        out = store.put_events(evs, "w")
        assert [o.status for o in out] == ["created"] * 200 + ["updated"] * 5
        assert all(o.view is not None and o.view.id == e.id for o, e in zip(out, evs, strict=True))
        writes = [s for s in statements if s in ("INSERT", "UPDATE", "DELETE")]
        assert len(statements) <= 12, statements
        assert sorted(writes) == ["INSERT", "INSERT", "UPDATE"], statements
        statements.clear()
        assert [o.status for o in store.put_events(evs)] == ["duplicate"] * 205
        assert len([s for s in statements if s in ("INSERT", "UPDATE")]) == 0, statements
        statements.clear()
        store.put_event(Event.model_validate(make_event()))  # the single route: 4 statements, was 6
        assert len([s for s in statements if s not in ("BEGIN", "COMMIT", "ROLLBACK")]) <= 4, statements
    finally:
        engine.dispose()


def test_store_batch_records_each_message_with_its_own_worker(any_db_settings) -> None:
    """A bus batch mixes compounds: each message keeps the worker it came from, given one name a message."""
    from api.db import make_engine, migrate
    from api.store import Store
    from pipeline.events import Event

    engine = make_engine(any_db_settings.database_url)
    try:
        migrate(engine)
        store = Store(engine, any_db_settings.media_dir)
        evs = [Event.model_validate(make_event()) for _ in range(2)]
        evs.append(Event.model_validate(closed(evs[0].to_wire(), 1)))
        assert [o.status for o in store.put_events(evs, ["nats:a", None, "nats:c"])] == [
            "created",
            "created",
            "updated",
        ]
        assert [m["worker"] for m in store.messages(evs[0].id)] == ["nats:a", "nats:c"]
        assert [m["worker"] for m in store.messages(evs[1].id)] == [None]
        with pytest.raises(ValueError):
            store.put_events(evs, ["nats:a"])
    finally:
        engine.dispose()
