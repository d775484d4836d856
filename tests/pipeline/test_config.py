"""cameras.yaml validation: every error names the field path and the YAML line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import (
    MAX_FRAME_AGE_S,
    ConfigError,
    FileSource,
    RtspSource,
    ZoneType,
    config_schema,
    parse_config,
)
from pipeline.lag import LATE_S, SHED_SHARE

GOOD = """\
site:
  id: haiyi
  timezone: Asia/Shanghai
cameras:
  - id: gate-east
    name: 东门
    source:
      url: rtsp://${CAM_USER}:${CAM_PASS}@127.0.0.1:8554/gate
    detect_fps: 1
    zones:
      - id: fire-lane-3
        type: fire_lane
        polygon: [[10, 10], [200, 10], [200, 100], [10, 100]]
        schedule:
          - days: [mon, tue]
            start: 07:30
            end: "22:00"
  - id: bins-north
    name: North bins
    source: {path: demo.mp4, loop: true}
    models: bins
    zones:
      - id: station-1
        type: bin_station
        polygon: [[0, 0], [50, 0], [50, 50]]
        bin_ids: [FS-0001, FS-0002]
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.setenv("CAM_PASS", "p@ss/word")


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(GOOD)
    cam = cfg.camera("gate-east")
    assert isinstance(cam.source, RtspSource)
    assert cam.source.resolved() == "rtsp://admin:p%40ss%2Fword@127.0.0.1:8554/gate"
    assert "p@ss/word" in cam.source.secrets() and "p%40ss%2Fword" in cam.source.secrets()
    zone = cam.zones[0]
    assert zone.type is ZoneType.FIRE_LANE and zone.dwell == 60.0
    assert zone.polygon[0] == (10.0, 10.0)
    assert zone.schedule and zone.schedule[0].start == time(7, 30) and zone.schedule[0].end == time(22, 0)
    bins = cfg.camera("bins-north")
    assert isinstance(bins.source, FileSource) and bins.models == ["bins"]
    assert bins.zones[0].labels == ["bin_overflow", "litter"]


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.messages


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    name: 东门\n", "", "cameras[0].name: required field is missing (line 5)"),
        (
            "polygon: [[0, 0], [50, 0], [50, 50]]",
            "polygon: [[0, 0], [50, 0]]",
            "cameras[1].zones[0].polygon: needs ≥ 3 points (line 25)",
        ),
        ("    detect_fps: 1\n", "    detect_fps: 1\n    fps: 3\n", "cameras[0].fps: unknown field (line 10)"),
        (
            "url: rtsp://${CAM_USER}",
            "url: http://${CAM_USER}",
            "cameras[0].source.url: must be an rtsp:// or rtsps:// URL (line 8)",
        ),
        ("type: fire_lane", "type: fire_lanes", "cameras[0].zones[0].type: Input should be"),
        (
            "polygon: [[0, 0], [50, 0], [50, 50]]",
            "polygon: [[0, 0], [50, 0], [100, 0]]",
            "cameras[1].zones[0].polygon: has no area",
        ),
        (
            "timezone: Asia/Shanghai",
            "timezone: Mars/Base",
            "site.timezone: unknown time zone 'Mars/Base' (line 3)",
        ),
        ("  - id: bins-north", "  - id: gate-east", "cameras: camera ids repeat: gate-east (line 4)"),
        ("detect_fps: 1", "detect_fps: -1", "cameras[0].detect_fps: Input should be greater than 0 (line 9)"),
        (
            "    detect_fps: 1\n",
            "    detect_fps: 1\n    min_detect_fps: 2\n",
            "cameras[0].min_detect_fps: 2 is above detect_fps (1)",
        ),
    ],
)
def test_bad_field_names_path_and_line(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    messages = _errors(GOOD.replace(old, new, 1))
    assert any(m.startswith(expected) for m in messages), messages


def test_min_detect_fps_defaults_to_half_of_detect_fps() -> None:
    """Keyframes alone may halve a camera's rate by default (a 2 s I-frame interval at 1 det/s), no more: a
    camera asked for 5 det/s on a 1 s GOP still decodes every frame for them."""
    cam = parse_config(GOOD).camera("gate-east")
    assert (cam.min_detect_fps, cam.keyframe_floor_fps()) == (None, 0.5)
    fast = parse_config(GOOD.replace("    detect_fps: 1\n", "    detect_fps: 5\n", 1)).camera("gate-east")
    assert fast.keyframe_floor_fps() == 2.5
    exact = GOOD.replace("    detect_fps: 1\n", "    detect_fps: 1\n    min_detect_fps: 1\n", 1)
    assert parse_config(exact).camera("gate-east").keyframe_floor_fps() == 1.0


def test_detector_batch_is_bounded_and_named() -> None:
    assert parse_config(GOOD).detector.max_batch is None  # unset: chosen by provider at start-up
    assert parse_config(GOOD).detector.inference_threads == 2  # what the benchmarks measure
    assert parse_config(GOOD + "detector: {max_batch: 16}\n").detector.max_batch == 16
    line = GOOD.count("\n") + 1
    messages = _errors(GOOD + "detector:\n  max_batch: 0\n")
    want = f"detector.max_batch: Input should be greater than or equal to 1 (line {line + 1})"
    assert any(m.startswith(want) for m in messages), messages


def test_frame_age_bound_is_positive_or_off() -> None:
    assert parse_config(GOOD).detector.max_frame_age_s == MAX_FRAME_AGE_S
    assert parse_config(GOOD + "detector: {max_frame_age_s: 2.5}\n").detector.max_frame_age_s == 2.5
    assert parse_config(GOOD + "detector: {max_frame_age_s: null}\n").detector.max_frame_age_s is None
    line = GOOD.count("\n") + 1
    messages = _errors(GOOD + "detector:\n  max_frame_age_s: 0\n")
    want = f"detector.max_frame_age_s: Input should be greater than 0 (line {line + 1})"
    assert any(m.startswith(want) for m in messages), messages


def test_behind_bounds_default_to_the_benchmarks_and_are_checked() -> None:
    assert (
        parse_config(GOOD).detector.behind_result_age_s,
        parse_config(GOOD).detector.behind_shed_share,
    ) == (
        LATE_S,
        SHED_SHARE,
    )
    line = GOOD.count("\n") + 1
    messages = _errors(GOOD + "detector:\n  behind_result_age_s: 5\n  behind_shed_share: 1.5\n")
    want = f"detector.behind_shed_share: Input should be less than 1 (line {line + 2})"
    assert any(m.startswith(want) for m in messages), messages


def test_missing_env_placeholder_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAM_PASS")
    messages = _errors(GOOD)
    assert messages == ["cameras[0].source.url: environment variable CAM_PASS is not set (line 8)"]


def test_yaml_syntax_error_has_line() -> None:
    messages = _errors(GOOD.replace("    detect_fps: 1", "    detect_fps: [1"))
    assert "line" in messages[0] and "not valid YAML" in messages[0]


def test_duplicate_key_is_refused() -> None:
    messages = _errors(GOOD.replace("    detect_fps: 1\n", "    detect_fps: 1\n    detect_fps: 2\n"))
    assert messages[0].startswith("cameras[0].detect_fps: key appears twice (line 10)")


@pytest.mark.parametrize("text", ["", "[]", "cameras: 3", "- a\n- b"])
def test_degenerate_documents_give_messages(text: str) -> None:
    assert _errors(text)


def test_schema_is_json() -> None:
    schema = config_schema()
    assert "cameras" in schema["properties"]
    json.dumps(schema)


def test_repo_demo_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PINGAN_DEMO_USER="demo", PINGAN_DEMO_PASSWORD="demo-password")
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "check-config", str(root / "cameras.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr


def test_check_config_cli_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD.replace("polygon: [[0, 0], [50, 0], [50, 50]]", "polygon: [[0, 0]]"), encoding="utf-8"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"CAM_USER": "u", "CAM_PASS": "secretpw", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2
    assert "cameras[1].zones[0].polygon: needs ≥ 3 points (line 25)" in out.stderr
    assert "Traceback" not in out.stderr


def test_detect_source_is_a_second_stream_whose_secrets_are_masked(tmp_path: Path) -> None:
    from pipeline.cli import _logging
    from pipeline.config import load_config

    sub = "    detect_fps: 1\n"
    text = GOOD.replace(
        sub, "    detect_source: {url: 'rtsp://${CAM_USER}:${CAM_PASS}@127.0.0.1:8554/gate-sub'}\n" + sub, 1
    ).replace(
        "source: {path: demo.mp4, loop: true}", "source: {path: demo.mp4}\n    detect_source: {path: sub.mp4}"
    )
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    cfg = load_config(path)
    gate, bins = cfg.camera("gate-east"), cfg.camera("bins-north")
    assert isinstance(gate.detect_source, RtspSource) and gate.detect_source.resolved().endswith("/gate-sub")
    assert isinstance(bins.detect_source, FileSource) and bins.detect_source.path == tmp_path / "sub.mp4"
    assert [type(s) for s in gate.streams()] == [RtspSource, RtspSource]
    only_sub = text.replace("${CAM_PASS}@127.0.0.1:8554/gate\n", "open@127.0.0.1:8554/gate\n", 1)
    assert "${CAM_PASS}" in only_sub.split("detect_source")[1]  # the password is in the sub-stream's URL only
    redactor: Any = _logging(parse_config(only_sub))
    assert redactor.redact("pw p@ss/word, encoded p%40ss%2Fword") == "pw ***, encoded ***"
    bad = _errors(text.replace("{path: sub.mp4}", "{path: sub.mp4, fps: 3}"))
    assert bad == ["cameras[1].detect_source.fps: unknown field (line 22)"]
