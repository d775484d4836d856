"""The whole path, real parts only: GStreamer RTSP server on 127.0.0.1 serving real CCTV footage (Debian's
vtest.avi) → `pingan run` (PyAV source, NanoDet in ONNX Runtime, tracker, parking rule, evidence, outbox, HTTP
sink) → the API (SQLite) → GET /api/events with its evidence image. Then the camera dies and comes back, and
SIGTERM stops everything cleanly. The camera password never shows up in logs or API output."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import httpx
import numpy as np
import pytest

from pipeline.devtools.demo import VTEST, courtyard_clip

PASSWORD = "s3cr3t p@ss/word!"
ADMIN_PASSWORD = "admin-password-for-tests-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def courtyard_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VTEST.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{VTEST} missing: scripts/setup-system.sh installs opencv-doc")
        pytest.skip(f"{VTEST} missing")
    path = tmp_path_factory.mktemp("e2e") / "courtyard.mp4"
    courtyard_clip(path)
    return path


CONFIG = """
site: {{id: test-site, timezone: Asia/Shanghai, grid: fangshan/xilu/test}}
api: {{host: 127.0.0.1, port: {api_port}}}
storage: {{data_dir: {data_dir}}}
cameras:
  - id: courtyard
    name: 北区庭院
    source: {{url: "rtsp://${{E2E_CAM_USER}}:${{E2E_CAM_PASS}}@127.0.0.1:{rtsp_port}/courtyard"}}
    detect_fps: 2
    stall_timeout_s: 4
    backoff_max_s: 2
    zones:
      - {{id: fire-lane-east, type: fire_lane, polygon: [[622, 64], [738, 64], [738, 124], [622, 124]],
         dwell_s: 6, violation_code: "1039"}}
      - {{id: no-parking-square, type: no_parking, polygon: [[300, 200], [620, 200], [620, 340], [300, 340]],
         dwell_s: 6}}
"""


class Pingan:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log
        self.client = httpx.Client(base_url=base, timeout=5)
        self.token: str | None = None

    def login(self) -> None:
        r = self.client.post("/api/token", json={"username": "admin", "password": ADMIN_PASSWORD})
        r.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def wait_for(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"pingan exited ({self.proc.returncode}) while waiting for {what}:\n{self.tail()}"
                )
            try:
                value = fn()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def pingan_run(
    tmp_path: Path, courtyard_mp4: Path, rtsp_server: Callable[..., Any]
) -> Iterator[tuple[Pingan, Any]]:
    server = rtsp_server({"courtyard": courtyard_mp4}, auth=("cam", PASSWORD))
    api_port = _free_port()
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(
        CONFIG.format(api_port=api_port, rtsp_port=server.port, data_dir=tmp_path / "var"), encoding="utf-8"
    )
    env = dict(os.environ, E2E_CAM_USER="cam", E2E_CAM_PASS=PASSWORD, PINGAN_ADMIN_PASSWORD=ADMIN_PASSWORD)
    env.pop("PINGAN_WORKER_KEY", None)
    log = tmp_path / "pingan.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    app = Pingan(proc, f"http://127.0.0.1:{api_port}", log)
    try:
        app.wait_for("the API", lambda: app.get("/healthz").status_code == 200, 60)
        app.login()
        yield app, server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        app.client.close()


def _parking_events(app: Pingan, zone: str) -> list[dict[str, Any]]:
    r = app.get("/api/events", type="illegal_parking", zone_id=zone)
    r.raise_for_status()
    return list(r.json()["items"])


@pytest.mark.rtsp
@pytest.mark.slow
def test_rtsp_camera_to_violation_on_api(pingan_run: tuple[Pingan, Any]) -> None:
    app, server = pingan_run

    # 1. the van on the fire lane becomes one violation with an evidence still
    events = app.wait_for("an illegal_parking event", lambda: _parking_events(app, "fire-lane-east"), 120)
    assert len(events) == 1, events
    event = app.get(f"/api/events/{events[0]['id']}").json()
    assert event["camera_id"] == "courtyard" and event["grid"] == "fangshan/xilu/test"
    assert event["dwell_s"] >= 6 and event["object"]["label"] == "vehicle"

    def evidence_stored() -> list[dict[str, Any]]:
        ev = app.get(f"/api/events/{events[0]['id']}").json()
        return [e for e in ev["evidence"] if e["kind"] == "scene" and e.get("stored", True)]

    stills = app.wait_for("evidence stills", evidence_stored, 30)
    still = stills[0]
    r = app.get(f"/api/events/{events[0]['id']}/evidence/{still['name']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(r.content).hexdigest() == still["sha256"]
    image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 768

    # 2. the camera dies: reported offline within stall_timeout_s + 2 s (+ the 2 s status interval)
    def camera_state() -> str:
        cams = {c["id"]: c for c in app.get("/api/cameras").json()}
        return str(cams["courtyard"]["state"])

    app.wait_for("camera running", lambda: camera_state() == "running", 30)
    server.kill()
    t_kill = time.monotonic()
    app.wait_for(
        "camera offline", lambda: camera_state() in ("stalled", "backoff", "connecting"), 4 + 2 + 2 + 1
    )
    assert time.monotonic() - t_kill <= 9.5
    server.start()
    t_back = time.monotonic()
    app.wait_for("camera back", lambda: camera_state() == "running", 10 + 2 + 1)
    assert time.monotonic() - t_back <= 13

    # 3. only pedestrians cross the square: no violation there; still one stay on the fire lane
    assert _parking_events(app, "no-parking-square") == []
    assert len(_parking_events(app, "fire-lane-east")) == 1

    # 4. the password shows nowhere
    cams_text = app.get("/api/cameras").text
    for secret in (PASSWORD, quote(PASSWORD, safe="")):
        assert secret not in cams_text
        assert secret not in app.tail()

    # 5. SIGTERM: everything stops within 10 s, exit 0
    app.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert app.proc.wait(15) == 0, app.tail()
    assert time.monotonic() - t0 <= 10
    log = app.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    for secret in (PASSWORD, quote(PASSWORD, safe="")):
        assert secret not in log
