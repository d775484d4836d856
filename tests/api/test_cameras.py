"""Camera health: the supervisor's status reports, the grid for staff."""

from __future__ import annotations

import time

from tests.fixtures.api import WORKER

REPORT = {
    "name": "东门",
    "state": "running",
    "reason": None,
    "last_frame_at": time.time() - 1,
    "fps": 1.0,
    "frames": 120,
    "dropped": 0,
    "reconnects": 1,
    "detections": 100,
    "gated": 20,
    "detector_ms": 12.5,
    "outbox_depth": 0,
}


def test_status_report_and_grid(api_client, auth_headers):
    cams = api_client.get("/api/cameras", headers=auth_headers("op")).json()
    assert [c["id"] for c in cams] == ["bins-west", "gate-east", "lot-north"]
    assert {c["health"] for c in cams} == {"unknown"}
    r = api_client.put("/api/cameras/gate-east/status", json=REPORT, headers=WORKER)
    assert r.status_code == 204, r.text
    stalled = dict(REPORT, state="stalled", reason="no frames for 12 s", last_frame_at="2026-11-26T08:00:00Z")
    assert api_client.put("/api/cameras/lot-north/status", json=stalled, headers=WORKER).status_code == 204
    cams = {c["id"]: c for c in api_client.get("/api/cameras", headers=auth_headers("op")).json()}
    assert cams["gate-east"]["health"] == "ok"
    assert cams["gate-east"]["stats"]["detector_ms"] == 12.5
    assert cams["lot-north"]["health"] == "degraded"
    assert cams["lot-north"]["reason"] == "no frames for 12 s"
    assert cams["bins-west"]["health"] == "unknown"


def test_a_dead_main_stream_degrades_a_camera_that_detects_on_its_sub_stream(api_client, auth_headers):
    url = "/api/cameras/gate-east/status"
    down = dict(REPORT, evidence_state="backoff", evidence_reason="main stream: connection refused")
    assert api_client.put(url, json=down, headers=WORKER).status_code == 204
    cam = next(
        c for c in api_client.get("/api/cameras", headers=auth_headers("op")).json() if c["id"] == "gate-east"
    )
    assert cam["health"] == "degraded"
    assert cam["stats"]["evidence_reason"] == "main stream: connection refused"
    assert api_client.put(url, json=dict(REPORT, evidence_state="running"), headers=WORKER).status_code == 204
    cam = next(
        c for c in api_client.get("/api/cameras", headers=auth_headers("op")).json() if c["id"] == "gate-east"
    )
    assert cam["health"] == "ok"
    bad = dict(REPORT, evidence_state="exploded")
    assert api_client.put(url, json=bad, headers=WORKER).status_code == 422


def test_a_camera_the_detector_cannot_keep_up_with_is_behind(api_client, auth_headers):
    """Past a box's capacity every camera still runs: its report says the detector is behind it."""
    url = "/api/cameras/gate-east/status"

    def health() -> dict:
        cams = api_client.get("/api/cameras", headers=auth_headers("op")).json()
        return next(c for c in cams if c["id"] == "gate-east")

    late = dict(REPORT, result_age_ms=3400, shed_share=0.42, behind=True)
    assert api_client.put(url, json=late, headers=WORKER).status_code == 204
    cam = health()
    assert cam["health"] == "behind"
    assert cam["stats"]["result_age_ms"] == 3400 and cam["stats"]["shed_share"] == 0.42
    keeping_up = dict(REPORT, result_age_ms=800, shed_share=0.0, behind=False)
    assert api_client.put(url, json=keeping_up, headers=WORKER).status_code == 204
    assert health()["health"] == "ok"
    stalled_and_behind = dict(late, state="stalled")  # a stream that is down says that first
    assert api_client.put(url, json=stalled_and_behind, headers=WORKER).status_code == 204
    assert health()["health"] == "degraded"
    for bad in ({"shed_share": 1.5}, {"shed_share": -0.1}, {"behind": "very"}, {"result_age_ms": "late"}):
        assert api_client.put(url, json=dict(REPORT, **bad), headers=WORKER).status_code == 422, bad


def test_status_input_is_checked(api_client, auth_headers):
    from tests.fixtures.api import OTHER_WORKER_KEY

    url = "/api/cameras/gate-east/status"
    assert api_client.put(url, json=dict(REPORT, state="exploded"), headers=WORKER).status_code == 422
    assert api_client.put(url, json=dict(REPORT, fps=-1), headers=WORKER).status_code == 422
    assert api_client.put(url, json=dict(REPORT, extra=1), headers=WORKER).status_code == 422
    assert (
        api_client.put(
            url, content=b"state=running", headers={**WORKER, "Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    assert api_client.put("/api/cameras/nowhere/status", json=REPORT, headers=WORKER).status_code == 403
    other = {"Authorization": f"Bearer {OTHER_WORKER_KEY}"}
    assert api_client.put(url, json=REPORT, headers=other).status_code == 403
    assert api_client.put(url, json=REPORT, headers=auth_headers("op")).status_code == 403
    assert api_client.put(url, json=REPORT, headers=auth_headers("admin")).status_code == 204
    assert (
        api_client.put("/api/cameras/nowhere/status", json=REPORT, headers=auth_headers("admin")).status_code
        == 404
    )


def test_camera_scope_and_roles(api_client, auth_headers):
    assert [c["id"] for c in api_client.get("/api/cameras", headers=auth_headers("op_xilu")).json()] == [
        "gate-east",
        "lot-north",
    ]
    assert [c["id"] for c in api_client.get("/api/cameras", headers=auth_headers("op_bins")).json()] == [
        "bins-west"
    ]
    assert api_client.get("/api/cameras", headers=auth_headers("police")).status_code == 403
    assert api_client.get("/api/cameras", headers=WORKER).status_code == 403
