"""What the supervisor takes from the configuration when it builds the shared detector's scheduler."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

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
        ("detector: {max_frame_age_s: 0.4}\n", 0.4),
        ("detector: {max_frame_age_s: null}\n", math.inf),
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
        # the bound as admit applies it: a frame already older than it is not decoded
        assert sup.scheduler.admit("cam-a", age_s=0.3) is True
        assert sup.scheduler.admit("cam-a", age_s=0.5) is (bound_s > 0.5)
    finally:
        stop.set()
        sup.shutdown(timeout_s=5)
