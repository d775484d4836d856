"""The shared scheduler: drop-oldest per camera, frame order per camera, bounded latency when slow."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from pipeline.detections import VEHICLE, Detections
from pipeline.inference import InferenceScheduler, merge
from pipeline.protocols import Frame
from tests.fakes import SlowDetector


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


class JitterDetector(SlowDetector):
    """Random short delays (seeded), so calls end in an order unlike the one they started in; counts each
    camera's frames between the start of their detection and the end of their ``done`` (the camera is the
    image's pixel value)."""

    def __init__(self, seed: int, cameras: int) -> None:
        super().__init__(0.0)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.in_flight = [0] * cameras
        self.overlaps: list[int] = []

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        with self._lock:
            self.delay_s = self._rng.uniform(0.0, 0.004)
            for image in images:
                cam = int(image[0, 0, 0])
                self.in_flight[cam] += 1
                if self.in_flight[cam] > 1:
                    self.overlaps.append(cam)
        return super().detect(images)

    def finished(self, cam: int) -> None:
        with self._lock:
            self.in_flight[cam] -= 1


@pytest.mark.parametrize("max_batch", [1, 4])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_many_cameras_on_their_own_threads_keep_every_invariant(seed: int, max_batch: int) -> None:
    # 24 camera threads submit at once into 3 inference threads, with no lock shared by all cameras on the
    # frame path (the one Condition it replaced starved everyone on an overloaded box). For every camera:
    # never two of its frames in detection at once, results in frame order, its newest frame handled, and
    # every frame either handled or counted as dropped; with batches across cameras as without.
    stop = threading.Event()
    n_cams, frames = 24, 40
    det = JitterDetector(seed, n_cams)
    sched = InferenceScheduler({"m": det}, stop, threads=3, max_batch=max_batch)
    seen: list[list[int]] = [[] for _ in range(n_cams)]

    def done_for(k: int) -> Callable[[Frame, Detections], None]:
        def done(frame: Frame, _dets: Detections) -> None:
            time.sleep(0.0005)
            seen[k].append(frame.index)
            det.finished(k)

        return done

    for k in range(n_cams):
        sched.register(f"cam{k}", ["m"], done_for(k))
    sched.start()
    go = threading.Barrier(n_cams)

    def camera(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        go.wait()
        for i in range(frames):
            sched.submit(f"cam{k}", Frame(np.full((4, 4, 3), k, np.uint8), ts=1000.0 + i, index=i))
            time.sleep(rng.uniform(0, 0.002))

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(n_cams)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(not s or s[-1] != frames - 1 for s in seen):
            time.sleep(0.01)
    finally:
        stop.set()
        sched.join(2)
    assert not det.overlaps, f"cameras with two frames in detection at once: {sorted(set(det.overlaps))}"
    for k in range(n_cams):
        assert seen[k] == sorted(seen[k]) and len(set(seen[k])) == len(seen[k]), k
        assert seen[k][-1] == frames - 1, f"cam{k}: its newest frame was never handled"
        assert len(seen[k]) + sched.dropped(f"cam{k}") == frames, (k, len(seen[k]), sched.dropped(f"cam{k}"))
    assert sched.latency_ms("cam0") is not None


def test_admit_sheds_decodes_only_while_the_detector_stays_behind() -> None:
    # A camera whose last frame still waits is told not to decode the next one only once most due frames
    # have found their camera's frame waiting (overload), and is told yes again once that has passed.
    import pipeline.inference as inference

    sched = InferenceScheduler({"m": SlowDetector(0.0)}, threading.Event())  # not started: frames stay
    for cam in ("busy", "idle"):
        sched.register(cam, ["m"], lambda f, d: None)
    sched.submit("busy", _frame(0))
    answers = [sched.admit("busy") for _ in range(200)]
    flipped = answers.index(False)
    assert all(answers[:flipped]) and not any(answers[flipped:])  # near capacity: replace, keep the rate
    assert sched.pressure() > inference.PRESSURE_ON and sched.behind
    assert all(sched.admit("idle") for _ in range(5))  # nothing of its own waits: always decode
    while sched.pressure() > inference.PRESSURE_OFF:
        assert sched.behind  # no flapping while the pressure is between the two marks
        assert sched.admit("idle")
    assert sched.admit("idle") and not sched.behind
    assert sched.admit("busy")  # back under: a waiting frame is replaced again


class PacedDetector:
    """Takes ``delay_s`` a call, then holds while ``go`` is clear: the test decides what stays queued."""

    name, sha256 = "paced", None

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.go, self.entered = threading.Event(), threading.Event()
        self.go.set()
        self.calls = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.calls += 1
        self.entered.set()
        time.sleep(self.delay_s)
        self.go.wait(5)
        return [Detections.empty() for _ in images]


def test_admit_keeps_out_frames_the_detector_would_take_too_late() -> None:
    # A due frame is decoded only if it will still be fresh when an inference thread takes it: its age now
    # plus the wait behind the frames already queued (their count × a frame's recent detection time ÷
    # threads) within max_age_s. Past capacity every camera's frame used to queue behind every other's.
    det, stop = PacedDetector(0.1), threading.Event()
    sched = InferenceScheduler({"m": det}, stop, threads=1, max_age_s=1.2)
    done: list[int] = []
    for k in range(20):
        sched.register(f"cam{k}", ["m"], lambda f, d: done.append(f.index))
    sched.start()
    try:
        for i in range(3):  # learns a frame's detection time: 0.1 s
            sched.submit("cam0", _frame(i))
            _wait_for(lambda i=i: len(done) == i + 1)
        assert sched.expected_wait_s() == 0.0  # nothing queued
        det.go.clear()
        det.entered.clear()
        sched.submit("cam1", _frame(10))
        assert det.entered.wait(5)  # held in the detector: what is submitted now stays queued
        for k in range(2, 7):
            sched.submit(f"cam{k}", _frame(10))
        wait = sched.expected_wait_s()
        assert 0.45 <= wait <= 0.8, wait  # 5 queued × ~0.1 s
        assert sched.admit("cam9", 0.0) and sched.admit("cam9", 0.3)  # detected well within 1.2 s
        assert not sched.admit("cam9", 1.0)  # ≥ 1.45 s old by the time it would be taken: not decoded
        assert sched.admit("cam2", 0.0)  # its waiting frame may be replaced by a fresh one: same place
        assert not sched.admit("cam2", 1.0)  # but not by one that is stale already: the waiting one goes
        for k in range(7, 17):
            sched.submit(f"cam{k}", _frame(10))
        assert not sched.admit("cam19", 0.0)  # 15 queued: ≥ 1.5 s of work ahead of a fresh frame
        assert not sched.behind  # this is not the pressure rule: nothing was replaced here
    finally:
        det.go.set()
        stop.set()
        sched.join(2)


def test_past_capacity_admitted_frames_stay_fresh_and_the_detector_stays_busy() -> None:
    # 40 cameras each due a frame a second into a detector that serves 20 a second (twice its capacity),
    # as a camera's source asks: admit(its frame's age) before decoding, and when told no, again a second
    # later. Without the age rule every frame waited behind every camera's (~2 s here); with it, what is
    # detected is taken within max_age_s of its capture, and the detector never runs dry.
    det, stop = PacedDetector(0.05), threading.Event()
    sched = InferenceScheduler({"m": det}, stop, threads=1, max_age_s=0.5)
    taken_age: list[float] = []
    for k in range(40):
        sched.register(f"cam{k}", ["m"], lambda f, d: taken_age.append(time.monotonic() - f.ts))
    sched.start()
    go, run_s = threading.Barrier(40), 4.0

    def camera(k: int) -> None:
        go.wait()
        t_end = time.monotonic() + run_s
        time.sleep(k / 40)  # cameras keyframe at their own phases
        i = 0
        while time.monotonic() < t_end:
            if sched.admit(f"cam{k}", 0.0):  # a keyframe captured just now
                sched.submit(f"cam{k}", Frame(np.zeros((4, 4, 3), np.uint8), ts=time.monotonic(), index=i))
            i += 1
            time.sleep(1.0)

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(40)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(run_s + 3)
    finally:
        stop.set()
        sched.join(2)
    assert det.calls >= 0.7 * run_s / det.delay_s, det.calls  # refusing frames did not starve the detector
    ages = sorted(taken_age)
    p95 = ages[int(0.95 * (len(ages) - 1))]
    # taken by max_age_s + about one call; the done callback comes one call later still
    assert p95 <= 0.5 + 3 * det.delay_s + 0.1, (p95, len(ages))


# ---- batches across cameras ------------------------------------------------------------------------------


class GatedDetector:
    """Records each call's cameras (an image's pixel value) and model; the first call blocks until
    ``release``, so the test decides which frames are ready when the next batches are taken. Each image
    gets one box whose x1 is its camera, so a result handed to the wrong camera shows; ``bad`` cameras'
    images fail the call they are in, as a wrongly shaped image fails a real detector's call."""

    def __init__(self, name: str, bad: frozenset[int] = frozenset()) -> None:
        self.name, self.sha256, self.bad = name, None, bad
        self.calls: list[list[int]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        cams = [int(im[0, 0, 0]) for im in images]
        self.calls.append(cams)
        self.entered.set()
        self.release.wait(5)
        if self.bad & set(cams):
            raise ValueError(f"bad image from camera {sorted(self.bad & set(cams))}")
        return [Detections(np.array([[c, 0, c + 1, 1]]), np.array([0.9]), np.array([VEHICLE])) for c in cams]


def _cam_frame(cam: int, i: int = 0) -> Frame:
    return Frame(np.full((4, 4, 3), cam, np.uint8), ts=1000.0 + i, index=i)


def _wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)


def _batching(
    detectors: dict[str, GatedDetector], models: dict[int, list[str]], max_batch: int
) -> tuple[InferenceScheduler, threading.Event, dict[int, list[float]]]:
    """A started one-thread scheduler; each camera's results (their boxes' x1) land in the dict."""
    stop = threading.Event()
    sched = InferenceScheduler(detectors, stop, threads=1, max_batch=max_batch)
    got: dict[int, list[float]] = {}
    for cam, ms in models.items():
        sched.register(f"cam{cam}", ms, lambda f, d, cam=cam: got.setdefault(cam, []).extend(d.xyxy[:, 0]))
    sched.start()
    return sched, stop, got


def _first_alone_then(sched: InferenceScheduler, gate: GatedDetector, cams: Sequence[int]) -> None:
    """cam0's frame alone in the first call, held there while the other cameras' frames arrive."""
    sched.submit("cam0", _cam_frame(0))
    assert gate.entered.wait(5)  # nothing else was ready: no waiting to fill a batch
    for cam in cams:
        sched.submit(f"cam{cam}", _cam_frame(cam))
    gate.release.set()


def test_a_batch_takes_every_ready_camera_up_to_max_batch_each_gets_its_own_result() -> None:
    det = GatedDetector("m")
    sched, stop, got = _batching({"m": det}, {cam: ["m"] for cam in range(10)}, max_batch=4)
    try:
        _first_alone_then(sched, det, range(1, 10))
        _wait_for(lambda: len(got) == 10)
    finally:
        stop.set()
        sched.join(2)
    assert det.calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert got == {cam: [float(cam)] for cam in range(10)}


def test_a_batch_runs_each_model_once_and_merges_in_each_cameras_model_order() -> None:
    a, b = GatedDetector("a"), GatedDetector("b")
    b.release.set()
    models = {0: ["a"], 1: ["a", "b"], 2: ["b", "a"], 3: ["b"]}
    sched, stop, got = _batching({"a": a, "b": b}, models, max_batch=8)
    try:
        _first_alone_then(sched, a, (1, 2, 3))
        _wait_for(lambda: len(got) == 4)
    finally:
        stop.set()
        sched.join(2)
    assert a.calls == [[0], [1, 2]] and b.calls == [[1, 2, 3]]
    assert got == {0: [0.0], 1: [1.0, 1.0], 2: [2.0, 2.0], 3: [3.0]}


def test_one_bad_frame_in_a_batch_costs_only_its_own_camera(caplog: pytest.LogCaptureFixture) -> None:
    det = GatedDetector("m", bad=frozenset({2}))
    sched, stop, got = _batching({"m": det}, {cam: ["m"] for cam in range(5)}, max_batch=8)
    try:
        _first_alone_then(sched, det, range(1, 5))
        _wait_for(lambda: len(got) == 4)
        det.bad = frozenset()
        sched.submit("cam2", _cam_frame(2, 1))  # the camera itself goes on with its next frame
        _wait_for(lambda: 2 in got)
    finally:
        stop.set()
        sched.join(2)
    # the batch failed, then each of its frames alone: only camera 2's failed
    assert det.calls == [[0], [1, 2, 3, 4], [1], [2], [3], [4], [2]]
    assert got == {0: [0.0], 1: [1.0], 3: [3.0], 4: [4.0], 2: [2.0]}
    assert "camera cam2: inference or rules failed on frame 0" in caplog.text
    assert "cam1" not in caplog.text


def test_a_stuck_batch_frees_every_camera_in_it() -> None:
    stop = threading.Event()
    det = GatedDetector("m")
    sched = InferenceScheduler({"m": det}, stop, threads=1, stuck_after_s=0.3, max_batch=4)
    seen: dict[int, list[int]] = {}
    for cam in range(3):
        sched.register(f"cam{cam}", ["m"], lambda f, d, cam=cam: seen.setdefault(cam, []).append(f.index))
    for cam in range(3):  # ready together before the thread starts: one batch of three
        sched.submit(f"cam{cam}", _cam_frame(cam))
    sched.start()
    try:
        assert det.entered.wait(5)
        _wait_for(sched.stuck)
        assert det.calls == [[0, 1, 2]]
        assert sched.restart_stuck() == 1 and not sched.stuck()
        for cam in range(3):
            sched.submit(f"cam{cam}", _cam_frame(cam, 1))
        det.release.set()  # the stuck call returns as well: its results are thrown away
        _wait_for(lambda: len(seen) == 3)
        time.sleep(0.1)
    finally:
        det.release.set()
        stop.set()
        sched.join(2)
    assert seen == {0: [1], 1: [1], 2: [1]}


def test_max_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        InferenceScheduler({}, threading.Event(), max_batch=0)
