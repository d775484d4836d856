"""The shared scheduler: drop-oldest per camera, frame order per camera, bounded latency when slow."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from pipeline.detections import VEHICLE, Detections
from pipeline.inference import InferenceScheduler, merge
from pipeline.protocols import Frame


class SlowDetector:
    name = "slow"
    sha256 = None

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.calls += 1
        time.sleep(self.delay_s)
        return [Detections(np.array([[1, 2, 30, 40]]), np.array([0.9]), np.array([VEHICLE])) for _ in images]


class FailingDetector(SlowDetector):
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        raise RuntimeError("model exploded")


def _frame(i: int) -> Frame:
    return Frame(np.zeros((8, 8, 3), np.uint8), ts=1000.0 + i, index=i)


def test_slow_detector_drops_oldest_and_keeps_order() -> None:
    stop = threading.Event()
    det = SlowDetector(0.05)
    sched = InferenceScheduler({"m": det}, stop, threads=2)
    seen: list[int] = []
    lag: list[float] = []
    sched.register("cam", ["m"], lambda f, d: (seen.append(f.index), lag.append(time.monotonic())))
    sched.start()
    try:
        submitted_at = {}
        for i in range(60):  # 200 fps into a 20 fps detector
            submitted_at[i] = time.monotonic()
            sched.submit("cam", _frame(i))
            time.sleep(0.005)
        deadline = time.monotonic() + 5
        while (not seen or seen[-1] != 59) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        sched.join(2)
    assert seen == sorted(seen), "one camera's frames must be handled in order"
    assert seen[-1] == 59, "the newest frame is never the one dropped"
    assert sched.dropped("cam") == 60 - len(seen)
    assert sched.dropped("cam") > 30
    # latency of handled frames stays around one detector call, not a growing queue
    worst = max(lag[k] - submitted_at[i] for k, i in enumerate(seen))
    assert worst < 0.5


def test_failing_detector_does_not_stop_other_cameras() -> None:
    stop = threading.Event()
    sched = InferenceScheduler({"bad": FailingDetector(0), "good": SlowDetector(0)}, stop, threads=1)
    got = threading.Event()
    sched.register("broken", ["bad"], lambda f, d: None)
    sched.register("fine", ["good"], lambda f, d: got.set())
    sched.start()
    try:
        sched.submit("broken", _frame(0))
        sched.submit("fine", _frame(0))
        assert got.wait(3)
    finally:
        stop.set()
        sched.join(2)


def test_merge_concatenates_models() -> None:
    a = Detections(np.array([[0, 0, 1, 1]]), np.array([0.5]), np.array([0]))
    b = Detections(np.array([[2, 2, 3, 3], [4, 4, 5, 5]]), np.array([0.6, 0.7]), np.array([3, 4]))
    m = merge([a, Detections.empty(), b])
    assert len(m) == 3 and list(m.class_id) == [0, 3, 4]
    assert len(merge([])) == 0
