"""POST/GET /api/events: strict input, idempotency by (id, seq), seq ordering, cursor pagination, roles."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.api import WORKER, iso, make_event


def post(client, body, headers=WORKER, **kw):
    return client.post("/api/events", json=body, headers=headers, **kw)


def test_post_then_read(api_client, auth_headers):
    ev = make_event()
    r = post(api_client, ev)
    assert r.status_code == 201, r.text
    assert r.json() == {"id": ev["id"], "seq": 0, "status": "created"}
    got = api_client.get(f"/api/events/{ev['id']}", headers=auth_headers("op"))
    assert got.status_code == 200
    body = got.json()
    assert body["camera_name"] == "东门"
    assert body["disposition"] == "new"
    assert body["object"]["plate"]["text"] == "京A12345"
    assert body["history"] == []


def test_same_message_twice_is_stored_once(api_client, api_settings):
    ev = make_event()
    assert post(api_client, ev).status_code == 201
    r = post(api_client, ev)
    assert r.status_code == 200
    assert r.json()["status"] == "duplicate"
    store = api_client.app.state.pingan.store
    assert store.count_events() == 1
    assert len(store.messages(ev["id"])) == 1


def test_higher_seq_updates_lower_seq_does_not_regress(api_client, auth_headers):
    ev = make_event()
    start = datetime.fromisoformat(ev["started_at"])
    assert post(api_client, ev).status_code == 201
    closed = dict(
        ev,
        seq=3,
        state="closed",
        ended_at=iso(start + timedelta(minutes=5)),
        updated_at=iso(start + timedelta(minutes=5)),
        dwell_s=300.0,
    )
    r = post(api_client, closed)
    assert (r.status_code, r.json()["status"]) == (200, "updated")
    late = dict(ev, seq=1, state="update", dwell_s=120.0, updated_at=iso(start + timedelta(minutes=2)))
    r = post(api_client, late)
    assert (r.status_code, r.json()["status"]) == (200, "stale")
    body = api_client.get(f"/api/events/{ev['id']}", headers=auth_headers("op")).json()
    assert body["state"] == "closed" and body["seq"] == 3 and body["dwell_s"] == 300.0
    assert [m["seq"] for m in api_client.app.state.pingan.store.messages(ev["id"])] == [0, 1, 3]


def test_event_id_reused_by_another_camera_is_refused(api_client):
    ev = make_event()
    assert post(api_client, ev).status_code == 201
    r = post(api_client, dict(ev, seq=1, state="update", camera_id="lot-north"))
    assert r.status_code == 409


def _bad_bodies():
    ok = make_event()
    start = datetime.fromisoformat(ok["started_at"])
    yield "missing field", {k: v for k, v in ok.items() if k != "camera_id"}
    yield "unknown field", dict(ok, colour="red")
    yield "inverted box", dict(ok, object=dict(ok["object"], box_xyxy=[640, 230, 412, 388]))
    yield (
        "future",
        dict(
            ok,
            started_at=iso(datetime.now(UTC) + timedelta(hours=2)),
            updated_at=iso(datetime.now(UTC) + timedelta(hours=2)),
        ),
    )
    yield "naive time", dict(ok, started_at="2026-11-26T08:00:00")
    yield "closed without end", dict(ok, state="closed")
    yield "updated before start", dict(ok, updated_at=iso(start - timedelta(seconds=1)))
    yield "bad id", dict(ok, id="../../etc/passwd")
    yield "bad type", dict(ok, type="fire")
    yield "negative dwell", dict(ok, dwell_s=-1)
    yield "confidence > 1", dict(ok, object=dict(ok["object"], confidence=1.5))
    yield "bad grid", dict(ok, grid="a//b")
    yield "string seq", dict(ok, seq="1")
    yield (
        "evidence bad sha",
        dict(
            ok, evidence=[{"name": "a.jpg", "taken_at": ok["started_at"], "sha256": "xyz", "kind": "scene"}]
        ),
    )
    yield (
        "evidence traversal name",
        dict(
            ok,
            evidence=[
                {"name": "../a.jpg", "taken_at": ok["started_at"], "sha256": "0" * 64, "kind": "scene"}
            ],
        ),
    )


@pytest.mark.parametrize(("why", "body"), list(_bad_bodies()), ids=[w for w, _ in _bad_bodies()])
def test_invalid_events_are_422(api_client, why, body):
    r = post(api_client, body)
    assert r.status_code == 422, (why, r.text)
    assert r.json()["error"] == "invalid"


@pytest.mark.parametrize(
    ("content", "ctype", "status"),
    [
        (b'{"id": NaN}', "application/json", 400),
        (json.dumps(make_event()).replace("65.0", "NaN").encode(), "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b"", "application/json", 400),
        (json.dumps(make_event()).encode(), "text/plain", 415),
        (json.dumps(make_event()).encode(), "application/x-www-form-urlencoded", 415),
        (json.dumps(make_event()).encode(), "application/json; charset=latin-1", 415),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
    ],
)
def test_malformed_bodies_are_4xx(api_client, content, ctype, status):
    r = api_client.post("/api/events", content=content, headers={**WORKER, "Content-Type": ctype})
    assert r.status_code == status, r.text


def test_missing_content_type_is_415(api_client):
    r = api_client.post("/api/events", content=json.dumps(make_event()).encode(), headers=WORKER)
    assert r.status_code == 415


def test_body_over_limit_is_413_before_reading(api_client):
    big = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    r = api_client.post("/api/events", content=big, headers={**WORKER, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


def test_streamed_body_over_limit_is_413(api_client):
    def chunks():
        for _ in range(40):
            yield b" " * (128 * 1024)

    r = api_client.post(
        "/api/events", content=chunks(), headers={**WORKER, "Content-Type": "application/json"}
    )
    assert r.status_code == 413


def test_worker_scope(api_client):
    from tests.fixtures.api import OTHER_WORKER_KEY

    r = post(api_client, make_event(), headers={"Authorization": f"Bearer {OTHER_WORKER_KEY}"})
    assert r.status_code == 403
    r = post(api_client, make_event(), headers={"Authorization": "Bearer not-a-key-at-all"})
    assert r.status_code == 401
    r = post(api_client, make_event(), headers={})
    assert r.status_code == 401
    r = post(api_client, make_event(), headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401


def test_worker_key_cannot_read(api_client):
    for path in ("/api/events", "/api/cameras", "/api/violations", "/api/events/stream", "/api/me"):
        assert api_client.get(path, headers=WORKER).status_code == 403, path


def test_users_cannot_post_events(api_client, auth_headers):
    for who in ("op", "police", "admin"):
        assert post(api_client, make_event(), headers=auth_headers(who)).status_code == 403


def test_cursor_pagination_returns_each_event_once(api_client, auth_headers):
    base = datetime.now(UTC) - timedelta(hours=3)
    ids = set()
    for i in range(23):
        # pairs share started_at to exercise the id tie-break
        ev = make_event(start=base + timedelta(seconds=(i // 2) * 30))
        ev["id"] = ev["id"][:-4] + f"{i:04x}"
        assert post(api_client, ev).status_code == 201
        ids.add(ev["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = api_client.get("/api/events", params=params, headers=auth_headers("op")).json()
        seen += [e["id"] for e in page["items"]]
        pages += 1
        # an update arriving mid-way must not move the event between pages
        if pages == 2:
            first = page["items"][0]
            upd = make_event(
                id=first["id"],
                started_at=first["started_at"],
                seq=1,
                state="update",
                updated_at=iso(datetime.now(UTC)),
                dwell_s=999.0,
            )
            assert post(api_client, upd).status_code == 200
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 5
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == ids
    starts = [e for e in seen]
    assert starts == sorted(starts, key=lambda i: seen.index(i))


def test_list_filters(api_client, auth_headers):
    now = datetime.now(UTC)
    a = make_event(start=now - timedelta(hours=2))
    b = make_event(
        start=now - timedelta(hours=1),
        camera_id="lot-north",
        zone_id="no-park-1",
        grid="fangshan/xilu/haiyi/0422",
    )
    c = make_event(
        start=now - timedelta(minutes=30),
        type="bin_overflow",
        camera_id="bins-west",
        zone_id="station-1",
        grid="fangshan/dongcheng/lane/0007",
        object=None,
        bin_id="B-7",
    )
    for ev in (a, b, c):
        assert post(api_client, ev).status_code == 201
    h = auth_headers("admin")

    def ids(**params):
        r = api_client.get("/api/events", params=params, headers=h)
        assert r.status_code == 200, r.text
        return {e["id"] for e in r.json()["items"]}

    assert ids() == {a["id"], b["id"], c["id"]}
    assert ids(type="bin_overflow") == {c["id"]}
    assert ids(camera_id="lot-north") == {b["id"]}
    assert ids(zone_id="fire-lane-3") == {a["id"]}
    assert ids(grid="fangshan/xilu") == {a["id"], b["id"]}
    assert ids(grid="fangshan/xil") == set()
    assert ids(since=iso(now - timedelta(minutes=90))) == {b["id"], c["id"]}
    assert ids(until=iso(now - timedelta(minutes=90))) == {a["id"]}
    assert ids(state="open", disposition="new") == {a["id"], b["id"], c["id"]}
    for bad in (
        {"type": "x"},
        {"limit": 0},
        {"limit": 10_000},
        {"cursor": "!!"},
        {"cursor": "e30"},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},
        {"grid": "a%b"},
    ):
        r = api_client.get("/api/events", params=bad, headers=h)
        assert r.status_code in (400, 422), (bad, r.text)


def test_scoping_by_role(api_client, auth_headers):
    park = make_event()
    bins = make_event(
        type="bin_overflow",
        camera_id="bins-west",
        zone_id="station-1",
        grid="fangshan/dongcheng/lane/0007",
        object=None,
    )
    assert post(api_client, park).status_code == 201
    assert post(api_client, bins).status_code == 201

    def listed(who):
        return {e["id"] for e in api_client.get("/api/events", headers=auth_headers(who)).json()["items"]}

    assert listed("admin") == {park["id"], bins["id"]}
    assert listed("police") == {park["id"]}
    assert listed("op_xilu") == {park["id"]}
    assert listed("op_bins") == {bins["id"]}
    assert api_client.get(f"/api/events/{bins['id']}", headers=auth_headers("police")).status_code == 404
    assert api_client.get(f"/api/events/{bins['id']}", headers=auth_headers("op_xilu")).status_code == 404
    assert api_client.get(f"/api/events/{park['id']}", headers=auth_headers("police")).status_code == 200


def test_unknown_event_is_404_and_bad_id_422(api_client, auth_headers):
    h = auth_headers("op")
    assert api_client.get("/api/events/0192f1c2-0000-7000-8000-000000000000", headers=h).status_code == 404
    assert api_client.get("/api/events/..%2F..%2Fetc", headers=h).status_code in (404, 422)
    assert api_client.get("/api/events/not-an-id", headers=h).status_code == 422


def test_fuzzed_bodies_never_500(api_client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = make_event()
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from([*sorted(base), "extra"]), value=values)
    def run(key, value):
        body = dict(base, **{key: value})
        r = post(api_client, body)
        assert r.status_code < 500, r.text

    run()


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "é"},
        {"cursor": "AAAA" * 40},
        {"since": "9999-99-99"},
        {"limit": "x"},
        {"type": "é" * 100},
        {"camera_id": "x" * 1000},
        {"state": ""},
        {"until": "2026-11-26T08:00:00+25:00"},
    ],
)
def test_bad_query_params_are_4xx(api_client, auth_headers, params):
    r = api_client.get("/api/events", params=params, headers=auth_headers("op"))
    assert 400 <= r.status_code < 500, (params, r.text)


def test_database_outage_is_503_not_500(api_client, monkeypatch):
    import sqlalchemy.exc

    store = api_client.app.state.pingan.store

    def down(*_a, **_k):
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "put_event", down)
    r = post(api_client, make_event())
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "locked" not in r.text
