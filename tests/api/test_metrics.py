"""GET /metrics: Prometheus text format; admins or the metrics token only; per camera figures from the latest
status report; events by type/state/disposition; no URLs or secrets in labels."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from api.app import create_app
from api.settings import settings_from_config
from pipeline.config import parse_config
from tests.fixtures.api import WORKER, TestClient, make_event, make_settings

TOKEN = "metrics-token-0123456789abcdef"
SAMPLE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$')


@pytest.fixture
def client(tmp_path, api_users):
    settings = make_settings(tmp_path, metrics_token=SecretStr(TOKEN))
    with TestClient(create_app(settings)) as c:
        yield c


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, line
        name, labels = m.group(1), m.group(2) or ""
        pairs = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', labels))
        out[(name, pairs)] = float(m.group(4))
    return out


def val(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def test_metrics_figures(client, auth_headers):
    status = {
        "state": "running", "fps": 1.5, "frames": 400, "dropped": 3, "reconnects": 2,
        "detections": 120, "gated": 280, "undecoded": 90, "detector_ms": 38.5, "outbox_depth": 4,
        "evidence_state": "backoff",
        "reason": "rtsp://admin:hunter2@10.0.0.5/stream",
    }  # fmt: skip
    assert client.put("/api/cameras/gate-east/status", json=status, headers=WORKER).status_code == 204
    a, b = make_event(), make_event(type="bin_overflow", camera_id="bins-west", zone_id="station-1")
    for ev in (a, b):
        assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
    closed = dict(b, state="closed", seq=1, ended_at=b["updated_at"])
    assert client.post("/api/events", json=closed, headers=WORKER).status_code == 200
    r = client.post(
        f"/api/events/{a['id']}/disposition", json={"action": "false_alarm"}, headers=auth_headers("op")
    )
    assert r.status_code == 200

    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "hunter2" not in r.text and "rtsp://" not in r.text and TOKEN not in r.text
    s = parse(r.text)
    assert val(s, "pingan_camera_up", camera="gate-east") == 0  # its main stream (evidence) is down
    assert val(s, "pingan_camera_main_stream_up", camera="gate-east") == 0
    assert ("pingan_camera_main_stream_up", frozenset({("camera", "lot-north")})) not in s
    assert val(s, "pingan_camera_up", camera="lot-north") == 0  # never reported
    assert val(s, "pingan_camera_fps", camera="gate-east") == 1.5
    assert val(s, "pingan_camera_frames_total", camera="gate-east") == 400
    assert val(s, "pingan_camera_dropped_frames_total", camera="gate-east") == 3
    assert val(s, "pingan_camera_gated_frames_total", camera="gate-east") == 280
    assert val(s, "pingan_camera_undecoded_keyframes_total", camera="gate-east") == 90
    assert val(s, "pingan_camera_detections_total", camera="gate-east") == 120
    assert val(s, "pingan_camera_detector_latency_seconds", camera="gate-east") == pytest.approx(0.0385)
    assert val(s, "pingan_camera_outbox_depth", camera="gate-east") == 4
    assert val(s, "pingan_camera_reconnects_total", camera="gate-east") == 2
    assert ("pingan_camera_outbox_depth", frozenset({("camera", "lot-north")})) not in s  # not reported
    assert ("pingan_camera_behind", frozenset({("camera", "gate-east")})) not in s  # not reported either
    assert ("pingan_camera_decodes_every_frame", frozenset({("camera", "gate-east")})) not in s

    behind = dict(status, evidence_state="running", result_age_ms=2600, shed_share=0.25, behind=True)
    behind |= {"keyframe_interval_s": 4.0, "decode": "every_frame"}
    assert client.put("/api/cameras/gate-east/status", json=behind, headers=WORKER).status_code == 204
    s = parse(client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text)
    assert val(s, "pingan_camera_up", camera="gate-east") == 1  # late, but running
    assert val(s, "pingan_camera_behind", camera="gate-east") == 1
    assert val(s, "pingan_camera_result_age_seconds", camera="gate-east") == pytest.approx(2.6)
    assert val(s, "pingan_camera_shed_ratio", camera="gate-east") == 0.25
    assert val(s, "pingan_camera_keyframe_interval_seconds", camera="gate-east") == 4.0
    assert val(s, "pingan_camera_decodes_every_frame", camera="gate-east") == 1
    assert val(s, "pingan_events", type="illegal_parking", state="open") == 1
    assert val(s, "pingan_events", type="bin_overflow", state="closed") == 1
    assert val(s, "pingan_event_dispositions", type="illegal_parking", disposition="false_alarm") == 1
    assert val(s, "pingan_event_dispositions", type="bin_overflow", disposition="new") == 1
    assert val(s, "pingan_sse_subscribers") == 0
    assert "# TYPE pingan_camera_frames_total counter" in r.text
    assert "pingan_mqtt_connected" not in r.text  # MQTT is not configured


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ("worker", 403),
        ("op", 403),
        ("police", 403),
        ("admin", 200),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ],
)
def test_metrics_access(client, auth_headers, headers, status):
    if isinstance(headers, str):
        headers = auth_headers(headers)
    assert client.get("/metrics", headers=headers).status_code == status


def test_no_token_configured_means_admins_only(api_client, auth_headers):
    assert api_client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert api_client.get("/metrics", headers=auth_headers("admin")).status_code == 200


def test_token_from_config_or_env(tmp_path, monkeypatch):
    text = f"""
storage: {{data_dir: {tmp_path}}}
api: {{metrics_token: "${{METRICS_SECRET}}"}}
cameras:
  - {{id: cam, name: cam, source: {{path: {tmp_path / "x.mp4"}}}, zones: []}}
"""
    monkeypatch.setenv("METRICS_SECRET", "from-config-0123456789")
    monkeypatch.delenv("PINGAN_METRICS_TOKEN", raising=False)
    cfg = parse_config(text)
    s = settings_from_config(cfg)
    assert s.metrics_token is not None and s.metrics_token.get_secret_value() == "from-config-0123456789"
    monkeypatch.setenv("PINGAN_METRICS_TOKEN", "from-env-0123456789abc")
    s = settings_from_config(cfg)
    assert s.metrics_token is not None and s.metrics_token.get_secret_value() == "from-env-0123456789abc"
