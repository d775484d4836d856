"""What the supervisor takes from the configuration for the shared detector, and what it reports of it."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import MAX_FRAME_AGE_S, Camera, parse_config
from pipeline.protocols import Frame, FrameSource, SourceState, SourceStatus
from pipeline.redact import Redactor
from pipeline.supervisor import Supervisor
from tests.fakes import TWO_CAMERAS_CONFIG, MemorySink, SlowDetector


class SilentSource:
    """Connected, no frames yet."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def frames(self) -> Iterator[Frame]:
        self.stop.wait()
        yield from ()

    def status(self) -> SourceStatus:
        return SourceStatus(state=SourceState.RUNNING, since=0.0)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("detector_yaml", "bound_s"),
    [
        ("", MAX_FRAME_AGE_S),
        ("detector: {max_frame_age_s: 0.4, behind_result_age_s: 5, behind_shed_share: 0.25}\n", 0.4),
        ("detector: {max_frame_age_s: null, behind_result_age_s: 5, behind_shed_share: 0.25}\n", math.inf),
    ],
)
def test_the_frame_age_bound_comes_from_the_detector_config(
    tmp_path: Path, detector_yaml: str, bound_s: float
) -> None:
    cfg = parse_config(TWO_CAMERAS_CONFIG.format(data=tmp_path / "var") + detector_yaml)
    stop = threading.Event()

    def factory(camera: Camera, stop_: threading.Event) -> FrameSource:
        return SilentSource(stop_)

    sup = Supervisor(
        cfg,
        list(cfg.cameras),
        stop,
        Redactor(),
        sink=MemorySink(),
        detectors={"vehicles": SlowDetector(0.0)},  # type: ignore[dict-item]
        source_factory=factory,
        plate_reading=False,
    )
    sup.start()
    try:
        assert sup.scheduler.max_age_s == bound_s
        if detector_yaml:  # and the behind verdict's bounds
            assert [(w.lag.late_s, w.lag.max_shed_share) for w in sup.workers] == [(5.0, 0.25)] * 2
        # the bound as admit applies it: a frame already older than it is not decoded
        assert sup.scheduler.admit("cam-a", age_s=0.3) is True
        assert sup.scheduler.admit("cam-a", age_s=0.5) is (bound_s > 0.5)
    finally:
        stop.set()
        sup.shutdown(timeout_s=5)


class TickingSource:
    """Live frames at ``fps``, stamped with their capture time on the wall clock."""

    def __init__(self, stop: threading.Event, fps: float) -> None:
        self.stop, self.fps = stop, fps

    def frames(self) -> Iterator[Frame]:
        i = 0
        while not self.stop.wait(1 / self.fps):
            yield Frame(np.zeros((40, 60, 3), np.uint8), time.time(), i)
            i += 1

    def status(self) -> SourceStatus:
        return SourceStatus(state=SourceState.RUNNING, since=0.0, keyframe_interval_s=2.0, decode="keyframes")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("delay_s", "behind"), [(0.0, False), (0.4, True)])
def test_cameras_the_detector_cannot_keep_up_with_are_reported_behind(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    delay_s: float,
    behind: bool,
) -> None:
    """Two cameras due 10 frames a second each: a detector taking 0.4 s a call serves ~1 in 8 of them."""
    monkeypatch.setattr("pipeline.lag.WARMUP_S", 0.0)  # judged from the start (the warm-up: test_lag)
    cfg = parse_config(TWO_CAMERAS_CONFIG.format(data=tmp_path / "var"))
    cameras = [c.model_copy(update={"static_gate": False}) for c in cfg.cameras]  # every frame is due
    stop = threading.Event()
    sink = MemorySink()
    sup = Supervisor(
        cfg,
        cameras,
        stop,
        Redactor(),
        sink=sink,
        detectors={"vehicles": SlowDetector(delay_s)},  # type: ignore[dict-item]
        source_factory=lambda camera, stop_: TickingSource(stop_, 10.0),
        plate_reading=False,
    )
    sup.start()
    try:
        sup.report_status()
        time.sleep(3.0)
        sup.report_status()
    finally:
        stop.set()
        sup.shutdown(timeout_s=5)
    last = dict(sink.statuses)  # each camera's latest report
    for cam in ("cam-a", "cam-b"):
        report = last[cam]
        assert report["behind"] is behind
        assert report["shed_share"] is not None
        assert (report["shed_share"] > 0.5) is behind
        assert report["result_age_ms"] is not None and 0 <= report["result_age_ms"] < 2000
        assert (report["keyframe_interval_s"], report["decode"]) == (2.0, "keyframes")  # the source's own
    assert ("detector behind on 2 of 2 camera(s)" in caplog.text) is behind


def test_falling_behind_is_logged_once_then_every_few_minutes_and_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.lag import Lag
    from pipeline.supervisor import LAG_REPEAT_S

    cfg = parse_config(TWO_CAMERAS_CONFIG.format(data=tmp_path / "var"))
    sup = Supervisor(cfg, list(cfg.cameras), threading.Event(), Redactor())
    late, fine = Lag(3.1, 0.4, True), Lag(0.5, 0.0, False)
    caplog.set_level("INFO", logger="pipeline.supervisor")
    for t in (0.0, 2.0, 4.0, LAG_REPEAT_S - 1, LAG_REPEAT_S + 1):  # behind at each status, for 5 minutes
        sup._log_lag({"cam-a": late, "cam-b": fine}, t)
    sup._log_lag({"cam-a": fine, "cam-b": fine}, LAG_REPEAT_S + 3)
    sup._log_lag({"cam-a": fine, "cam-b": fine}, LAG_REPEAT_S + 5)
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.supervisor"]
    assert said[0].startswith("detector behind on 1 of 2 camera(s) (cam-a): worst cam-a")
    assert "3.1 s after capture, 40% of due frames shed" in said[0]
    assert said[1].startswith(f"detector behind on 1 of 2 camera(s) for {LAG_REPEAT_S + 1:.0f} s")
    assert said[2:] == [f"detector keeping up with all cameras again after {LAG_REPEAT_S + 3:.0f} s"]
    # a figure the window cannot give yet (too few due frames) is left out, not printed as a placeholder
    caplog.clear()
    sup._log_lag({"cam-a": Lag(2.5, None, True)}, 2 * LAG_REPEAT_S)
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.supervisor"]
    assert "worst cam-a, results p95 2.5 s after capture; the box" in said[0]
