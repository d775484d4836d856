"""The API's router tests again, on PostgreSQL, plus what only shows with several replicas on one database.

One schema per test session (created and migrated once, dropped at the end); its tables are emptied before
each test. The store's own tests already run on both databases (``any_db_settings``); here the HTTP-level
tests of events, evidence, cameras, disposition, live and violations run through a PostgreSQL-backed app.
"""

from __future__ import annotations

import importlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from api.db import make_engine, migrate
from api.models import Base
from api.settings import Settings
from api.store import Store
from pipeline.events import Event
from tests.fixtures.api import CAMERAS, make_event, make_settings
from tests.fixtures.services import require_service

pytestmark = pytest.mark.postgres

_REUSED = ("test_events", "test_evidence", "test_cameras", "test_disposition", "test_live", "test_violations")


def _reuse(module_names: tuple[str, ...]) -> None:
    """Collect the named modules' tests (and local fixtures) here, where ``api_settings`` is PostgreSQL."""
    g = globals()
    for name in module_names:
        try:
            mod = importlib.import_module(f"tests.api.{name}")
        except ImportError:
            continue
        for attr, value in vars(mod).items():
            if attr.startswith("test_") and callable(value):
                g[f"test_{name.removeprefix('test_')}__{attr.removeprefix('test_')}"] = value
            elif attr not in g and type(value).__name__ == "FixtureFunctionDefinition":
                g[attr] = value


_reuse(_REUSED)


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    base = os.environ.get("PINGAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"t_session_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as c:
            c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
        engine = make_engine(url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        yield url
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _empty_tables(pg_session_url: str) -> None:
    engine = sa.create_engine(pg_session_url)
    try:
        with engine.begin() as c:
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            c.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
def api_settings(tmp_path: Path, pg_session_url: str) -> Settings:
    return make_settings(tmp_path, database_url=pg_session_url)


@pytest.fixture
def replicas(api_settings: Settings) -> Iterator[list[Store]]:
    """Two stores on two engines: what two API replicas are to the database."""
    engines = [make_engine(api_settings.database_url) for _ in range(2)]
    stores = [Store(e, api_settings.media_dir) for e in engines]
    stores[0].sync_cameras(CAMERAS)
    try:
        yield stores
    finally:
        for e in engines:
            e.dispose()


def test_runs_on_postgresql_in_its_own_schema(replicas: list[Store], pg_session_url: str) -> None:
    with replicas[0].engine.connect() as c:
        assert c.dialect.name == "postgresql"
        schema = c.execute(sa.text("SELECT current_schema()")).scalar()
    assert schema is not None and schema.startswith("t_session_") and schema in pg_session_url


def test_replicas_racing_on_the_same_messages_store_each_once(replicas: list[Store]) -> None:
    """At-least-once delivery hands one (id, seq) to two replicas at once: one stores it, one sees a dup."""
    base = [make_event(camera_id=("gate-east", "lot-north")[i % 2]) for i in range(15)]
    msgs = [Event.model_validate(b) for b in base]
    msgs += [Event.model_validate(dict(b, seq=1, state="update", dwell_s=99.0)) for b in base]
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work(store: Store, order: list[Event]) -> None:
        start.wait()
        for m in order:
            try:
                status, _ = store.put_event(m, "race")
            except BaseException as e:
                errors.append(e)
                continue
            with lock:
                results.append((m.seq, status))

    threads = [
        threading.Thread(target=work, args=(replicas[i % 2], msgs if i < 2 else list(reversed(msgs))))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    created_or_updated = [r for r in results if r[1] in ("created", "updated", "stale")]
    assert len(created_or_updated) == len(msgs)  # every (id, seq) stored exactly once
    assert replicas[1].count_events() == len(base)
    for b in base:
        assert [m["seq"] for m in replicas[1].messages(b["id"])] == [0, 1]
        view = replicas[0].get_event(b["id"])
        assert view is not None and view.payload["seq"] == 1
