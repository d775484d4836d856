"""Secrets: one camera password, run through an open failure (nothing listens), an authentication failure
(the server wants another password), decode errors and exceptions in a rule (both injected, their messages
carrying the camera URL with the password), in `pingan run --verbose` (all logging, DEBUG included, and every
traceback it prints) → the password, raw or percent-encoded, appears 0 times in the output, in
/api/cameras, in event payloads, or in /metrics (when there is one)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.reliability._pingan import PinganRun, camera_yaml

log = logging.getLogger(__name__)
PASSWORD = "Pa55:w@rd/%2F s3cr3t!"


@pytest.mark.rtsp
@pytest.mark.slow
def test_password_never_leaks(rtsp_server: Callable[..., Any], courtyard: Path, tmp_path: Path) -> None:
    good = rtsp_server({"courtyard": courtyard}, auth=("viewer", PASSWORD))
    other = rtsp_server({"courtyard": courtyard}, auth=("viewer", "another-password-entirely"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    url = "rtsp://viewer:${PINGAN_T_PASS}@127.0.0.1:{port}/courtyard"
    cameras = (
        camera_yaml("open-fails", url.replace("{port}", str(dead)), zones=False)
        + camera_yaml("auth-fails", url.replace("{port}", str(other.port)), zones=False)
        + camera_yaml("faulty", url.replace("{port}", str(good.port)))
    )
    encoded = quote(PASSWORD, safe="")
    resolved = f"rtsp://viewer:{encoded}@127.0.0.1:{good.port}/courtyard"
    raw = f"rtsp://viewer:{PASSWORD}@127.0.0.1:{good.port}/courtyard"
    run = PinganRun(
        tmp_path,
        cameras,
        args=["tests.reliability._procs", "run-faulty"],
        run_opts=("--verbose",),
        env={"PINGAN_T_PASS": PASSWORD, "PINGAN_T_URL": f"{resolved} ({raw})"},
    )
    try:
        run.start()

        def all_faults_seen() -> bool:
            cams = {c["id"]: c for c in run.get("/api/cameras")}
            text = run.text()
            return (
                "connection refused" in (cams["open-fails"].get("reason") or "")
                and "authentication failed" in (cams["auth-fails"].get("reason") or "")
                and cams["faulty"]["frames"] > 0
                and "rule failed on a frame" in text
                and "decode error" in text
            )

        run.wait_for("every fault to happen and be reported", all_faults_seen, 150)
        # camera_offline events for the two dead cameras, with their reasons in the payload
        run.wait_for(
            "camera_offline events", lambda: run.get("/api/events", type="camera_offline")["items"], 90
        )
        outputs = {"/api/cameras": json.dumps(run.get("/api/cameras"), ensure_ascii=False)}
        events = run.get("/api/events", limit=500)["items"]
        outputs["/api/events"] = json.dumps(events, ensure_ascii=False)
        for ev in events:
            outputs[f"/api/events/{ev['id']}"] = json.dumps(
                run.get(f"/api/events/{ev['id']}"), ensure_ascii=False
            )
        metrics = run.client.get("/metrics")  # as admin
        assert metrics.status_code in (200, 404), metrics.status_code  # 404: an API without /metrics
        if metrics.status_code == 200:
            assert "faulty" in metrics.text  # per-camera series, with the camera's state
            outputs["/metrics"] = metrics.text
        rc, _ = run.terminate()
        assert rc == 0, run.text()[-3000:]
    finally:
        run.close()
    outputs["logs"] = run.text()
    assert "Traceback" in outputs["logs"]  # the rule's exception was logged with its traceback …
    assert "***" in outputs["logs"]  # … and masked
    forms = {PASSWORD, encoded, quote(PASSWORD), "Pa55", "s3cr3t"}
    leaks = {(where, form) for where, text in outputs.items() for form in forms if form in text}
    assert not leaks, leaks
    log.info(
        "secrets: password absent from %d outputs (%d bytes of logs)", len(outputs), len(outputs["logs"])
    )


def test_raw_password_with_at_and_slash_inside_a_url_is_masked_whole() -> None:
    """Masking URL userinfo before known secrets cut 'Pa55:w@rd/…' at its '@': the tail leaked."""
    from pipeline.redact import Redactor

    r = Redactor([PASSWORD])
    for text in (
        f"rtsp://viewer:{PASSWORD}@127.0.0.1:554/x",
        f"open failed: 'rtsp://viewer:{quote(PASSWORD, safe='')}@h/x'",
        f"password was {PASSWORD}.",
    ):
        out = r.redact(text)
        assert all(part not in out for part in ("Pa55", "s3cr3t", "rd/%2F")), out
