"""Bin statistics per bin id (episodes, overflow time, open → cleared) and their CSV export, scoped; bin
events dispatched to the cleaning crew over the signed webhook, the open and the resolve both pushed."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from api.settings import Settings
from api.webhooks import verify_signature
from pipeline.config import WebhookConfig
from tests.api.test_webhooks import Receiver, receiver, wait_for  # noqa: F401  (fixture)
from tests.fixtures.api import WORKER, iso, make_event, make_settings

GRID = "fangshan/dongcheng/lane/0007"


def _now() -> datetime:
    # per test, not per module: an import-time "now" made the still-open episode look older than 30 min
    # when the test ran minutes after collection
    return datetime.now(UTC).replace(microsecond=0)


CREW_SECRET = "cleaning-crew-secret-0123456789"


def bin_msg(start: datetime, seq: int, state: str, at: datetime, **over: Any) -> dict[str, Any]:
    ev = make_event(
        type="bin_overflow",
        camera_id="bins-west",
        zone_id="station-1",
        grid=GRID,
        object=None,
        bin_id="FS-0001",
        bin_ids=["FS-0001", "FS-0002"],
        start=start,
        seq=seq,
        state=state,
        updated_at=iso(at),
        dwell_s=(at - start).total_seconds(),
        **over,
    )
    return ev


def post(client: Any, ev: dict[str, Any]) -> None:
    r = client.post("/api/events", json=ev, headers=WORKER)
    assert r.status_code in (200, 201), r.text


def episode(client: Any, start: datetime, open_after: float, cleared_after: float | None) -> str:
    """One overflow: opened ``open_after`` s after it began, clean again ``cleared_after`` s after it began
    (None: still overflowing)."""
    first = bin_msg(start, 0, "open", start + timedelta(seconds=open_after))
    post(client, first)
    if cleared_after is not None:
        end = start + timedelta(seconds=cleared_after)
        post(client, {**first, "seq": 1, "state": "closed", "updated_at": iso(end), "ended_at": iso(end)})
    return str(first["id"])


def seed(client: Any, admin: dict[str, str], now: datetime) -> dict[str, str]:
    day = now - timedelta(days=2)
    ids = {
        "a": episode(client, day, 60, 60 + 1200),  # 21 min overflowing, 20 min open → cleared
        "b": episode(client, day + timedelta(hours=5), 60, 60 + 600),  # 11 min, 10 min
        "fa": episode(client, day + timedelta(hours=8), 60, 300),  # marked false alarm: left out
        "now": episode(client, now - timedelta(minutes=30), 60, None),  # still overflowing
    }
    r = client.post(f"/api/events/{ids['fa']}/disposition", json={"action": "false_alarm"}, headers=admin)
    assert r.status_code == 200, r.text
    return ids


def test_bin_stats(api_client, auth_headers):
    admin = auth_headers("admin")
    now = _now()
    ids = seed(api_client, admin, now)
    r = api_client.get(
        "/api/bins/FS-0002/stats", params={"since": iso(now - timedelta(days=7))}, headers=admin
    )
    assert r.status_code == 200, r.text
    s = r.json()
    assert (s["episodes"], s["open_now"], s["false_alarms"]) == (3, 1, 1)
    assert s["open_to_cleared_s_mean"] == 900.0 and s["open_to_cleared_s_max"] == 1200.0
    assert 1790 <= s["overflow_s_max"] <= 1830  # the open one: 30 min so far
    assert 1260 + 660 + 1790 <= s["overflow_s_total"] <= 1260 + 660 + 1830  # the open one counts until now
    assert [e["event_id"] for e in s["items"]] == [ids["a"], ids["b"], ids["now"]]
    # a period clips: from 10 minutes into the first episode to the end of that day
    day = now - timedelta(days=2)
    params = {"since": iso(day + timedelta(minutes=10)), "until": iso(day + timedelta(hours=6))}
    s = api_client.get("/api/bins/FS-0001/stats", params=params, headers=admin).json()
    assert s["episodes"] == 2 and s["overflow_s_total"] == 1260 - 600 + 660
    # unknown bin: zeros; bad periods refused
    s = api_client.get("/api/bins/FS-9999/stats", headers=admin).json()
    assert (s["episodes"], s["overflow_s_total"], s["open_to_cleared_s_mean"]) == (0, 0.0, None)
    bad = {"since": iso(now), "until": iso(now - timedelta(days=1))}
    assert api_client.get("/api/bins/FS-0001/stats", params=bad, headers=admin).status_code == 422


def test_bin_stats_scoped(api_client, auth_headers):
    seed(api_client, auth_headers("admin"), _now())
    assert api_client.get("/api/bins/FS-0001/stats", headers=auth_headers("op_bins")).json()["episodes"] == 3
    assert api_client.get("/api/bins/FS-0001/stats", headers=auth_headers("op_xilu")).json()["episodes"] == 0
    assert api_client.get("/api/bins/FS-0001/stats", headers=auth_headers("police")).status_code == 403
    assert api_client.get("/api/bins/stats.csv", headers=auth_headers("police")).status_code == 403
    assert api_client.get("/api/bins/stats.csv", headers=WORKER).status_code == 403
    assert api_client.get("/api/bins/stats.csv").status_code == 401
    r = api_client.get("/api/bins/stats.csv", headers=auth_headers("op_xilu"))
    assert r.text.lstrip("\ufeff").splitlines() == [
        "bin_id,camera_id,zone_id,episodes,open_now,false_alarms,overflow_s_total,overflow_s_mean,"
        "overflow_s_max,open_to_cleared_s_mean,open_to_cleared_s_max"
    ]


def test_bin_stats_csv(api_client, auth_headers):
    now = _now()
    seed(api_client, auth_headers("admin"), now)
    params = {"since": iso(now - timedelta(days=7)), "until": iso(now - timedelta(days=1))}
    r = api_client.get("/api/bins/stats.csv", params=params, headers=auth_headers("op"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="bins-')
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["bin_id"] for row in rows] == ["FS-0001", "FS-0002"]
    row = rows[0]
    assert (row["camera_id"], row["zone_id"], row["episodes"], row["false_alarms"]) == (
        "bins-west",
        "station-1",
        "2",
        "1",
    )
    assert float(row["overflow_s_total"]) == 1260 + 660 and float(row["open_to_cleared_s_mean"]) == 900.0
    assert row["open_now"] == "0"


def test_csv_cells_never_start_a_formula():
    from api.routers.bins import _cell

    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and _cell("FS-1") == "FS-1" and _cell(None) == ""


# ---- cleaning-crew dispatch --------------------------------------------------------------------------------


@pytest.fixture
def api_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    if "receiver" not in request.fixturenames:
        return make_settings(tmp_path)
    port = request.getfixturevalue("receiver").port
    crew = WebhookConfig.model_validate(
        {
            "id": "crew-dongcheng",
            "url": f"http://127.0.0.1:{port}/crew",
            "secret": SecretStr(CREW_SECRET),
            "event_types": ["bin_overflow"],
            "grid_prefix": "fangshan/dongcheng",
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.2,
        }
    )
    return make_settings(tmp_path, webhooks=[crew], webhook_poll_s=0.05)


def test_cleaning_crew_gets_the_open_and_the_resolve(api_client, receiver):  # noqa: F811
    receiver.start()
    start = _now() - timedelta(minutes=20)
    event_id = episode(api_client, start, 60, 600)
    wait_for(lambda: len(receiver.got("/crew")) >= 2, what="open and resolve pushed")
    time.sleep(0.3)
    got = receiver.got("/crew")
    bodies = [json.loads(r["body"]) for r in got]
    assert [(b["id"], b["seq"], b["state"]) for b in bodies] == [
        (event_id, 0, "open"),
        (event_id, 1, "closed"),
    ]
    assert bodies[0]["bin_ids"] == ["FS-0001", "FS-0002"] and bodies[1]["ended_at"] is not None
    for r in got:
        h = r["headers"]
        assert verify_signature(CREW_SECRET, h["X-Pingan-Timestamp"], r["body"], h["X-Pingan-Signature"])
        assert h["X-Pingan-Event-Type"] == "bin_overflow"
