"""Police feed: illegal parking only, evidence hashes, a stable chain hash, cursor pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.fixtures.api import WORKER, iso, make_event


def test_violations_feed(api_client, auth_headers):
    base = datetime.now(UTC) - timedelta(hours=1)
    parked = []
    for i in range(7):
        ev = make_event(start=base + timedelta(minutes=i), violation_code="1039")
        ev["evidence"] = [
            {"name": "scene-1.jpg", "taken_at": ev["started_at"], "sha256": f"{i:064x}", "kind": "scene"}
        ]
        api_client.post("/api/events", json=ev, headers=WORKER)
        parked.append(ev["id"])
    api_client.post(
        "/api/events",
        headers=WORKER,
        json=make_event(
            type="bin_overflow",
            camera_id="bins-west",
            zone_id="station-1",
            grid="fangshan/dongcheng/lane/0007",
            object=None,
        ),
    )
    police = auth_headers("police")
    seen, cursor = [], None
    while True:
        r = api_client.get(
            "/api/violations", params={"limit": 3} | ({"cursor": cursor} if cursor else {}), headers=police
        )
        assert r.status_code == 200, r.text
        seen += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert [v["id"] for v in seen] == list(reversed(parked))
    v = seen[0]
    assert v["plate"] == "京A12345" and v["violation_code"] == "1039" and v["camera_name"] == "东门"
    assert v["evidence"][0]["sha256"] == f"{6:064x}" and len(v["chain_sha256"]) == 64
    again = api_client.get("/api/violations", params={"limit": 1}, headers=police).json()["items"][0]
    assert again["chain_sha256"] == v["chain_sha256"]
    # a later message changes the record, so its chain hash
    upd = make_event(
        id=v["id"],
        started_at=v["started_at"],
        seq=1,
        state="update",
        violation_code="1039",
        updated_at=iso(datetime.now(UTC)),
        dwell_s=999.0,
    )
    upd["evidence"] = [
        {"name": "scene-1.jpg", "taken_at": v["started_at"], "sha256": f"{6:064x}", "kind": "scene"}
    ]
    assert api_client.post("/api/events", json=upd, headers=WORKER).status_code == 200
    third = api_client.get("/api/violations", params={"limit": 1}, headers=police).json()["items"][0]
    assert third["chain_sha256"] != v["chain_sha256"]
    closed = api_client.get("/api/violations", params={"closed_only": "true"}, headers=police).json()
    assert closed["items"] == []


def test_violations_roles(api_client, auth_headers):
    assert api_client.get("/api/violations", headers=auth_headers("admin")).status_code == 200
    assert api_client.get("/api/violations", headers=auth_headers("op")).status_code == 403
    assert api_client.get("/api/violations", headers=WORKER).status_code == 403
    assert api_client.get("/api/violations").status_code == 401


def test_evidence_pack_and_audit(api_client, auth_headers):
    import hashlib
    import io
    import zipfile

    data = b"\xff\xd8pack test\xff\xd9"
    ev = make_event()
    ev["evidence"] = [
        {
            "name": "scene-1.jpg",
            "taken_at": ev["started_at"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "kind": "scene",
        },
        {"name": "plate-1.jpg", "taken_at": ev["started_at"], "sha256": "0" * 64, "kind": "plate"},
    ]
    api_client.post("/api/events", json=ev, headers=WORKER)
    r = api_client.put(
        f"/api/events/{ev['id']}/evidence/scene-1.jpg",
        content=data,
        headers={**WORKER, "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 201
    r = api_client.get(f"/api/violations/{ev['id']}/pack", headers=auth_headers("police"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(zf.namelist()) == ["SHA256SUMS", "evidence/scene-1.jpg", "manifest.json"]
    assert zf.read("evidence/scene-1.jpg") == data
    record = __import__("json").loads(zf.read("manifest.json"))
    assert record["violation_id"] == ev["id"] and len(record["chain_hash"]) == 64
    present = [(i["name"], i["present"]) for i in record["images"]]
    assert present == [("scene-1.jpg", True), ("plate-1.jpg", False)]
    assert f"{hashlib.sha256(data).hexdigest()}  evidence/scene-1.jpg" in zf.read("SHA256SUMS").decode()
    # operators export within their scope (tests/api/test_packs.py has the rest)
    assert api_client.get(f"/api/violations/{ev['id']}/pack", headers=auth_headers("op")).status_code == 200
    assert api_client.get(f"/api/violations/{ev['id']}/pack", headers=WORKER).status_code == 403
    audit = api_client.get(
        "/api/audit", params={"target_type": "event"}, headers=auth_headers("admin")
    ).json()
    assert [(a["actor"], a["action"], a["target_id"]) for a in audit["items"]] == [
        ("op", "export", ev["id"]),
        ("police", "export", ev["id"]),
    ]
    assert api_client.get("/api/audit", headers=auth_headers("op")).status_code == 403
    assert api_client.get("/api/audit", headers=auth_headers("police")).status_code == 403


def test_pack_of_bin_event_is_404(api_client, auth_headers):
    ev = make_event(
        type="bin_overflow",
        camera_id="bins-west",
        zone_id="station-1",
        grid="fangshan/dongcheng/lane/0007",
        object=None,
    )
    api_client.post("/api/events", json=ev, headers=WORKER)
    assert (
        api_client.get(f"/api/violations/{ev['id']}/pack", headers=auth_headers("police")).status_code == 404
    )


def test_violations_filter_by_plate(api_client, auth_headers):
    base = datetime.now(UTC) - timedelta(hours=1)
    ids = {}
    for i, text in enumerate(["京A12345", "京B00001", "沪C99999"]):
        ev = make_event(start=base + timedelta(minutes=i))
        ev["object"] = dict(ev["object"], plate={"text": text, "confidence": 0.9})
        assert api_client.post("/api/events", json=ev, headers=WORKER).status_code == 201
        ids[text] = ev["id"]
    plain = make_event(start=base + timedelta(minutes=5))
    plain["object"] = dict(plain["object"], plate=None)
    assert api_client.post("/api/events", json=plain, headers=WORKER).status_code == 201
    police = auth_headers("police")

    def found(plate: str) -> list[str]:
        r = api_client.get("/api/violations", params={"plate": plate}, headers=police)
        assert r.status_code == 200, r.text
        return [v["id"] for v in r.json()["items"]]

    assert found("京B00001") == [ids["京B00001"]]
    assert sorted(found("京*")) == sorted([ids["京A12345"], ids["京B00001"]])
    assert found("粤Z*") == []
    assert found("京%") == [] and found("京_*") == []  # SQL wildcards are plain characters
