"""GET /api/bin-stations: configured bin stations with their state (an open bin_overflow event, or clean)."""

from __future__ import annotations

from api.app import create_app
from api.settings import BinStation
from tests.fixtures.api import WORKER, TestClient, make_event, make_settings

STATIONS = [
    BinStation(
        camera_id="bins-west",
        zone_id="station-1",
        bin_ids=["B-17", "B-18"],
        grid="fangshan/dongcheng/lane/0007",
    ),
    BinStation(camera_id="bins-west", zone_id="station-2", bin_ids=[], grid="fangshan/dongcheng/lane/0007"),
]


def test_stations_state_and_scope(tmp_path, api_users, auth_headers):
    with TestClient(create_app(make_settings(tmp_path, bin_stations=STATIONS))) as client:
        ev = make_event(type="bin_overflow", camera_id="bins-west", zone_id="station-1", severity=2)
        assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
        r = client.get("/api/bin-stations", headers=auth_headers("op_bins"))
        assert r.status_code == 200
        got = {s["zone_id"]: s for s in r.json()}
        assert got["station-1"]["state"] == "overflow"
        assert got["station-1"]["event"]["id"] == ev["id"] and got["station-1"]["event"]["severity"] == 2
        assert (
            got["station-1"]["bin_ids"] == ["B-17", "B-18"]
            and got["station-1"]["camera_name"] == "西侧垃圾站"
        )
        assert (got["station-2"]["state"], got["station-2"]["event"]) == ("clean", None)
        closed = dict(ev, state="closed", seq=1, ended_at=ev["updated_at"])
        assert client.post("/api/events", json=closed, headers=WORKER).status_code == 200
        r = client.get("/api/bin-stations", headers=auth_headers("admin"))
        assert [s["state"] for s in r.json()] == ["clean", "clean"]
        assert client.get("/api/bin-stations", headers=auth_headers("op_xilu")).json() == []  # out of scope
        assert client.get("/api/bin-stations", headers=auth_headers("police")).status_code == 403


def test_stations_from_config(tmp_path):
    from api.settings import settings_from_config
    from pipeline.config import parse_config

    text = f"""
storage: {{data_dir: {tmp_path}}}
site: {{grid: fangshan/xilu}}
cameras:
  - id: bins-west
    name: 西侧垃圾站
    source: {{path: {tmp_path / "x.mp4"}}}
    zones:
      - {{id: station-1, type: bin_station, polygon: [[0, 0], [10, 0], [10, 10]], bin_ids: [B-1]}}
      - {{id: lane, type: no_parking, polygon: [[0, 0], [10, 0], [10, 10]]}}
"""
    s = settings_from_config(parse_config(text))
    assert s.bin_stations == [
        BinStation(camera_id="bins-west", zone_id="station-1", bin_ids=["B-1"], grid="fangshan/xilu")
    ]
