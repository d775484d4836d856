"""Shares the process's detectors among its cameras.

Each camera has at most one frame in flight and one waiting; a newer frame replaces the waiting one
(drop-oldest, counted). So a slow detector drops frames instead of growing queues or latency, and one
camera's results always arrive in frame order (its tracker needs that).

A detector call that never returns (a wedged driver, a deadlock in a runtime) is ``stuck()`` after
``stuck_after_s``; ``restart_stuck()`` abandons that thread (Python cannot kill it: its result, should it
ever come, is thrown away), frees its camera's slot and starts a fresh thread in its place (the supervisor
does this).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import MAX_FRAME_AGE_S
from pipeline.detections import Detections
from pipeline.protocols import Detector, Frame

log = logging.getLogger(__name__)

Done = Callable[[Frame, Detections], None]

# admit(): the weight of one due frame in the pressure estimate; past PRESSURE_ON a camera whose previous
# frame still waits does not decode the next one, until the pressure is back under PRESSURE_OFF (in overload
# it swings between ~0.2 and ~0.7 as the cameras' turns come round: without the gap it flapped)
PRESSURE_ALPHA = 0.02
PRESSURE_ON = 0.5
PRESSURE_OFF = 0.15
FRAME_TIME_ALPHA = 0.1  # the weight of one batch in the running estimate of a frame's detection time


@dataclass
class _Slot:
    camera_id: str
    models: tuple[str, ...]
    done: Done
    # this camera's own lock: its camera thread (submit) and at most one inference thread meet here, never
    # the whole process (see InferenceScheduler)
    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: int | None = None  # ident of the inference thread detecting this camera's frame; None: idle
    waiting: Frame | None = None
    dropped: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))


def merge(parts: Sequence[Detections]) -> Detections:
    """Concatenate the detections of several models run on one frame."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Detections.empty()
    if len(parts) == 1:
        return parts[0]
    return Detections(
        np.concatenate([p.xyxy for p in parts]),
        np.concatenate([p.confidence for p in parts]),
        np.concatenate([p.class_id for p in parts]),
        np.concatenate([p.track_id for p in parts]),
    )


class InferenceScheduler:
    """``threads`` inference threads over shared detectors; ``submit`` never blocks.

    No lock is shared by all cameras on the frame path. It used to be one Condition, taken four times per
    inference and once per submit and per status read. On an overloaded box every hand-over of a contended
    Python lock waits for the woken thread to get a core and then the GIL: with 48 cameras at 0.5 det/s on
    a 2-core box that serves ~36, 44 camera threads were queued on it, the status reader waited over 20 s,
    and inference fell to 12–18 calls in 30 s in two of three runs (215 and 276 in two runs since). Now a
    camera's frame hand-over takes only its own slot's lock, ready cameras reach the inference threads
    through a ``queue.SimpleQueue`` (no Python-level lock), and status reads take none. A slot is in the
    ready queue at most once, with a frame waiting and none in flight, so one camera's frames are detected
    one at a time, in order (``test_many_cameras_on_their_own_threads_keep_every_invariant``).

    ``max_batch`` > 1 batches across cameras: an inference thread takes every ready camera's frame, up to
    ``max_batch``, and runs each model once on them all. Nothing waits to fill a batch — while one call
    runs, the frames that arrive meanwhile make the next batch — so a batch grows with the load and a
    lightly loaded box keeps single-frame latency. A GPU does a batch of 8 in little more than the time of
    one; on a CPU a batch costs what its frames cost one by one (the camera bench's ``batch_8`` lever came
    out even at 44 and 54 cameras), so the supervisor batches on GPU providers only
    (``pipeline.detection.cross_camera_batch``).
    """

    def __init__(
        self,
        detectors: Mapping[str, Detector],
        stop: threading.Event,
        threads: int = 1,
        stuck_after_s: float = 30.0,
        max_batch: int = 1,
        max_age_s: float | None = MAX_FRAME_AGE_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._detectors = dict(detectors)
        self._stop = stop
        self._admin = threading.Lock()  # registration, stuck-thread replacement, join: never per frame
        self._slots: dict[str, _Slot] = {}
        self._ready: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"infer-{i}", daemon=True) for i in range(threads)
        ]
        # per thread ident: written by that thread, and by restart_stuck once it is stuck (single dict
        # operations, atomic under the GIL)
        self._started_at: dict[int, float] = {}  # monotonic start of its current job
        self._jobs: dict[int, list[_Slot]] = {}  # the slots (cameras) of its current batch
        self._abandoned: set[int] = set()  # idents of stuck threads replaced by restart_stuck()
        self._started = False
        self._pressure = 0.0  # see admit()
        # admit(): a due frame is not decoded when it would be older than this by the time an inference
        # thread takes it (its age now + the wait behind the frames already queued); None: no bound
        self.max_age_s = math.inf if max_age_s is None else max_age_s
        self._n_threads = max(1, threads)
        self._frame_s = 0.0  # running estimate of one frame's detection time (wall: under the box's load)
        self.behind = False  # admit() is shedding decodes: the detector has been behind its cameras
        self.restarts = 0
        self.stuck_after_s = stuck_after_s

    def register(self, camera_id: str, models: Sequence[str], done: Done) -> None:
        missing = [m for m in models if m not in self._detectors]
        if missing:
            raise KeyError(f"camera {camera_id}: no detector loaded for {', '.join(missing)}")
        with self._admin:
            self._slots[camera_id] = _Slot(camera_id, tuple(models), done)

    def start(self) -> None:
        self._started = True
        for t in self._threads:
            t.start()

    def submit(self, camera_id: str, frame: Frame) -> None:
        slot = self._slots[camera_id]
        with slot.lock:
            if slot.waiting is not None:
                slot.dropped += 1
            enqueue = slot.waiting is None and slot.owner is None
            slot.waiting = frame
        if enqueue:
            self._ready.put(slot)

    def admit(self, camera_id: str, age_s: float = 0.0) -> bool:
        """Whether the camera's source should decode the frame now due, captured ``age_s`` ago.

        No, when it would be older than ``max_age_s`` by the time an inference thread takes it (``age_s`` +
        ``expected_wait_s()``): past capacity the queue then holds only frames that will still be fresh when
        detected, instead of every camera's frame behind every other's, and a camera told no asks again at its
        next keyframe (its source's schedule then restarts from the frame it gets). A waiting frame is not
        replaced then either: it will be detected before long.

        No, too, when its previous frame still waits for the detector and the detector has been behind for a
        while: decoding this one would only replace that one unseen. Past a box's capacity that is what most
        decodes came to (64 cameras at 1 det/s where 49 fit: all 1,560 dropped frames in 30 s had been
        decoded, ~0.7 of 1.7 cores). Near capacity a frame still waits now and then; replacing it then keeps
        the camera's rate, so the answer is yes until the share of due frames that found one waiting, over
        the last ~``1/PRESSURE_ALPHA`` due frames of all cameras, passes ``PRESSURE_ON`` (and again once it
        is under ``PRESSURE_OFF``)."""
        waiting = self._slots[camera_id].waiting is not None
        # a shared estimate updated without a lock: a lost update under contention only delays it a little
        self._pressure = p = self._pressure + PRESSURE_ALPHA * (waiting - self._pressure)
        if p > PRESSURE_ON:
            self.behind = True
        elif p < PRESSURE_OFF:
            self.behind = False
        stale = age_s + self.expected_wait_s() > self.max_age_s
        if waiting:
            return not (self.behind or stale)  # a replacement keeps the waiting frame's place in the queue
        return not stale

    def expected_wait_s(self) -> float:
        """How long a frame submitted now would wait before an inference thread takes it (an estimate:
        the cameras ready ahead of it × one frame's recent detection time ÷ the inference threads)."""
        return self._ready.qsize() * self._frame_s / self._n_threads

    def pressure(self) -> float:
        """The share of recent due frames that found their camera's previous frame still waiting."""
        return self._pressure

    def dropped(self, camera_id: str) -> int:
        return self._slots[camera_id].dropped

    def latency_ms(self, camera_id: str) -> float | None:
        lat = list(self._slots[camera_id].latencies_ms)  # a copy made under the GIL: no lock needed
        return float(np.median(lat)) if lat else None

    def stuck(self) -> bool:
        """True when a detector call has run far longer than any frame interval: the supervisor restarts."""
        now = time.monotonic()
        return any(now - t0 > self.stuck_after_s for t0 in list(self._started_at.values()))

    def restart_stuck(self) -> int:
        """Replace every stuck inference thread by a fresh one; returns how many were replaced."""
        now = time.monotonic()
        fresh: list[threading.Thread] = []
        with self._admin:
            for ident, t0 in list(self._started_at.items()):
                if now - t0 <= self.stuck_after_s:
                    continue
                self._abandoned.add(ident)  # first: from here on its result is thrown away
                self._started_at.pop(ident, None)
                slots = self._jobs.pop(ident, [])
                self._threads = [t for t in self._threads if t.ident != ident]
                for slot in slots:
                    self._release(slot, ident)
                if slots:
                    log.error(
                        "camera %s: detector call stuck for %.0f s; inference thread restarted",
                        ", ".join(s.camera_id for s in slots),
                        now - t0,
                    )
                self.restarts += 1
                t = threading.Thread(target=self._loop, name=f"infer-r{self.restarts}", daemon=True)
                self._threads.append(t)
                fresh.append(t)
        if self._started:
            for t in fresh:
                t.start()
        return len(fresh)

    def _release(self, slot: _Slot, owner: int, elapsed_ms: float | None = None) -> None:
        """``owner``'s job on the slot is over: back in the ready queue if a frame came meanwhile."""
        with slot.lock:
            if slot.owner != owner:
                return  # released already (restart_stuck freed a stuck thread's slot), maybe taken again
            slot.owner = None
            if elapsed_ms is not None:
                slot.latencies_ms.append(elapsed_ms)
            requeue = slot.waiting is not None
        if requeue:
            self._ready.put(slot)

    def _take(self) -> list[tuple[_Slot, Frame]] | None:
        """The next batch: the first ready camera's frame (waiting for one), then those of up to
        ``max_batch - 1`` more cameras that are ready now. None once stopped."""
        ident = threading.get_ident()
        while not self._stop.is_set():
            try:
                first = self._claim(self._ready.get(timeout=0.2), ident)
            except queue.Empty:
                continue
            if first is None:
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._claim(self._ready.get_nowait(), ident)
                except queue.Empty:
                    break
                if more is not None:
                    batch.append(more)
            self._jobs[ident] = [slot for slot, _ in batch]
            self._started_at[ident] = time.monotonic()
            return batch
        return None

    @staticmethod
    def _claim(slot: _Slot, ident: int) -> tuple[_Slot, Frame] | None:
        with slot.lock:
            frame = slot.waiting
            if frame is None or slot.owner is not None:
                return None  # taken already; a busy slot comes back when its job is released
            slot.waiting = None
            slot.owner = ident
        return slot, frame

    def _detect(self, batch: Sequence[tuple[_Slot, Frame]]) -> list[Detections | None]:
        """Each model once over the frames of the cameras that use it; per camera its models' detections
        merged in its own model order, or None where detection failed (logged)."""
        found: list[dict[str, Detections]] = [{} for _ in batch]
        failed = [False] * len(batch)
        for model in dict.fromkeys(m for slot, _ in batch for m in slot.models):
            idx = [i for i, (slot, _) in enumerate(batch) if model in slot.models and not failed[i]]
            if not idx:
                continue
            if len(idx) == 1:
                got: list[Detections | None] = [self._alone(model, batch[idx[0]])]
            else:
                try:
                    got = list(self._detectors[model].detect([batch[i][1].image for i in idx]))
                except Exception:  # one camera's bad frame must not cost the others theirs: each alone
                    got = [self._alone(model, batch[i]) for i in idx]
            for i, dets in zip(idx, got, strict=True):
                if dets is None:
                    failed[i] = True
                else:
                    found[i][model] = dets
        return [
            None if failed[i] else merge([found[i][m] for m in slot.models])
            for i, (slot, _) in enumerate(batch)
        ]

    def _alone(self, model: str, job: tuple[_Slot, Frame]) -> Detections | None:
        try:
            return self._detectors[model].detect([job[1].image])[0]
        except Exception:
            self._log_failure(job)
            return None

    @staticmethod
    def _log_failure(job: tuple[_Slot, Frame]) -> None:
        slot, frame = job
        log.exception("camera %s: inference or rules failed on frame %d", slot.camera_id, frame.index)

    def _abandoned_here(self) -> bool:
        return threading.get_ident() in self._abandoned

    def _loop(self) -> None:
        ident = threading.get_ident()
        while True:
            batch = self._take()
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                results = self._detect(batch)
            except Exception:  # supervision boundary (a bug outside the detector calls): drop this batch
                log.exception("inference failed on a batch of %d camera(s)", len(batch))
                results = [None] * len(batch)
            elapsed_ms: list[float] = []
            for job, dets in zip(batch, results, strict=True):
                if dets is not None and not self._abandoned_here():  # a restarted thread's late result
                    try:  # is dropped: out of order
                        job[0].done(job[1], dets)
                    except Exception:  # supervision boundary: one camera's failure never stops the others
                        self._log_failure(job)
                elapsed_ms.append((time.perf_counter() - t0) * 1000)
            per_frame_s = elapsed_ms[-1] / 1000 / len(batch)
            # lock-free, like _pressure; the first call sets it (from 0 it would take ~20 calls to get there)
            f = self._frame_s
            self._frame_s = per_frame_s if f == 0.0 else f + FRAME_TIME_ALPHA * (per_frame_s - f)
            abandoned = self._abandoned_here()
            if not abandoned:
                self._started_at.pop(ident, None)
                self._jobs.pop(ident, None)
            for (slot, _), ms in zip(batch, elapsed_ms, strict=True):
                self._release(slot, ident, ms)  # a no-op if no longer ours
            if abandoned:  # replaced while stuck: a fresh thread took its place; leave
                with self._admin:
                    self._abandoned.discard(ident)  # (its ident may be reused by a new thread)
                return

    def join(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._admin:
            threads = list(self._threads)  # abandoned (stuck) threads are not waited for
        for t in threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
