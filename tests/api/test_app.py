"""App lifecycle: background retention, startup and shutdown."""

from __future__ import annotations

import hashlib
import time

from api.app import create_app
from tests.fixtures.api import WORKER, TestClient, make_event, make_settings


def test_retention_task_prunes_to_the_cap(tmp_path):
    settings = make_settings(tmp_path, media_max_bytes=1500, retention_every_s=0.05)
    with TestClient(create_app(settings)) as client:
        for i in range(2):
            data = bytes([i]) * 1000
            ev = make_event(type="bin_overflow")  # violations the police have not had are never pruned
            ev["evidence"] = [
                {
                    "name": "s.jpg",
                    "taken_at": ev["started_at"],
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "kind": "scene",
                }
            ]
            assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
            r = client.put(
                f"/api/events/{ev['id']}/evidence/s.jpg",
                content=data,
                headers={**WORKER, "Content-Type": "image/jpeg"},
            )
            assert r.status_code == 201
        store = client.app.state.pingan.store
        deadline = time.monotonic() + 5
        while store.media_usage() > 1500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.media_usage() == 1000


def test_a_camera_that_goes_silent_is_announced_offline(tmp_path):
    import asyncio

    settings = make_settings(tmp_path, camera_stale_s=0.3, health_check_s=0.05)
    with TestClient(create_app(settings)) as client:
        rt = client.app.state.pingan

        async def subscribe():
            return rt.broadcaster.subscribe()

        sub = client.portal.call(subscribe)
        r = client.put("/api/cameras/gate-east/status", json={"state": "running", "fps": 1.0}, headers=WORKER)
        assert r.status_code == 204

        async def next_health():
            msg = await asyncio.wait_for(sub.queue.get(), 5)
            return msg.kind, msg.meta["camera_id"], msg.text

        assert client.portal.call(next_health)[:2] == ("camera", "gate-east")  # the report itself
        kind, cam, text = client.portal.call(next_health)  # then silence: offline
        assert (kind, cam) == ("camera", "gate-east") and '"health":"offline"' in text
