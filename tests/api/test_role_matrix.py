"""Role × route matrix: every route refuses every principal its rule does not name (401/403/404), lets
the ones it names through, and hides other cameras' events from scoped operators (404). Derived from the
rules the routes declare, so a new route is covered the day it is added."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute

from api.app import app_routes
from api.auth import auth_rules
from tests.fixtures.api import WORKER, make_event

# principal → role; "anonymous" sends nothing
PRINCIPALS = {"anonymous": None, "worker": "worker", "police": "police", "op": "operator", "admin": "admin"}
DENIED = {401, 403, 404, 303, 302, 307}


def _routes(client: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for route in app_routes(client.app):
        if not isinstance(route, APIRoute):
            continue
        kind, *rest = auth_rules(route.dependant)[0]
        roles: tuple[str, ...] = rest[0] if rest else ()
        for method in sorted(route.methods):
            if method != "HEAD" and kind != "public":
                out.append((method, route.path, roles))
    return out


@pytest.fixture
def world(api_client: Any) -> dict[str, str]:
    parking = make_event()
    parking["evidence"] = [
        {"name": "scene-1.jpg", "taken_at": parking["started_at"], "sha256": "0" * 64, "kind": "scene"}
    ]
    assert api_client.post("/api/events", json=parking, headers=WORKER).status_code == 201
    return {
        "event_id": parking["id"],
        "name": "scene-1.jpg",
        "camera_id": "gate-east",
        "zone_id": "fire-lane-3",
        "bin_id": "B1",
        "delivery_id": "1",
    }


def _call(client: Any, method: str, path: str, world: dict[str, str], headers: dict[str, str]) -> int:
    url = path.format(**world)
    if path == "/api/events/stream":
        with client.stream(method, url, headers=headers) as r:
            return int(r.status_code)
    if method == "GET":
        return int(client.get(url, headers=headers, follow_redirects=False).status_code)
    # Write routes: a valid-looking but empty body; the rule must refuse before the body is judged.
    return int(
        client.request(
            method, url, json={}, headers=headers | {"X-Pingan-Csrf": "1"}, follow_redirects=False
        ).status_code
    )


def test_every_route_refuses_every_role_it_should(api_client, auth_headers, world) -> None:
    routes = _routes(api_client)
    assert len(routes) >= 25
    problems = []
    for method, path, roles in routes:
        for who, role in PRINCIPALS.items():
            if path == "/api/events/stream" and role in roles:
                continue  # a live stream never ends: its admission is tested in test_live
            headers = {} if role is None else auth_headers(who)
            status = _call(api_client, method, path, world, headers)
            allowed = role in roles
            if allowed and status in (401, 403):
                problems.append(f"{method} {path}: {who} ({role}) refused with {status}")
            if not allowed and status not in DENIED:
                problems.append(f"{method} {path}: {who} ({role}) got {status}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path",
    [
        "/api/events/{event_id}",
        "/api/events/{event_id}/evidence/{name}",
        "/api/violations/{event_id}/pack",
    ],
)
def test_operator_of_other_cameras_sees_nothing(api_client, auth_headers, world, path) -> None:
    url = path.format(**world)
    assert api_client.get(url, headers=auth_headers("op_bins")).status_code == 404
    listed = api_client.get("/api/events", headers=auth_headers("op_bins")).json()["items"]
    assert world["event_id"] not in {e["id"] for e in listed}
    r = api_client.post(
        f"/api/events/{world['event_id']}/disposition",
        json={"action": "acknowledge", "remark": "not mine"},
        headers=auth_headers("op_bins") | {"X-Pingan-Csrf": "1"},
    )
    assert r.status_code == 404


def test_worker_of_other_cameras_cannot_post_for_them(api_client) -> None:
    from tests.fixtures.api import OTHER_WORKER_KEY

    other = {"Authorization": f"Bearer {OTHER_WORKER_KEY}"}
    assert api_client.post("/api/events", json=make_event(), headers=other).status_code == 403
    status = api_client.put("/api/cameras/gate-east/status", json={"state": "running"}, headers=other)
    assert status.status_code == 403
