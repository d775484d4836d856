"""PUT/GET evidence: sha256 checked against the event's declaration, safe names, idempotent, scoped reads."""

from __future__ import annotations

import hashlib

import pytest

from tests.fixtures.api import WORKER, make_event

JPEG = b"\xff\xd8\xff\xe0" + b"pingan-test-still" * 100 + b"\xff\xd9"
SHA = hashlib.sha256(JPEG).hexdigest()


def event_with_evidence(**over):
    ev = make_event(**over)
    ev["evidence"] = [{"name": "scene-1.jpg", "taken_at": ev["started_at"], "sha256": SHA, "kind": "scene"}]
    return ev


def put(client, event_id, name, data=JPEG, ctype="image/jpeg", headers=WORKER):
    return client.put(
        f"/api/events/{event_id}/evidence/{name}", content=data, headers={**headers, "Content-Type": ctype}
    )


def test_upload_is_idempotent_and_readable(api_client, api_settings, auth_headers):
    ev = event_with_evidence()
    assert api_client.post("/api/events", json=ev, headers=WORKER).status_code == 201
    r = put(api_client, ev["id"], "scene-1.jpg")
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == SHA
    r = put(api_client, ev["id"], "scene-1.jpg")
    assert r.status_code == 200
    path = api_settings.media_dir / ev["id"] / "scene-1.jpg"
    assert path.read_bytes() == JPEG
    assert [p.name for p in path.parent.iterdir()] == ["scene-1.jpg"]  # no temp files left
    got = api_client.get(f"/api/events/{ev['id']}/evidence/scene-1.jpg", headers=auth_headers("op"))
    assert got.status_code == 200
    assert got.content == JPEG
    assert got.headers["content-type"] == "image/jpeg"
    detail = api_client.get(f"/api/events/{ev['id']}", headers=auth_headers("op")).json()
    assert detail["evidence"][0]["stored"] is True
    assert detail["evidence"][0]["url"] == f"/api/events/{ev['id']}/evidence/scene-1.jpg"


def test_sha_mismatch_is_refused(api_client, api_settings):
    ev = event_with_evidence()
    api_client.post("/api/events", json=ev, headers=WORKER)
    r = put(api_client, ev["id"], "scene-1.jpg", data=JPEG + b"tampered")
    assert r.status_code == 409
    assert not (api_settings.media_dir / ev["id"] / "scene-1.jpg").exists()


def test_undeclared_name_and_unknown_event(api_client):
    ev = event_with_evidence()
    api_client.post("/api/events", json=ev, headers=WORKER)
    assert put(api_client, ev["id"], "other.jpg").status_code == 409
    assert put(api_client, make_event()["id"], "scene-1.jpg").status_code == 404


@pytest.mark.parametrize(
    "name", ["..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", ".hidden.jpg", "a%00b.jpg", "a%5Cb.jpg", "x" * 101]
)
def test_traversal_names_are_refused(api_client, api_settings, name):
    ev = event_with_evidence()
    api_client.post("/api/events", json=ev, headers=WORKER)
    r = put(api_client, ev["id"], name)
    assert 400 <= r.status_code < 500, r.text
    files = [p for p in api_settings.media_dir.rglob("*") if p.is_file()]
    assert files == []


def test_wrong_content_type_and_size(api_client):
    ev = event_with_evidence()
    api_client.post("/api/events", json=ev, headers=WORKER)
    assert put(api_client, ev["id"], "scene-1.jpg", ctype="text/html").status_code == 415
    big = b"\0" * (10 * 1024 * 1024 + 1)
    assert put(api_client, ev["id"], "scene-1.jpg", data=big).status_code == 413


def test_evidence_scope(api_client, auth_headers):
    from tests.fixtures.api import OTHER_WORKER_KEY

    ev = event_with_evidence()
    api_client.post("/api/events", json=ev, headers=WORKER)
    other = {"Authorization": f"Bearer {OTHER_WORKER_KEY}"}
    assert put(api_client, ev["id"], "scene-1.jpg", headers=other).status_code == 403
    assert put(api_client, ev["id"], "scene-1.jpg", headers=auth_headers("admin")).status_code == 403
    assert put(api_client, ev["id"], "scene-1.jpg").status_code == 201
    url = f"/api/events/{ev['id']}/evidence/scene-1.jpg"
    assert api_client.get(url, headers=WORKER).status_code == 403
    assert api_client.get(url).status_code == 401
    assert api_client.get(url, headers=auth_headers("op_bins")).status_code == 404
    assert api_client.get(url, headers=auth_headers("police")).status_code == 200


def test_police_cannot_fetch_bin_evidence(api_client, auth_headers):
    ev = event_with_evidence(
        type="bin_overflow",
        camera_id="bins-west",
        zone_id="station-1",
        grid="fangshan/dongcheng/lane/0007",
        object=None,
    )
    api_client.post("/api/events", json=ev, headers=WORKER)
    assert put(api_client, ev["id"], "scene-1.jpg").status_code == 201
    url = f"/api/events/{ev['id']}/evidence/scene-1.jpg"
    assert api_client.get(url, headers=auth_headers("police")).status_code == 404
    assert api_client.get(url, headers=auth_headers("op_bins")).status_code == 200
