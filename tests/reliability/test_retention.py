"""Retention (api/retention.py): a full media folder is pruned non-violations first, then violations the
police already have (pack exported, or closing message pushed by webhook), oldest first; evidence of other
violations is never deleted, whatever the cap. Also through the app's lifespan task."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from api.app import create_app
from api.db import make_engine, migrate
from api.retention import deliveries_t, prune
from api.store import Scope, Store
from pipeline.events import Event
from tests.fixtures.api import WORKER, TestClient, iso, make_event, make_settings

KB = 1000


@pytest.fixture
def store(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    migrate(engine)
    yield Store(engine, tmp_path / "media")
    engine.dispose()


def put(store: Store, minutes_ago: float, kind: str = "illegal_parking", closed: bool = True) -> str:
    start = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    data = hashlib.sha256(str(minutes_ago).encode()).digest() * (KB // 32) + b"x" * (KB % 32)
    body = make_event(start=start, type=kind)
    body["evidence"] = [
        {
            "name": "scene-1.jpg",
            "taken_at": iso(start),
            "sha256": hashlib.sha256(data).hexdigest(),
            "kind": "scene",
        }
    ]
    store.put_event(Event.model_validate(body))
    if closed:
        body.update(state="closed", seq=1, ended_at=body["updated_at"])
        store.put_event(Event.model_validate(body))
    store.put_evidence(body["id"], "scene-1.jpg", data)
    return str(body["id"])


def stored(store: Store, eid: str) -> bool:
    return store.get_evidence(eid, Scope(), "scene-1.jpg") is not None


def test_order_non_violations_then_delivered_violations_never_the_rest(store: Store) -> None:
    pending_old = put(store, 600)  # the oldest of all: a violation nobody has delivered
    still_open = put(store, 590, closed=False)
    exported = put(store, 500)
    pushed = put(store, 400)
    false_alarm = put(store, 300)
    bins_old = put(store, 200, kind="bin_overflow")
    bins_new = put(store, 100, kind="bin_overflow")
    pushed_not_closing = put(store, 50)
    store.audit("police", "police", "export", "event", exported)
    store.dispose(false_alarm, "false_alarm", "op", "operator", None, Scope())
    now = datetime.now(UTC)
    with store.engine.begin() as c:
        for eid, seq in ((pushed, 1), (pushed_not_closing, 0)):  # only the closing message counts
            c.execute(
                insert(deliveries_t).values(
                    endpoint_id="police",
                    event_id=eid,
                    seq=seq,
                    event_type="illegal_parking",
                    body="{}",
                    status="delivered",
                    attempts=1,
                    created_at=now,
                    delivered_at=now,
                )
            )
    assert store.media_usage() == 8 * KB

    # just over the cap: the oldest non-violation goes (the false alarm, then the older bins), not older ones
    r = prune(store, 7 * KB)
    assert (r.files, r.freed) == (1, KB) and not stored(store, false_alarm)
    r = prune(store, 5 * KB)
    assert r.files == 2 and not stored(store, bins_old) and not stored(store, bins_new)
    # then violations the police have, oldest first
    r = prune(store, 4 * KB)
    assert r.files == 1 and not stored(store, exported) and stored(store, pushed)
    # a cap of nothing: what is left is protected
    r = prune(store, 0)
    assert r.files == 1 and not stored(store, pushed)
    for eid in (pending_old, still_open, pushed_not_closing):
        assert stored(store, eid), eid
    assert r.usage == r.protected == 3 * KB
    assert prune(store, 0).files == 0
    actions = [h["action"] for h in store.history("media", "*")]
    assert actions == ["prune_media"] * 4


def test_lifespan_task_applies_the_policy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, media_max_bytes=1500, retention_every_s=0.05)
    with TestClient(create_app(settings)) as client:
        ids = {}
        for kind in ("illegal_parking", "bin_overflow"):
            data = kind.encode() * 100
            ev = make_event(
                type=kind, start=datetime.now(UTC) - timedelta(hours=1 if kind == "bin_overflow" else 2)
            )
            ev["evidence"] = [
                {
                    "name": "s.jpg",
                    "taken_at": ev["started_at"],
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "kind": "scene",
                }
            ]
            assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
            r = client.put(
                f"/api/events/{ev['id']}/evidence/s.jpg",
                content=data,
                headers={**WORKER, "Content-Type": "image/jpeg"},
            )
            assert r.status_code == 201
            ids[kind] = ev["id"]
        store = client.app.state.pingan.store
        deadline = time.monotonic() + 5
        while store.media_usage() > 1500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.media_usage() == len(b"illegal_parking") * 100  # the older violation stays
        assert store.get_evidence(ids["bin_overflow"], Scope(), "s.jpg") is None
