"""The store on SQLite and PostgreSQL: migrations, idempotency, seq order, keyset pages, scopes, audit."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from api.db import make_engine, migrate
from api.errors import BadRequest, Conflict, NotFound
from api.models import Base
from api.settings import Settings
from api.store import EventFilter, Scope, Store
from pipeline.events import Event
from tests.fixtures.api import CAMERAS, iso, make_event


@pytest.fixture
def store(any_db_settings: Settings) -> Iterator[Store]:
    engine = make_engine(any_db_settings.database_url)
    migrate(engine)
    s = Store(engine, any_db_settings.media_dir)
    s.sync_cameras(CAMERAS)
    try:
        yield s
    finally:
        engine.dispose()


def ev(**over) -> Event:
    return Event.model_validate(make_event(**over))


def test_migrations_match_models(store):
    migrate(store.engine)  # a second run is a no-op
    with store.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []


def test_sqlite_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: acknowledged means on disk
    finally:
        engine.dispose()


def test_idempotent_and_seq_ordered(store):
    e0 = ev()
    assert store.put_event(e0)[0] == "created"
    assert store.put_event(e0) == ("duplicate", None)
    start = e0.started_at
    e2 = e0.model_copy(update={"seq": 2, "dwell_s": 200.0, "updated_at": start + timedelta(seconds=200)})
    assert store.put_event(e2)[0] == "updated"
    e1 = e0.model_copy(update={"seq": 1, "dwell_s": 100.0, "updated_at": start + timedelta(seconds=100)})
    assert store.put_event(e1) == ("stale", None)
    view = store.get_event(e0.id)
    assert view is not None and view.payload["seq"] == 2 and view.payload["dwell_s"] == 200.0
    assert [m["seq"] for m in store.messages(e0.id)] == [0, 1, 2]
    assert store.count_events() == 1


def test_concurrent_duplicates_store_once(store):
    e = ev()
    results: list[str] = []
    barrier = threading.Barrier(6)

    def put() -> None:
        barrier.wait()
        results.append(store.put_event(e)[0])

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["created"] + ["duplicate"] * 5
    assert len(store.messages(e.id)) == 1


def test_keyset_pages_and_scopes(store):
    base = datetime.now(UTC) - timedelta(hours=5)
    made = []
    for i in range(17):
        cam, grid, typ = [
            ("gate-east", "fangshan/xilu/haiyi/0421", "illegal_parking"),
            ("bins-west", "fangshan/dongcheng/lane/0007", "bin_overflow"),
        ][i % 2]
        e = ev(
            start=base + timedelta(minutes=i // 3),
            camera_id=cam,
            grid=grid,
            type=typ,
            object=None if typ == "bin_overflow" else make_event()["object"],
        )
        store.put_event(e)
        made.append(e.id)
    seen, cursor = [], None
    while True:
        page, cursor = store.list_events(EventFilter(), limit=4, cursor=cursor)
        seen += [v.id for v in page]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 17 and set(seen) == set(made)
    police, _ = store.list_events(EventFilter(), Scope(types=frozenset({"illegal_parking"})), limit=100)
    assert {v.payload["type"] for v in police} == {"illegal_parking"} and len(police) == 9
    xilu, _ = store.list_events(EventFilter(), Scope(grids=("fangshan/xilu",)), limit=100)
    assert {v.payload["camera_id"] for v in xilu} == {"gate-east"}
    # LIKE wildcards in a grid prefix match literally
    wild, _ = store.list_events(EventFilter(), Scope(grids=("fangshan_%",)), limit=100)
    assert wild == []
    nothing, _ = store.list_events(EventFilter(), Scope(cameras=frozenset()), limit=100)
    assert nothing == []
    with pytest.raises(BadRequest):
        store.list_events(EventFilter(), cursor="bm90LWEtY3Vyc29y")


def test_evidence_roundtrip(store):
    data = b"\xff\xd8jpeg bytes\xff\xd9"
    sha = hashlib.sha256(data).hexdigest()
    e = ev(
        evidence=[
            {
                "name": "scene-1.jpg",
                "taken_at": iso(datetime.now(UTC) - timedelta(minutes=9)),
                "sha256": sha,
                "kind": "scene",
            }
        ]
    )
    with pytest.raises(NotFound):
        store.put_evidence(e.id, "scene-1.jpg", data)
    store.put_event(e)
    with pytest.raises(Conflict):
        store.put_evidence(e.id, "scene-1.jpg", data + b"x")
    assert store.put_evidence(e.id, "scene-1.jpg", data) == "created"
    assert store.put_evidence(e.id, "scene-1.jpg", data) == "duplicate"
    found = store.get_evidence(e.id, Scope(), "scene-1.jpg")
    assert found is not None and found[1].read_bytes() == data
    with pytest.raises(BadRequest):
        store.evidence_path(e.id, "../../x")


def test_disposition_and_append_only_audit(store):
    e = ev()
    store.put_event(e)
    view, entry = store.dispose(e.id, "acknowledge", "op", "operator", "on it", Scope())
    assert view.disposition == "acknowledged" and entry["from_state"] == "new"
    with pytest.raises(Conflict):
        store.dispose(e.id, "acknowledge", "op", "operator", None, Scope())
    store.dispose(e.id, "dispatch", "op", "operator", None, Scope())
    store.dispose(e.id, "resolve", "op", "operator", "towed", Scope())
    store.dispose(e.id, "reopen", "admin", "admin", None, Scope())
    with pytest.raises(NotFound):
        store.dispose(e.id, "acknowledge", "op", "operator", None, Scope(cameras=frozenset({"lot-north"})))
    hist = store.history("event", e.id)
    assert [(h["action"], h["from_state"], h["to_state"]) for h in hist] == [
        ("acknowledge", "new", "acknowledged"),
        ("dispatch", "acknowledged", "dispatched"),
        ("resolve", "dispatched", "resolved"),
        ("reopen", "resolved", "new"),
    ]
    for stmt in ("UPDATE audit_log SET remark = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(sa.exc.DBAPIError), store.engine.begin() as c:
            c.execute(sa.text(stmt))
    assert len(store.history("event", e.id)) == 4


def test_camera_status(store):
    changed, row = store.put_camera_status("gate-east", {"state": "running", "fps": 1.0})
    assert changed and row["state"] == "running"
    changed, _ = store.put_camera_status("gate-east", {"state": "running", "fps": 1.1})
    assert not changed
    with pytest.raises(NotFound):
        store.put_camera_status("nowhere", {"state": "running"})
    assert [c["id"] for c in store.cameras(Scope(grids=("fangshan/dongcheng",)))] == ["bins-west"]


def test_http_roundtrip(any_db_settings):
    from api.app import create_app
    from api.users import add_user
    from tests.fixtures.api import WORKER, TestClient

    add_user(any_db_settings, "op", "correct-horse-battery", "operator")
    with TestClient(create_app(any_db_settings)) as client:
        e = make_event()
        assert client.post("/api/events", json=e, headers=WORKER).status_code == 201
        assert client.post("/api/events", json=e, headers=WORKER).status_code == 200
        tok = client.post("/api/token", json={"username": "op", "password": "correct-horse-battery"}).json()
        h = {"Authorization": f"Bearer {tok['access_token']}"}
        page = client.get("/api/events", headers=h).json()
        assert [i["id"] for i in page["items"]] == [e["id"]]
        assert client.get("/healthz").json()["database"] is True


def test_upgrade_from_0001_keeps_data(tmp_path):
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from api.db import MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.connect() as conn, conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        s = Store(engine, tmp_path / "media")
        e = ev()
        # a row as the 0001 schema holds it (the Store reads and writes the latest schema's columns)
        now = datetime.now(UTC)
        with engine.begin() as c:
            c.execute(
                sa.insert(Base.metadata.tables["events"]).values(
                    id=e.id, type=e.type.value, state=e.state.value, camera_id=e.camera_id, zone_id=e.zone_id,
                    grid=e.grid, started_at=e.started_at, updated_at=e.updated_at, ended_at=e.ended_at,
                    dwell_s=e.dwell_s, seq=e.seq, payload=e.to_wire(), disposition="new", created_at=now,
                    received_at=now,
                )
            )  # fmt: skip
        migrate(engine)
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() >= "0002"
            names = {r[1] for r in c.exec_driver_sql("PRAGMA index_list('events')")}
        assert "ix_events_disposition_started" in names
        assert s.get_event(e.id) is not None
    finally:
        engine.dispose()


def test_started_at_is_kept_from_the_first_message(store):
    e0 = ev()
    store.put_event(e0)
    moved = e0.model_copy(update={"seq": 1, "started_at": e0.started_at + timedelta(seconds=5)})
    assert store.put_event(moved)[0] == "updated"
    view = store.get_event(e0.id)
    assert view is not None
    assert datetime.fromisoformat(view.payload["started_at"]) == e0.started_at
