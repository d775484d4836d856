"""GET /api/false-alarms/export (admin): a ZIP of false-alarm events with their evidence and the remark."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.api import WORKER, iso, make_event

JPEG = b"\xff\xd8\xff\xe0" + b"false-alarm-still" * 50 + b"\xff\xd9"
SHA = hashlib.sha256(JPEG).hexdigest()


def _post(client, **over):
    ev = make_event(**over)
    ev["evidence"] = [{"name": "scene-1.jpg", "taken_at": ev["started_at"], "sha256": SHA, "kind": "scene"}]
    assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
    r = client.put(
        f"/api/events/{ev['id']}/evidence/scene-1.jpg",
        content=JPEG,
        headers={**WORKER, "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 201
    return ev


def _mark(client, headers, ev, remark):
    r = client.post(
        f"/api/events/{ev['id']}/disposition",
        json={"action": "false_alarm", "remark": remark},
        headers=headers,
    )
    assert r.status_code == 200, r.text


def _range(hours=2):
    now = datetime.now(UTC)
    return {"since": iso(now - timedelta(hours=hours)), "until": iso(now + timedelta(minutes=1))}


def test_export_zip(api_client, auth_headers):
    op, admin = auth_headers("op"), auth_headers("admin")
    shadow = _post(api_client)
    bin_fa = _post(api_client, type="bin_overflow", camera_id="bins-west", zone_id="station-1")
    real = _post(api_client)
    old = _post(api_client, start=datetime.now(UTC) - timedelta(days=3))
    _mark(api_client, op, shadow, "树影，不是车")
    _mark(api_client, op, bin_fa, "垃圾袋在桶旁，未满溢")
    _mark(api_client, op, old, "old")
    r = api_client.post(f"/api/events/{real['id']}/disposition", json={"action": "acknowledge"}, headers=op)
    assert r.status_code == 200

    r = api_client.get("/api/false-alarms/export", params=_range(), headers=admin)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["x-pingan-count"] == "2"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    lines = [json.loads(x) for x in zf.read("false_alarms.jsonl").decode().splitlines()]
    by_id = {rec["event"]["id"]: rec for rec in lines}
    assert set(by_id) == {shadow["id"], bin_fa["id"]}
    rec = by_id[shadow["id"]]
    assert (rec["remark"], rec["marked_by"]) == ("树影，不是车", "op")
    assert rec["event"]["disposition"] == "false_alarm"
    assert rec["event"]["object"]["box_xyxy"] == [412, 230, 640, 388]
    assert rec["files"] == [
        {
            "file": f"evidence/{shadow['id']}/scene-1.jpg",
            "name": "scene-1.jpg",
            "kind": "scene",
            "sha256": SHA,
        }
    ]
    assert by_id[bin_fa["id"]]["remark"] == "垃圾袋在桶旁，未满溢"
    for rec in lines:
        assert zf.read(rec["files"][0]["file"]) == JPEG
    sums = dict(reversed(line.split("  ")) for line in zf.read("SHA256SUMS").decode().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256(zf.read(name)).hexdigest() == digest
    assert "false_alarms.jsonl" in sums
    # the older one is in a wider range; the type filter and paging work
    r = api_client.get(
        "/api/false-alarms/export", params={**_range(hours=24 * 7), "limit": 1, "type": "illegal_parking"},
        headers=admin,
    )  # fmt: skip
    assert r.headers["x-pingan-count"] == "1" and "x-pingan-next-cursor" in r.headers
    r = api_client.get(
        "/api/false-alarms/export",
        params={**_range(hours=24 * 7), "limit": 1, "type": "illegal_parking",
                "cursor": r.headers["x-pingan-next-cursor"]},
        headers=admin,
    )  # fmt: skip
    rec = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read("false_alarms.jsonl"))
    assert rec["event"]["id"] == old["id"]
    # exports are audited
    audit = api_client.get("/api/audit", headers=admin).json()["items"]
    assert [a["action"] for a in audit].count("export_false_alarms") == 3


@pytest.mark.parametrize(("who", "status"), [("op", 403), ("police", 403), ("worker", 403)])
def test_admin_only(api_client, auth_headers, who, status):
    r = api_client.get("/api/false-alarms/export", params=_range(), headers=auth_headers(who))
    assert r.status_code == status


def test_bad_ranges(api_client, auth_headers):
    admin = auth_headers("admin")
    now = datetime.now(UTC)
    r = api_client.get(
        "/api/false-alarms/export", params={"since": iso(now), "until": iso(now)}, headers=admin
    )
    assert r.status_code == 422
    naive = {"since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00"}
    assert api_client.get("/api/false-alarms/export", params=naive, headers=admin).status_code == 422
    assert api_client.get("/api/false-alarms/export", headers=admin).status_code == 422
