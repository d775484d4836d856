"""pipeline/probe.py and ``pingan probe``: what each camera sends, against a real RTSP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pipeline.config import Camera
from pipeline.probe import plan

PASSWORD = "pr0be:p@ss/%z"


def camera(**kw: Any) -> Camera:
    return Camera.model_validate({"id": "c", "name": "c", "source": {"path": "x.mp4"}, **kw})


@pytest.mark.parametrize(
    ("settings", "key_iv", "want"),
    [
        ({}, 1.0, ("keyframes", 1.0)),  # keyframes at the rate asked for
        ({"detect_fps": 0.5}, 1.0, ("keyframes", 0.5)),  # every other one
        ({}, 2.0, ("keyframes", 0.5)),  # a 2 s GOP: down to the default floor, half of detect_fps
        ({"min_detect_fps": 1}, 2.0, ("every_frame", 1.0)),  # the full rate asked for, whatever it costs
        ({}, 4.0, ("every_frame", 1.0)),  # below the floor
        ({"detect_fps": 2}, 1.0, ("keyframes", 1.0)),  # half of 2 det/s
        ({"detect_fps": 4}, 1.0, ("every_frame", 4.0)),
        ({}, None, (None, None)),  # one keyframe seen: unknown
    ],
)
def test_plan_matches_the_readers_rule(settings: dict[str, Any], key_iv: float | None, want: Any) -> None:
    assert plan(camera(**settings), key_iv) == want


@pytest.mark.rtsp
def test_probe_reports_each_stream_and_the_decoding_it_gets(
    tmp_path: Path, clip_factory: Callable[..., Path], rtsp_server: Callable[..., Any]
) -> None:
    """Three cameras as an installer would list them: a 1 s GOP, a 4 s GOP (every frame decoded for 1
    det/s), and one with a wrong password, reported masked; the others are probed all the same, exit 1."""
    one = clip_factory("gop1s_12s", seconds=12, fps=10, size=(320, 180), gop=10)
    four = clip_factory("gop4s_12s", seconds=12, fps=10, size=(320, 180), gop=40)
    srv = rtsp_server({"one": one, "four": four}, auth=("viewer", PASSWORD))
    base = f"rtsp://viewer:${{PROBE_PW}}@127.0.0.1:{srv.port}"
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(
        f"""site: {{id: probe-test, timezone: Asia/Shanghai}}
storage: {{data_dir: {tmp_path / "var"}}}
cameras:
  - {{id: gate, name: gate, source: {{url: "{base}/one"}}, detect_fps: 1}}
  - {{id: lane, name: lane, source: {{url: "{base}/four"}}, detect_fps: 1}}
  - {{id: sub, name: sub, source: {{url: "{base}/four"}}, detect_source: {{url: "{base}/one"}}}}
  - {{id: bad, name: bad, source: {{url: "rtsp://viewer:${{PROBE_BAD}}@127.0.0.1:{srv.port}/one"}}}}
""",
        encoding="utf-8",
    )
    env = os.environ | {"PROBE_PW": PASSWORD, "PROBE_BAD": "wr0ng:pw/%q"}
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "probe", "--config", str(cfg), "--seconds", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 1, out.stderr
    rows = {(r["camera"], r["stream"]): r for r in map(json.loads, out.stdout.splitlines())}
    assert list(rows) == [  # in the config's order, the main stream first
        ("gate", "source"),
        ("lane", "source"),
        ("sub", "source"),
        ("sub", "detect_source"),
        ("bad", "source"),
    ]
    gate, lane, bad = rows["gate", "source"], rows["lane", "source"], rows["bad", "source"]
    assert gate["ok"] and gate["codec"] == "h264"
    assert (gate["width"], gate["height"], gate["fps"]) == (320, 180, 10)
    assert gate["keyframe_interval_s"] == pytest.approx(1.0, abs=0.05) and gate["b_frames"] is False
    assert (gate["decode"], gate["detections_per_s"]) == ("keyframes", 1.0)
    assert gate["bitrate_kbps"] > 0
    assert lane["keyframe_interval_s"] == pytest.approx(4.0, abs=0.1)
    assert (lane["decode"], lane["detections_per_s"]) == ("every_frame", 1.0)
    # a camera detecting on its sub-stream only demuxes its main stream (stills): its GOP costs nothing there
    main, sub = rows["sub", "source"], rows["sub", "detect_source"]
    assert main["decode"] == "evidence_only" and "detections_per_s" not in main
    assert (sub["decode"], sub["detections_per_s"]) == ("keyframes", 1.0)
    assert not bad["ok"] and "authentication failed" in bad["error"]
    for secret in (PASSWORD, quote(PASSWORD, safe=""), "wr0ng:pw/%q", quote("wr0ng:pw/%q", safe="")):
        assert secret not in out.stdout and secret not in out.stderr
    assert gate["url"] == f"rtsp://***:***@127.0.0.1:{srv.port}/one"  # masked, not dropped


@pytest.mark.parametrize(
    ("gop", "settings"),
    [
        (10, {}),  # a keyframe a second: keyframes at 1/s
        (15, {}),  # every 1.5 s: keyframes alone, 0.67/s
        (20, {}),  # every 2 s: keyframes alone, 0.5/s (the default floor)
        (20, {"min_detect_fps": 1}),  # held to 1/s: frames between keyframes, GOP tails left out
        (40, {}),  # every 4 s: below the floor
        (10, {"detect_fps": 4}),  # above the keyframe rate, floor 2: every frame
    ],
)
def test_the_readers_deliver_what_the_probe_plans(
    clip_factory: Callable[..., Path], gop: int, settings: dict[str, Any]
) -> None:
    """``plan`` (what ``pingan probe`` tells an installer) against a reader on the same stream: the same
    decoding, the rate it names, and every delivered picture the one a plain decode shows at that time."""
    import av
    import numpy as np

    from pipeline.sources import Source

    clip = clip_factory(f"plan_gop{gop}_12s", seconds=12, fps=10, size=(320, 180), gop=gop)
    cam = camera(**settings)
    decode, rate = plan(cam, gop / 10)
    with av.open(str(clip)) as c:
        truth = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    src = Source(
        clip, detect_fps=cam.detect_fps, min_detect_fps=cam.keyframe_floor_fps(), loop=False, realtime=False
    )
    with src:
        frames = list(src.frames())
        st = src.status()
    assert st.decode == decode
    # from the second keyframe on (the first GOP is read before the interval is known)
    steady = [f for f in frames if f.ts - frames[0].ts >= gop / 10]
    got = (len(steady) - 1) / (steady[-1].ts - steady[0].ts)
    assert got == pytest.approx(rate, rel=0.1), [round(f.ts - frames[0].ts, 2) for f in frames]
    t0 = frames[0].ts
    for f in frames:
        want = truth[round((f.ts - t0) * 10)]
        assert np.abs(f.image.astype(np.int16) - want.astype(np.int16)).mean() < 2.0, round(f.ts - t0, 2)
