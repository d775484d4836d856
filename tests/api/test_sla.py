"""SLA escalation (api.sla): new events unacknowledged past their type's limit are marked once, audited,
pushed on the live feed; acknowledged ones and other types are not."""

from __future__ import annotations

import queue
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from api.app import create_app
from api.settings import settings_from_config
from api.sla import escalate_due
from pipeline.config import SlaRule, parse_config
from tests.api.test_dashboard_browser import _login, browser  # noqa: F401 (browser: a fixture)
from tests.api.test_live import _reader, _token
from tests.fixtures.api import WORKER, TestClient, make_event, make_settings, start_live_server


def _settings(tmp_path, **kw):
    sla = {"illegal_parking": SlaRule(ack_within_s=0.5), "bin_overflow": SlaRule(ack_within_s=3600)}
    return make_settings(tmp_path, sla=sla, **kw)


def test_escalate_due_marks_once_and_audits(tmp_path, api_users, auth_headers):
    settings = _settings(tmp_path, sla_check_s=3600)  # the background check sleeps: drive it by hand
    with TestClient(create_app(settings)) as client:
        rt = client.app.state.pingan
        late, acked, bins = make_event(), make_event(), make_event(type="bin_overflow", camera_id="bins-west")
        posted_at = datetime.now(UTC)
        for ev in (late, acked, bins):
            assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
        op = auth_headers("op")
        r = client.post(f"/api/events/{acked['id']}/disposition", json={"action": "acknowledge"}, headers=op)
        assert r.status_code == 200
        # too early: as of when they were stored (a slow box may take longer than the 0.5 s limit to get here)
        assert escalate_due(rt, now=posted_at) == []
        soon = datetime.now(UTC) + timedelta(seconds=1)
        done = escalate_due(rt, now=soon)
        assert [e.view.id for e in done] == [late["id"]]
        assert done[0].entry["action"] == "escalate" and done[0].ack_within_s == 0.5
        assert escalate_due(rt, now=soon + timedelta(seconds=10)) == []  # once only
        detail = client.get(f"/api/events/{late['id']}", headers=op).json()
        assert detail["escalated_at"] is not None
        assert [(h["actor"], h["action"], h["from_state"], h["to_state"]) for h in detail["history"]] == [
            ("sla", "escalate", "new", "escalated")
        ]
        assert client.get(f"/api/events/{acked['id']}", headers=op).json()["escalated_at"] is None
        assert client.get(f"/api/events/{bins['id']}", headers=op).json()["escalated_at"] is None
        # an hour later the bin event is due as well
        done = escalate_due(rt, now=datetime.now(UTC) + timedelta(hours=1, seconds=1))
        assert [e.view.id for e in done] == [bins["id"]]
        # the mark shows in lists too, and the escalated event can still be handled
        items = client.get("/api/events", headers=op).json()["items"]
        assert {i["id"] for i in items if i["escalated_at"]} == {late["id"], bins["id"]}
        r = client.post(f"/api/events/{late['id']}/disposition", json={"action": "acknowledge"}, headers=op)
        assert r.status_code == 200 and r.json()["event"]["escalated_at"] is not None


def test_background_check_pushes_on_the_live_feed(tmp_path, api_users):
    settings = _settings(tmp_path, sla_check_s=0.1)
    live = start_live_server(settings)
    try:
        with httpx.Client(base_url=live.url) as c:
            q: queue.Queue = queue.Queue()
            ready = threading.Event()
            threading.Thread(target=_reader, args=(live.url, _token(c, "op"), q, ready), daemon=True).start()
            assert ready.wait(5)
            ev = make_event()
            assert c.post("/api/events", json=ev, headers=WORKER).status_code == 201
            t0 = time.monotonic()
            kinds = []
            while True:
                item = q.get(timeout=5)
                kinds.append(item[0])
                if item[0] == "escalation":
                    break
            assert time.monotonic() - t0 < 3
            assert kinds.index("event") < kinds.index("escalation")
            data = item[1]
            assert data["event"]["id"] == ev["id"] and data["event"]["escalated_at"]
            assert data["sla"]["ack_within_s"] == 0.5
            assert data["entry"]["actor"] == "sla"
    finally:
        live.stop()


def test_sla_config(tmp_path):
    text = f"""
storage: {{data_dir: {tmp_path}}}
api:
  sla:
    illegal_parking: {{ack_within_s: 300}}
    bin_overflow: {{ack_within_s: 1800}}
cameras:
  - {{id: cam, name: cam, source: {{path: {tmp_path / "x.mp4"}}}, zones: []}}
"""
    s = settings_from_config(parse_config(text))
    assert {k: v.ack_within_s for k, v in s.sla.items()} == {"illegal_parking": 300, "bin_overflow": 1800}
    bad = text.replace("bin_overflow: {ack_within_s: 1800}", "litter: {ack_within_s: 5}")
    try:
        parse_config(bad)
    except Exception as err:
        assert "litter" in str(err) or "sla" in str(err)
    else:
        raise AssertionError("an unknown event type was accepted")


@pytest.mark.browser
def test_dashboard_shows_escalation_and_bin_station_live(tmp_path, api_users, browser):  # noqa: F811
    from api.settings import BinStation

    station = BinStation(
        camera_id="bins-west", zone_id="station-1", bin_ids=["B-17"], grid="fangshan/dongcheng"
    )
    settings = _settings(tmp_path, sla_check_s=0.1, bin_stations=[station])
    live = start_live_server(settings)
    try:
        errors: list[str] = []
        page = _login(browser, live.url, "op", errors)
        page.wait_for_selector('[data-station="bins-west/station-1"][data-state="clean"]')
        with httpx.Client(base_url=live.url) as c:
            ev = make_event()
            assert c.post("/api/events", json=ev, headers=WORKER).status_code == 201
            page.wait_for_selector(f'tr[data-event-id="{ev["id"]}"] [data-escalated]', timeout=5000)
            assert page.text_content(f'tr[data-event-id="{ev["id"]}"] [data-escalated]') == "超时未确认"
            b = make_event(type="bin_overflow", camera_id="bins-west", zone_id="station-1")
            assert c.post("/api/events", json=b, headers=WORKER).status_code == 201
            page.wait_for_selector(
                '[data-station="bins-west/station-1"][data-state="overflow"]', timeout=5000
            )
        page.click("#lang")
        assert page.text_content(f'tr[data-event-id="{ev["id"]}"] [data-escalated]') == "Overdue"
        assert errors == []
    finally:
        live.stop()


def test_escalation_and_metrics_on_sqlite_and_postgres(any_db_settings):
    from api.routers.metrics import render

    settings = any_db_settings.model_copy(
        update={"sla": {"illegal_parking": SlaRule(ack_within_s=60)}, "sla_check_s": 3600}
    )
    with TestClient(create_app(settings)) as client:
        rt = client.app.state.pingan
        ev = make_event()
        assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
        done = escalate_due(rt, now=datetime.now(UTC) + timedelta(minutes=2))
        assert [e.view.id for e in done] == [ev["id"]]
        assert done[0].view.escalated_at is not None
        text = render(rt)
        assert 'pingan_events_escalated{type="illegal_parking"} 1' in text
        assert 'pingan_events{type="illegal_parking",state="open"} 1' in text
