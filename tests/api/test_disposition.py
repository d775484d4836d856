"""Disposition workflow over HTTP: transitions, roles, scopes, audit history on the event detail."""

from __future__ import annotations

import pytest

from tests.fixtures.api import WORKER, make_event


def dispose(client, event_id, action, headers, remark=None):
    return client.post(
        f"/api/events/{event_id}/disposition", json={"action": action, "remark": remark}, headers=headers
    )


def test_full_workflow_with_history(api_client, auth_headers):
    ev = make_event()
    api_client.post("/api/events", json=ev, headers=WORKER)
    op = auth_headers("op")
    r = dispose(api_client, ev["id"], "acknowledge", op, "看到了")
    assert r.status_code == 200, r.text
    assert r.json()["event"]["disposition"] == "acknowledged"
    assert r.json()["entry"]["remark"] == "看到了"
    assert dispose(api_client, ev["id"], "dispatch", op, "保安 3 号").status_code == 200
    assert dispose(api_client, ev["id"], "resolve", auth_headers("admin"), "已挪车").status_code == 200
    detail = api_client.get(f"/api/events/{ev['id']}", headers=op).json()
    assert detail["disposition"] == "resolved"
    steps = [
        (h["actor"], h["action"], h["from_state"], h["to_state"], h["remark"]) for h in detail["history"]
    ]
    assert steps == [
        ("op", "acknowledge", "new", "acknowledged", "看到了"),
        ("op", "dispatch", "acknowledged", "dispatched", "保安 3 号"),
        ("admin", "resolve", "dispatched", "resolved", "已挪车"),
    ]
    # a new message from the worker does not reset the disposition
    closed = dict(ev, seq=1, state="closed", ended_at=ev["updated_at"])
    assert api_client.post("/api/events", json=closed, headers=WORKER).status_code == 200
    assert api_client.get(f"/api/events/{ev['id']}", headers=op).json()["disposition"] == "resolved"


def test_invalid_transitions_and_input(api_client, auth_headers):
    ev = make_event()
    api_client.post("/api/events", json=ev, headers=WORKER)
    op = auth_headers("op")
    assert dispose(api_client, ev["id"], "resolve", op).status_code == 409
    assert dispose(api_client, ev["id"], "reopen", op).status_code == 409
    assert dispose(api_client, ev["id"], "explode", op).status_code == 422
    r = api_client.post(
        f"/api/events/{ev['id']}/disposition", json={"action": "acknowledge", "x": 1}, headers=op
    )
    assert r.status_code == 422
    assert dispose(api_client, ev["id"], "acknowledge", op, "x" * 1001).status_code == 422
    assert dispose(api_client, ev["id"], "false_alarm", op).status_code == 200
    assert dispose(api_client, ev["id"], "reopen", op).status_code == 200
    assert api_client.get(f"/api/events/{ev['id']}", headers=op).json()["disposition"] == "new"


@pytest.mark.parametrize(
    ("who", "status"), [("police", 403), ("worker", 403), ("op_bins", 404), ("op_xilu", 200)]
)
def test_who_may_dispose(api_client, auth_headers, who, status):
    ev = make_event()
    api_client.post("/api/events", json=ev, headers=WORKER)
    assert dispose(api_client, ev["id"], "acknowledge", auth_headers(who)).status_code == status
