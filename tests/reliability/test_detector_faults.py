"""Detector faults: a detector slower than the frame rate drops (and counts) frames with bounded latency and
flat memory; a stuck detector (never returns) is detected (``InferenceScheduler.stuck()``) and the supervisor
replaces its inference thread, so the cameras go on."""

from __future__ import annotations

import gc
import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Camera, parse_config
from pipeline.detections import Detections
from pipeline.inference import InferenceScheduler
from pipeline.protocols import Frame, FrameSource, SourceState, SourceStatus
from pipeline.redact import Redactor
from pipeline.supervisor import Supervisor
from tests.fakes import TWO_CAMERAS_CONFIG, MemorySink, SlowDetector

log = logging.getLogger(__name__)


class StuckOnceDetector(SlowDetector):
    """The ``stuck_on``-th call never returns (until ``release``); the others take ``delay_s``."""

    def __init__(self, delay_s: float, stuck_on: int) -> None:
        super().__init__(delay_s)
        self.stuck_on = stuck_on
        self.release = threading.Event()

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if self.calls + 1 == self.stuck_on:
            self.calls += 1
            self.release.wait()
            return [Detections.empty() for _ in images]
        return super().detect(images)


class PacedSource:
    """A live FrameSource at ``fps`` with random 64×48 images (the gate sees change every frame)."""

    def __init__(self, fps: float, stop: threading.Event) -> None:
        self.fps, self.stop = fps, stop
        self.frames_out = 0
        self._closed = threading.Event()
        self._rng = np.random.default_rng(0)

    def frames(self) -> Iterator[Frame]:
        t0 = time.monotonic()
        while not (self.stop.is_set() or self._closed.is_set()):
            self.frames_out += 1
            img = self._rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            yield Frame(img, ts=time.time(), index=self.frames_out)
            delay = t0 + self.frames_out / self.fps - time.monotonic()
            if delay > 0:
                self._closed.wait(delay)

    def status(self) -> SourceStatus:
        return SourceStatus(state=SourceState.RUNNING, since=0.0, frames=self.frames_out)

    def close(self) -> None:
        self._closed.set()


def _frame(i: int) -> Frame:
    return Frame(np.zeros((480, 640, 3), np.uint8), ts=1000.0 + i / 10, index=i)


def test_slow_detector_drops_and_counts_with_bounded_latency_and_flat_memory() -> None:
    """10 fps into a 5 fps detector for ~12 s: about half the frames dropped (counted), each result at most
    two detector calls old, and memory flat once warm (no queue grows)."""
    stop = threading.Event()
    det = SlowDetector(0.2)
    sched = InferenceScheduler({"m": det}, stop, threads=1)
    lat: list[float] = []
    submitted: dict[int, float] = {}
    sched.register("cam", ["m"], lambda f, d: lat.append(time.monotonic() - submitted[f.index]))
    sched.start()
    tracemalloc.start()
    try:
        n, mem = 120, []
        t0 = time.monotonic()
        for i in range(n):
            submitted[i] = time.monotonic()
            sched.submit("cam", _frame(i))  # each frame holds 0.9 MB: a growing queue would show at once
            if i % 20 == 19:
                gc.collect()
                mem.append(tracemalloc.get_traced_memory()[0])
            time.sleep(max(0.0, t0 + (i + 1) / 10 - time.monotonic()))
        deadline = time.monotonic() + 5
        while sched.latency_ms("cam") is None or det.calls + sched.dropped("cam") < n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        sched.join(3)
        tracemalloc.stop()
    dropped = sched.dropped("cam")
    assert det.calls + dropped == n, (det.calls, dropped)  # every frame either detected or counted dropped
    assert 0.3 * n <= dropped <= 0.7 * n, dropped
    # a result is at most: one call in progress + its own call (+ scheduling noise on a busy box)
    assert max(lat) < 4 * det.delay_s + 1.0, max(lat)
    growth = max(mem[1:]) - mem[1]
    assert growth < 5 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB: {mem}"
    log.info(
        "slow detector: %d of %d frames dropped, latency max %.2f s, memory growth %.1f MiB",
        dropped,
        n,
        max(lat),
        growth / 2**20,
    )


def test_stuck_detector_is_detected_and_its_thread_replaced() -> None:
    stop = threading.Event()
    det = StuckOnceDetector(0.01, stuck_on=3)
    sched = InferenceScheduler({"m": det}, stop, threads=1, stuck_after_s=0.5)
    seen: list[int] = []
    sched.register("cam", ["m"], lambda f, d: seen.append(f.index))
    sched.start()
    try:
        for i in range(5):
            sched.submit("cam", _frame(i))
            time.sleep(0.1)
        assert not sched.stuck()
        time.sleep(0.6)
        assert sched.stuck()
        assert sched.restart_stuck() == 1 and not sched.stuck()
        for i in range(5, 10):
            sched.submit("cam", _frame(i))
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while (not seen or seen[-1] != 9) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen and seen[-1] == 9, seen  # inference goes on after the restart
        late = len(seen)
        det.release.set()  # the stuck call returns at last: its result is thrown away
        time.sleep(0.2)
        assert len(seen) == late and seen == sorted(seen)
    finally:
        det.release.set()
        stop.set()
        sched.join(3)
    assert sched.restarts == 1


def test_supervisor_restarts_a_stuck_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.supervisor as supervisor_mod

    monkeypatch.setattr(supervisor_mod, "STATUS_EVERY_S", 0.2)
    cfg = parse_config(TWO_CAMERAS_CONFIG.format(data=tmp_path / "var"))
    stop = threading.Event()
    det = StuckOnceDetector(0.02, stuck_on=4)
    sources: list[PacedSource] = []

    def factory(camera: Camera, stop_: threading.Event) -> FrameSource:
        src = PacedSource(5.0, stop_)
        sources.append(src)
        return src

    sink = MemorySink()
    sup = Supervisor(
        cfg,
        list(cfg.cameras),
        stop,
        Redactor(),
        sink=sink,
        detectors={"vehicles": det},  # type: ignore[dict-item]
        source_factory=factory,
        plate_reading=False,
        stuck_after_s=1.0,
    )
    sup.start()
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 20
        while sup.scheduler.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        t_restart = time.monotonic()
        assert sup.scheduler.restarts == 1, "the stuck detector call was not detected"
        before = {w.camera.id: w.status().detections for w in sup.workers}
        time.sleep(2.0)
        after = {w.camera.id: w.status().detections for w in sup.workers}
        assert all(after[c] > before[c] for c in before), (before, after)  # both cameras detect again
        assert not sup.scheduler.stuck()
    finally:
        det.release.set()
        sup.shutdown(timeout_s=5)
    log.info("stuck detector (4th call) replaced %.1f s after start (stuck_after_s 1 s)", t_restart - t0)
