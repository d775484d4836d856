"""Shutdown: SIGTERM to `pingan run` with 4 cameras running (4 RTSP paths of one GStreamer server) →
everything stops and the outbox is flushed within 10 s, exit code 0, no process left in its session, no
ResourceWarning (reported: PYTHONWARNINGS=always::ResourceWarning) and no traceback in its output."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability._pingan import PinganRun, camera_yaml

log = logging.getLogger(__name__)


@pytest.mark.rtsp
@pytest.mark.slow
def test_sigterm_with_4_cameras(rtsp_server: Callable[..., Any], courtyard: Path, tmp_path: Path) -> None:
    names = [f"cam{i}" for i in range(1, 5)]
    srv = rtsp_server(dict.fromkeys(names, courtyard))
    cameras = "".join(camera_yaml(n, srv.url(n)) for n in names)
    run = PinganRun(tmp_path, cameras, env={"PYTHONWARNINGS": "always::ResourceWarning"})
    try:
        run.start()

        def all_running() -> bool:
            cams = run.get("/api/cameras")
            return len(cams) == 4 and all(c["state"] == "running" and c["frames"] > 0 for c in cams)

        run.wait_for("4 cameras running", all_running, 120)
        # let the parking rule open its events (dwell 6 s), so the outbox has work at the signal
        run.wait_for("a violation", lambda: run.get("/api/events", type="illegal_parking")["items"], 90)
        before = run.session_pids()
        assert run.proc.pid in before
        rc, took = run.terminate(timeout_s=30)
        time.sleep(0.5)
        left = run.session_pids()
    finally:
        run.close()
    out = run.text()
    assert rc == 0, out[-3000:]
    assert took <= 10.0, f"stopped in {took:.1f} s"
    assert not left, f"processes left in pingan's session: {left}"
    assert "ResourceWarning" not in out and "Traceback" not in out, out[-3000:]
    assert "stopped" in out  # the CLI's last word: supervisor, outbox and API went down in order
    with sqlite3.connect(run.data / "outbox.db") as db:
        pending = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert pending == 0, f"{pending} messages left in the outbox"
    log.info(
        "SIGTERM with 4 cameras: exit 0 in %.1f s, outbox empty, %d session processes gone", took, len(before)
    )
