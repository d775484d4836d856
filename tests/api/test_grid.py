"""Grid management: events counted per next-level grid under any prefix, open-too-long per grid, and operators
scoped to one community see nothing of another (summary, events, evidence, parking); webhook targets per grid
prefix, the most specific winning."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from api.auth import hash_password
from api.db import make_engine, migrate
from api.settings import CameraInfo, Settings, WorkerKey
from api.store import Store
from api.users import parse_scope
from api.webhooks import targets_for
from pipeline.config import WebhookConfig
from tests.fixtures.api import (
    CAMERAS,
    OTHER_WORKER_KEY,
    PASSWORD,
    WORKER,
    WORKER_KEY,
    iso,
    make_event,
    make_settings,
)

HAIYI = "fangshan/xilu/haiyi"
YUHUA = "fangshan/xilu/yuhua"
EXTRA_CAMERAS = [
    CameraInfo(id="lot-a", name="A区停车场", grid=f"{HAIYI}/0422", zones=["bay-1", "bay-2", "lot"]),
    CameraInfo(id="cam-yuhua", name="玉华门口", grid=f"{YUHUA}/0101", zones=["bay-1", "no-park-9"]),
]
# operators scoped to one community each (grid prefixes), on top of tests.fixtures.api.USERS
COMMUNITY_USERS = {"op_haiyi": ["grid:" + HAIYI], "op_yuhua": [YUHUA]}
JPEG = b"\xff\xd8\xff\xe0" + b"grid-test" * 50 + b"\xff\xd9"


def grid_settings(tmp_path: Path, **kw: Any) -> Settings:
    cams = CAMERAS + EXTRA_CAMERAS
    keys = [
        WorkerKey(name="worker-1", key=SecretStr(WORKER_KEY), cameras=frozenset(c.id for c in cams)),
        WorkerKey(name="worker-2", key=SecretStr(OTHER_WORKER_KEY), cameras=frozenset({"elsewhere"})),
    ]
    return make_settings(tmp_path, cameras=cams, worker_keys=keys, **kw)


def add_community_users(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        store = Store(engine, settings.media_dir)
        pw = hash_password(PASSWORD)
        for name, scope in COMMUNITY_USERS.items():
            store.upsert_user(name, pw, "operator", *parse_scope(scope))
    finally:
        engine.dispose()


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    s = grid_settings(tmp_path)
    add_community_users(s)
    return s


def post(client: Any, **over: Any) -> dict[str, Any]:
    ev = make_event(**over)
    r = client.post("/api/events", json=ev, headers=WORKER)
    assert r.status_code == 201, r.text
    return ev


def seed(client: Any) -> dict[str, dict[str, Any]]:
    """Events in two communities of one street and in another street."""
    now = datetime.now(UTC)
    old = now - timedelta(hours=3)
    sha = hashlib.sha256(JPEG).hexdigest()
    evs = {
        "haiyi_open_old": post(client, start=old, grid=f"{HAIYI}/0421"),
        "haiyi_closed": post(
            client,
            camera_id="lot-north",
            zone_id="no-park-1",
            grid=f"{HAIYI}/0422",
            state="closed",
            ended_at=iso(now - timedelta(minutes=1)),
            start=old,
        ),
        "haiyi_here": post(client, grid=HAIYI),  # placed at the community itself (camera on its border)
        "yuhua_open_old": post(
            client,
            camera_id="cam-yuhua",
            zone_id="no-park-9",
            grid=f"{YUHUA}/0101",
            start=old,
            evidence=[{"name": "scene-1.jpg", "taken_at": iso(old), "sha256": sha, "kind": "scene"}],
        ),
        "dongcheng_bin": post(
            client,
            type="bin_overflow",
            camera_id="bins-west",
            zone_id="station-1",
            grid="fangshan/dongcheng/lane/0007",
            object=None,
            bin_ids=["FS-1"],
        ),
    }
    r = client.put(
        f"/api/events/{evs['yuhua_open_old']['id']}/evidence/scene-1.jpg",
        content=JPEG,
        headers={**WORKER, "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 201, r.text
    return evs


def summary(client: Any, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    r = client.get("/api/grid/summary", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_summary_counts_per_next_level_child(api_client, auth_headers):
    seed(api_client)
    admin = auth_headers("admin")
    top = summary(api_client, admin)
    assert [c["grid"] for c in top["children"]] == ["fangshan"]
    assert top["total"]["total"] == 5
    street = summary(api_client, admin, prefix="fangshan")
    assert {c["grid"]: c["total"] for c in street["children"]} == {
        "fangshan/dongcheng": 1,
        "fangshan/xilu": 4,
    }
    xilu = summary(api_client, admin, prefix="fangshan/xilu")
    kids = {c["grid"]: c for c in xilu["children"]}
    assert set(kids) == {HAIYI, YUHUA}
    assert kids[HAIYI]["by_type"] == {"illegal_parking": {"open": 2, "closed": 1}}
    assert kids[HAIYI]["by_disposition"] == {"new": 3}
    # open too long (default 1 h): still going on, unresolved, started 3 h ago; the closed one is not
    assert kids[HAIYI]["open_too_long"] == 1 and kids[YUHUA]["open_too_long"] == 1
    assert xilu["total"]["open_too_long"] == 2
    assert {o["grid"] for o in xilu["open_too_long"]} == {f"{HAIYI}/0421", f"{YUHUA}/0101"}
    haiyi = summary(api_client, admin, prefix=HAIYI)
    assert {c["grid"]: c["total"] for c in haiyi["children"]} == {
        ".": 1,
        f"{HAIYI}/0421": 1,
        f"{HAIYI}/0422": 1,
    }
    # a longer threshold: nothing is late; a prefix that is a string prefix but not a path prefix: nothing
    assert (
        summary(api_client, admin, prefix="fangshan/xilu", older_than_s=5 * 3600)["total"]["open_too_long"]
        == 0
    )
    assert summary(api_client, admin, prefix="fangshan/xil")["total"]["total"] == 0
    # an event marked false alarm is no longer late
    ev = api_client.post(
        f"/api/events/{xilu_id(api_client, admin, YUHUA)}/disposition",
        json={"action": "false_alarm"},
        headers=admin,
    )
    assert ev.status_code == 200, ev.text
    assert summary(api_client, admin, prefix=YUHUA)["total"]["open_too_long"] == 0


def xilu_id(client: Any, headers: dict[str, str], grid: str) -> str:
    r = client.get("/api/events", params={"grid": grid}, headers=headers)
    assert r.status_code == 200
    return str(r.json()["items"][0]["id"])


def test_summary_validates_and_needs_staff(api_client, auth_headers):
    assert api_client.get("/api/grid/summary").status_code == 401
    assert api_client.get("/api/grid/summary", headers=auth_headers("police")).status_code == 403
    assert api_client.get("/api/grid/summary", headers=WORKER).status_code == 403
    admin = auth_headers("admin")
    for bad in ({"prefix": "a//b"}, {"prefix": "/a"}, {"since": "2026-01-01T00:00:00"}, {"older_than_s": 0}):
        assert api_client.get("/api/grid/summary", params=bad, headers=admin).status_code == 422, bad


def test_events_filter_by_grid_prefix(api_client, auth_headers):
    evs = seed(api_client)
    admin = auth_headers("admin")
    r = api_client.get("/api/events", params={"grid": HAIYI}, headers=admin)
    got = {e["id"] for e in r.json()["items"]}
    assert got == {evs[k]["id"] for k in ("haiyi_open_old", "haiyi_closed", "haiyi_here")}
    r = api_client.get("/api/events", params={"grid": "fangshan"}, headers=admin)
    assert len(r.json()["items"]) == 5


def test_operator_scoped_to_one_community_sees_nothing_of_another(api_client, auth_headers):
    evs = seed(api_client)
    worker_bay = {"occupied": 1, "capacity": 1, "free": 0, "ts": datetime.now(UTC).timestamp()}
    for cam in ("lot-a", "cam-yuhua"):
        assert api_client.put(f"/api/parking/{cam}/bay-1", json=worker_bay, headers=WORKER).status_code == 204
    op = auth_headers("op_haiyi")
    # summary: only its community, even when asked for the street or the other community
    xilu = summary(api_client, op, prefix="fangshan/xilu")
    assert [c["grid"] for c in xilu["children"]] == [HAIYI]
    assert xilu["total"]["total"] == 3 and xilu["total"]["open_too_long"] == 1
    other = summary(api_client, op, prefix=YUHUA)
    assert other["total"]["total"] == 0 and other["children"] == [] and other["open_too_long"] == []
    top = summary(api_client, op)
    assert top["total"]["total"] == 3
    # events: the list, the grid filter, the detail, the evidence
    listed = {e["id"] for e in api_client.get("/api/events", headers=op).json()["items"]}
    assert listed == {evs[k]["id"] for k in ("haiyi_open_old", "haiyi_closed", "haiyi_here")}
    assert api_client.get("/api/events", params={"grid": YUHUA}, headers=op).json()["items"] == []
    yid = evs["yuhua_open_old"]["id"]
    assert api_client.get(f"/api/events/{yid}", headers=op).status_code == 404
    assert api_client.get(f"/api/events/{yid}/evidence/scene-1.jpg", headers=op).status_code == 404
    r = api_client.post(f"/api/events/{yid}/disposition", json={"action": "acknowledge"}, headers=op)
    assert r.status_code == 404
    # the other community's operator does see it
    assert (
        api_client.get(f"/api/events/{yid}/evidence/scene-1.jpg", headers=auth_headers("op_yuhua")).content
        == JPEG
    )
    # parking: lots and history
    lots = api_client.get("/api/parking", headers=op).json()["lots"]
    assert [lot["lot"] for lot in lots] == ["lot-a"]
    assert api_client.get("/api/parking/cam-yuhua/bay-1/history", headers=op).status_code == 404
    assert api_client.get("/api/parking/lot-a/bay-1/history", headers=op).status_code == 200
    lots = api_client.get("/api/parking", headers=auth_headers("op_yuhua")).json()["lots"]
    assert [lot["lot"] for lot in lots] == ["cam-yuhua"]
    # camera health too
    cams = {c["id"] for c in api_client.get("/api/cameras", headers=op).json()}
    assert cams == {"gate-east", "lot-north", "lot-a"}


def _hook(id_: str, prefix: str | None, types: tuple[str, ...] = ("bin_overflow",)) -> WebhookConfig:
    return WebhookConfig.model_validate(
        {
            "id": id_,
            "url": f"http://127.0.0.1:9/{id_}",
            "secret": SecretStr("a-webhook-secret-0123456789"),
            "event_types": list(types),
            "grid_prefix": prefix,
        }
    )


def test_webhook_targets_most_specific_grid_prefix_wins():
    district = _hook("district", None)
    street = _hook("xilu", "fangshan/xilu")
    community = _hook("haiyi", HAIYI)
    community2 = _hook("haiyi-2", HAIYI)
    police = _hook("police", None, ("illegal_parking",))
    eps = [district, street, community, police]
    ids = lambda t, g: [e.id for e in targets_for(eps, t, g)]  # noqa: E731
    assert ids("bin_overflow", f"{HAIYI}/0421") == ["haiyi"]
    assert ids("bin_overflow", HAIYI) == ["haiyi"]
    assert ids("bin_overflow", f"{YUHUA}/0101") == ["xilu"]
    assert ids("bin_overflow", "fangshan/dongcheng/lane") == ["district"]
    assert ids("bin_overflow", None) == ["district"]
    assert ids("bin_overflow", "fangshan/xilu-2/x") == ["district"]  # a path prefix, not a string prefix
    assert ids("illegal_parking", f"{HAIYI}/0421") == ["police"]  # other types do not compete
    assert [e.id for e in targets_for([*eps, community2], "bin_overflow", HAIYI)] == ["haiyi", "haiyi-2"]
    assert targets_for([street], "bin_overflow", "fangshan/dongcheng") == []
