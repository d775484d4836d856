"""Parking availability: workers report bay occupancy (camera-scoped); staff read lots and free counts
(scoped) and a bay's history for the daily curve; changes go to the live feed, and to MQTT when a publisher is
present."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from tests.api.test_grid import add_community_users, grid_settings
from tests.fixtures.api import OTHER_WORKER_KEY, WORKER, iso

T0 = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    s = grid_settings(tmp_path)
    add_community_users(s)
    return s


def bay(occupied: int, capacity: int = 1, at: datetime = T0, **kw: Any) -> dict[str, Any]:
    return {"occupied": occupied, "capacity": capacity, "free": capacity - occupied, "ts": iso(at), **kw}


def put(client: Any, cam: str, zone: str, body: dict[str, Any], headers: dict[str, str] = WORKER) -> Any:
    return client.put(f"/api/parking/{cam}/{zone}", json=body, headers=headers)


def test_lots_free_counts(api_client, auth_headers):
    assert put(api_client, "lot-a", "bay-1", bay(1)).status_code == 204
    assert put(api_client, "lot-a", "bay-2", bay(0)).status_code == 204
    assert put(api_client, "lot-a", "lot", bay(7, capacity=20)).status_code == 204
    r = api_client.get("/api/parking", headers=auth_headers("op"))
    assert r.status_code == 200, r.text
    body = r.json()
    (lot,) = body["lots"]
    assert (lot["lot"], lot["name"], lot["grid"]) == ("lot-a", "A区停车场", "fangshan/xilu/haiyi/0422")
    assert (lot["occupied"], lot["capacity"], lot["free"]) == (8, 22, 14)
    assert {b["zone_id"]: b["free"] for b in lot["bays"]} == {"bay-1": 0, "bay-2": 1, "lot": 13}
    assert (body["free"], body["capacity"]) == (14, 22)
    # a bay frees up
    assert put(api_client, "lot-a", "bay-1", bay(0, at=T0 + timedelta(minutes=5))).status_code == 204
    assert api_client.get("/api/parking", headers=auth_headers("admin")).json()["free"] == 15


def test_report_is_validated_and_camera_scoped(api_client, auth_headers):
    assert put(api_client, "lot-a", "bay-1", {**bay(1), "free": 1}).status_code == 422  # 1 + 1 != 1
    assert put(api_client, "lot-a", "bay-1", bay(2)).status_code == 422
    assert put(api_client, "lot-a", "bay-1", {**bay(1), "extra": 1}).status_code == 422
    assert put(api_client, "lot-a", "bay-1", bay(1, grid="../x")).status_code == 422
    assert put(api_client, "lot-a", "bay-9", bay(1)).status_code == 404  # not a zone of that camera
    assert put(api_client, "nowhere", "bay-1", bay(1)).status_code in (403, 404)
    other = {"Authorization": f"Bearer {OTHER_WORKER_KEY}"}
    assert put(api_client, "lot-a", "bay-1", bay(1), headers=other).status_code == 403
    assert put(api_client, "lot-a", "bay-1", bay(1), headers=auth_headers("op")).status_code == 403
    assert api_client.get("/api/parking").status_code == 401
    assert api_client.get("/api/parking", headers=auth_headers("police")).status_code == 403
    assert api_client.get("/api/parking", headers=WORKER).status_code == 403
    # epoch seconds are accepted as ts too
    assert put(api_client, "lot-a", "bay-1", {**bay(1), "ts": T0.timestamp()}).status_code == 204


def test_history_for_a_daily_curve(api_client, auth_headers):
    # a day: occupied at 08:00, free at 12:30, occupied again at 18:00; same-state reports add nothing
    steps = [(0, 0), (8 * 60, 1), (8 * 60 + 1, 1), (9 * 60, 1), (12 * 60 + 30, 0), (18 * 60, 1)]
    for minute, occ in steps:
        assert (
            put(api_client, "lot-a", "bay-1", bay(occ, at=T0 + timedelta(minutes=minute))).status_code == 204
        )
    op = auth_headers("op")
    r = api_client.get(
        "/api/parking/lot-a/bay-1/history",
        params={"since": iso(T0), "until": iso(T0 + timedelta(days=1))},
        headers=op,
    )
    assert r.status_code == 200, r.text
    pts = [(p["at"], p["occupied"]) for p in r.json()["points"]]
    # changes, plus a keep-alive row after 10 minutes without a change (09:00)
    want = [(0, 0), (8 * 60, 1), (9 * 60, 1), (12 * 60 + 30, 0), (18 * 60, 1)]
    got = [(datetime.fromisoformat(a.replace("Z", "+00:00")), o) for a, o in pts]
    assert got == [(T0 + timedelta(minutes=m), o) for m, o in want]
    # a window starting mid-day starts with the state it began in
    r = api_client.get(
        "/api/parking/lot-a/bay-1/history",
        params={"since": iso(T0 + timedelta(hours=10)), "until": iso(T0 + timedelta(hours=13))},
        headers=op,
    )
    assert [p["occupied"] for p in r.json()["points"]] == [1, 0]
    assert api_client.get("/api/parking/lot-a/bay-2/history", headers=op).status_code == 404
    bad = {"since": "2026-11-26T00:00:00"}
    assert api_client.get("/api/parking/lot-a/bay-1/history", params=bad, headers=op).status_code == 422
    # the current state is the newest report, even when an older one arrives late
    assert put(api_client, "lot-a", "bay-1", bay(0, at=T0 + timedelta(hours=2))).status_code == 204
    (lot,) = api_client.get("/api/parking", headers=op).json()["lots"]
    assert lot["bays"][0]["occupied"] == 1


class FakeMqtt:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, bool]] = []

    def publish(self, topic: str, payload: Any, retain: bool = False) -> bool:
        self.sent.append((topic, payload, retain))
        return True


def test_changes_go_to_live_feed_and_mqtt(api_client):
    published: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    rt = api_client.app.state.pingan
    rt.broadcaster.publish = lambda kind, data, meta: published.append((kind, data, meta))
    mqtt = FakeMqtt()
    api_client.app.state.mqtt = mqtt
    assert put(api_client, "lot-a", "bay-1", bay(1)).status_code == 204
    assert put(api_client, "lot-a", "bay-2", bay(1)).status_code == 204
    assert put(api_client, "lot-a", "bay-2", bay(1, at=T0 + timedelta(seconds=30))).status_code == 204  # same
    assert put(api_client, "lot-a", "bay-1", bay(0, at=T0 + timedelta(seconds=60))).status_code == 204
    assert [(k, d["zone_id"], d["free"]) for k, d, _ in published] == [
        ("parking", "bay-1", 0),
        ("parking", "bay-2", 0),
        ("parking", "bay-1", 1),
    ]
    assert published[0][2] == {"camera_id": "lot-a", "grid": "fangshan/xilu/haiyi/0422", "type": "parking"}
    assert mqtt.sent == [
        ("parking/lot-a/free", 0, True),  # only bay-1 known yet
        ("parking/lot-a/free", 0, True),
        ("parking/lot-a/free", 1, True),
    ]


def test_live_feed_filter_keeps_parking_from_police_and_other_grids():
    from api.auth import Principal
    from api.broadcast import Message
    from api.routers.live import _filter
    from api.store import Scope

    msg = Message(
        id=1, kind="parking", text="", meta={"camera_id": "lot-a", "grid": "a/b", "type": "parking"}
    )
    police = Principal(
        kind="user", name="p", role="police", scope=Scope(types=frozenset({"illegal_parking"}))
    )
    op_b = Principal(kind="user", name="o", role="operator", scope=Scope(grids=("a/b",)))
    op_c = Principal(kind="user", name="o", role="operator", scope=Scope(grids=("a/c",)))
    assert _filter(op_b)(msg) is True  # type: ignore[operator]
    assert _filter(op_c)(msg) is False  # type: ignore[operator]
    assert _filter(police)(msg) is False  # type: ignore[operator]


@pytest.mark.browser
def test_dashboard_parking_panel_live(live_api) -> None:  # type: ignore[no-untyped-def]
    """The dashboard shows the lot with its free count, updates it from the live feed and draws the curve."""
    import httpx

    from tests.api.test_dashboard_browser import CHROMIUM, _login

    errors: list[str] = []
    now = datetime.now(UTC)
    with httpx.Client(base_url=live_api.url, headers=WORKER) as worker:
        for z in ("bay-1", "bay-2"):
            r = worker.put(f"/api/parking/lot-a/{z}", json=bay(0, at=now - timedelta(hours=3)))
            assert r.status_code == 204, r.text
        assert (
            worker.put("/api/parking/lot-a/bay-1", json=bay(1, at=now - timedelta(hours=1))).status_code
            == 204
        )
    pw = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (CI requires it)")
        pytest.skip(f"{CHROMIUM} is missing")
    with pw.sync_playwright() as p:
        br = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = _login(br, live_api.url, "op_haiyi", errors)
            lot = page.wait_for_selector('[data-lot="lot-a"]', timeout=5000)
            assert "1 / 2" in (lot.text_content() or "")
            page.wait_for_selector("#parking-chart svg path.line", timeout=5000)
            d = page.get_attribute("#parking-chart svg path.line", "d") or ""
            assert d.startswith("M") and d.count("L") >= 2  # a step curve: 2 free, then 1
            with httpx.Client(base_url=live_api.url, headers=WORKER) as worker:
                assert worker.put("/api/parking/lot-a/bay-1", json=bay(0, at=now)).status_code == 204
            page.wait_for_function(
                "document.querySelector('[data-lot=\"lot-a\"]').textContent.includes('2 / 2')", timeout=3000
            )
        finally:
            br.close()
    assert errors == []
