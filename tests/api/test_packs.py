"""Evidence packs over the API: a violation posted with real stills exports a pack that verifies; tampering
shows; who may export what; the bulk export of a time range."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.evidence_pack import MANIFEST, verify_pack
from tests.fixtures.api import WORKER, iso, make_event
from tests.pipeline.test_evidence_pack import make_stills

DWELL = 60.0


def post_violation(client: Any, start: datetime, camera_id: str = "gate-east", **over: Any) -> dict[str, Any]:
    """Open (scene-1, scene-2, plate-1) then update (scene-3), each message followed by its files, as a worker
    sends them."""
    evidence, files = make_stills(start, DWELL)
    last = start + timedelta(seconds=DWELL + 30)
    base = make_event(
        start=start,
        camera_id=camera_id,
        allowed_dwell_s=DWELL,
        violation_code="1039",
        updated_at=iso(start + timedelta(seconds=DWELL)),
        dwell_s=DWELL,
        **over,
    )
    open_ = {**base, "evidence": evidence[:3]}
    update = {
        **base,
        "state": "update",
        "seq": 1,
        "evidence": evidence,
        "updated_at": iso(last),
        "dwell_s": 90.0,
    }
    for msg, names in ((open_, ["scene-1.jpg", "scene-2.jpg", "plate-1.jpg"]), (update, ["scene-3.jpg"])):
        assert client.post("/api/events", json=msg, headers=WORKER).status_code in (200, 201)
        for name in names:
            r = client.put(
                f"/api/events/{msg['id']}/evidence/{name}",
                content=files[name],
                headers={**WORKER, "Content-Type": "image/jpeg"},
            )
            assert r.status_code == 201, r.text
    return update


def _flip(data: bytes, path: str) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            content = src.read(info)
            if info.filename == path:
                content = content[:100] + bytes([content[100] ^ 1]) + content[101:]
            out.writestr(info.filename, content)
    return buf.getvalue()


def test_pack_verifies_and_tampering_shows(api_client, auth_headers, api_settings):
    ev = post_violation(api_client, datetime.now(UTC) - timedelta(minutes=10))
    r = api_client.get(f"/api/violations/{ev['id']}/pack", headers=auth_headers("police"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert verify_pack(r.content) == []
    m = json.loads(zipfile.ZipFile(io.BytesIO(r.content)).read(MANIFEST))
    assert m["violation_id"] == ev["id"] and m["plate_text"] == "京A12345" and m["device_name"] == "东门"
    assert m["allowed_dwell_s"] == DWELL and m["violation_code"] == "1039" and m["exported_by"] == "police"
    assert [i["name"] for i in m["images"]] == ["scene-1.jpg", "scene-2.jpg", "plate-1.jpg", "scene-3.jpg"]
    assert r.headers["x-pingan-chain-hash"] == m["chain_hash"]

    assert verify_pack(_flip(r.content, "evidence/plate-1.jpg"))
    assert verify_pack(_flip(r.content, MANIFEST))

    # a file altered on the server's disk is exported as it is, and the pack says so
    path = api_settings.media_dir / ev["id"] / "scene-2.jpg"
    path.write_bytes(path.read_bytes()[:-10] + b"\0" * 10)
    r = api_client.get(f"/api/violations/{ev['id']}/pack", headers=auth_headers("police"))
    assert any("scene-2.jpg" in p for p in verify_pack(r.content))

    audit = api_client.get(
        "/api/audit", params={"target_type": "event"}, headers=auth_headers("admin")
    ).json()
    assert [(a["actor"], a["action"], a["remark"]) for a in audit["items"]][-1] == (
        "police",
        "export",
        m["chain_hash"],
    )


def test_who_may_export(api_client, auth_headers):
    ev = post_violation(api_client, datetime.now(UTC) - timedelta(minutes=10))
    url = f"/api/violations/{ev['id']}/pack"
    for who in ("police", "admin", "op", "op_xilu"):  # op_xilu: gate-east lies in grid fangshan/xilu
        assert api_client.get(url, headers=auth_headers(who)).status_code == 200, who
    assert (
        api_client.get(url, headers=auth_headers("op_bins")).status_code == 404
    )  # another camera's operator
    assert api_client.get(url, headers=WORKER).status_code == 403
    assert api_client.get(url).status_code == 401
    bins = make_event(type="bin_overflow", camera_id="bins-west", zone_id="station-1", grid=None, object=None)
    assert api_client.post("/api/events", json=bins, headers=WORKER).status_code == 201
    for who in ("police", "admin", "op_bins"):
        assert (
            api_client.get(f"/api/violations/{bins['id']}/pack", headers=auth_headers(who)).status_code == 404
        )


def test_bulk_export(api_client, auth_headers):
    now = datetime.now(UTC)
    a = post_violation(api_client, now - timedelta(minutes=20))
    b = post_violation(
        api_client, now - timedelta(minutes=10), camera_id="lot-north", grid="fangshan/xilu/haiyi/0422"
    )
    bins = make_event(type="bin_overflow", camera_id="bins-west", zone_id="station-1", object=None)
    api_client.post("/api/events", json=bins, headers=WORKER)
    rng = {"since": iso(now - timedelta(hours=1)), "until": iso(now)}
    r = api_client.get("/api/violations/export", params=rng, headers=auth_headers("police"))
    assert (
        r.status_code == 200
        and r.headers["x-pingan-count"] == "2"
        and "x-pingan-next-cursor" not in r.headers
    )
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    index = json.loads(zf.read("index.json"))
    assert [p["violation_id"] for p in index["packs"]] == [b["id"], a["id"]]  # newest first
    for p in index["packs"]:
        assert verify_pack(zf.read(p["file"])) == [], p
    assert sorted(zf.namelist()) == sorted(["index.json", "SHA256SUMS", *(p["file"] for p in index["packs"])])

    first = api_client.get(
        "/api/violations/export", params={**rng, "limit": 1}, headers=auth_headers("admin")
    )
    cursor = first.headers["x-pingan-next-cursor"]
    rest = api_client.get(
        "/api/violations/export", params={**rng, "limit": 1, "cursor": cursor}, headers=auth_headers("admin")
    )
    ids = [
        json.loads(zipfile.ZipFile(io.BytesIO(x.content)).read("index.json"))["packs"][0]["violation_id"]
        for x in (first, rest)
    ]
    assert ids == [b["id"], a["id"]] and "x-pingan-next-cursor" not in rest.headers

    mine = api_client.get("/api/violations/export", params=rng, headers=auth_headers("op_bins"))
    assert mine.status_code == 200 and mine.headers["x-pingan-count"] == "0"
    assert api_client.get("/api/violations/export", params=rng, headers=WORKER).status_code == 403
    naive = {"since": "2026-11-26T08:00:00", "until": rng["until"]}
    assert (
        api_client.get("/api/violations/export", params=naive, headers=auth_headers("police")).status_code
        == 422
    )
    backwards = {"since": rng["until"], "until": rng["since"]}
    assert (
        api_client.get("/api/violations/export", params=backwards, headers=auth_headers("police")).status_code
        == 422
    )
