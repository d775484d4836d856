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
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.detections import Detections
from pipeline.protocols import Detector, Frame

log = logging.getLogger(__name__)

Done = Callable[[Frame, Detections], None]


@dataclass
class _Slot:
    camera_id: str
    models: tuple[str, ...]
    done: Done
    busy: bool = False
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
    """``threads`` inference threads over shared detectors; ``submit`` never blocks."""

    def __init__(
        self,
        detectors: Mapping[str, Detector],
        stop: threading.Event,
        threads: int = 1,
        stuck_after_s: float = 30.0,
    ) -> None:
        self._detectors = dict(detectors)
        self._stop = stop
        self._lock = threading.Condition()
        self._slots: dict[str, _Slot] = {}
        self._ready: deque[str] = deque()
        self._threads = [
            threading.Thread(target=self._loop, name=f"infer-{i}", daemon=True) for i in range(threads)
        ]
        self._started_at: dict[int, float] = {}  # thread ident -> monotonic start of its current job
        self._jobs: dict[int, _Slot] = {}  # thread ident -> the slot its current job belongs to
        self._abandoned: set[int] = set()  # idents of stuck threads replaced by restart_stuck()
        self._started = False
        self.restarts = 0
        self.stuck_after_s = stuck_after_s

    def register(self, camera_id: str, models: Sequence[str], done: Done) -> None:
        missing = [m for m in models if m not in self._detectors]
        if missing:
            raise KeyError(f"camera {camera_id}: no detector loaded for {', '.join(missing)}")
        with self._lock:
            self._slots[camera_id] = _Slot(camera_id, tuple(models), done)

    def start(self) -> None:
        self._started = True
        for t in self._threads:
            t.start()

    def submit(self, camera_id: str, frame: Frame) -> None:
        with self._lock:
            slot = self._slots[camera_id]
            if slot.waiting is not None:
                slot.dropped += 1
            else:
                if not slot.busy:
                    self._ready.append(camera_id)
            slot.waiting = frame
            self._lock.notify()

    def dropped(self, camera_id: str) -> int:
        with self._lock:
            return self._slots[camera_id].dropped

    def latency_ms(self, camera_id: str) -> float | None:
        with self._lock:
            lat = self._slots[camera_id].latencies_ms
            return float(np.median(lat)) if lat else None

    def stuck(self) -> bool:
        """True when a detector call has run far longer than any frame interval: the supervisor restarts."""
        now = time.monotonic()
        with self._lock:
            return any(now - t0 > self.stuck_after_s for t0 in self._started_at.values())

    def restart_stuck(self) -> int:
        """Replace every stuck inference thread by a fresh one; returns how many were replaced."""
        now = time.monotonic()
        fresh: list[threading.Thread] = []
        with self._lock:
            for ident, t0 in list(self._started_at.items()):
                if now - t0 <= self.stuck_after_s:
                    continue
                del self._started_at[ident]
                slot = self._jobs.pop(ident, None)
                self._abandoned.add(ident)
                self._threads = [t for t in self._threads if t.ident != ident]
                if slot is not None:
                    slot.busy = False
                    if slot.waiting is not None and slot.camera_id not in self._ready:
                        self._ready.append(slot.camera_id)
                    log.error(
                        "camera %s: detector call stuck for %.0f s; inference thread restarted",
                        slot.camera_id,
                        now - t0,
                    )
                self.restarts += 1
                t = threading.Thread(target=self._loop, name=f"infer-r{self.restarts}", daemon=True)
                self._threads.append(t)
                fresh.append(t)
            self._lock.notify_all()
        if self._started:
            for t in fresh:
                t.start()
        return len(fresh)

    def _take(self) -> tuple[_Slot, Frame] | None:
        with self._lock:
            while not self._ready:
                if self._stop.is_set():
                    return None
                self._lock.wait(0.2)
            slot = self._slots[self._ready.popleft()]
            frame = slot.waiting
            assert frame is not None
            slot.waiting = None
            slot.busy = True
            self._started_at[threading.get_ident()] = time.monotonic()
            self._jobs[threading.get_ident()] = slot
            return slot, frame

    def _is_abandoned(self) -> bool:
        with self._lock:
            return threading.get_ident() in self._abandoned

    def _finish(self, slot: _Slot, elapsed_ms: float) -> None:
        with self._lock:
            if threading.get_ident() in self._abandoned:
                return  # replaced while stuck: its slot is someone else's now
            self._started_at.pop(threading.get_ident(), None)
            self._jobs.pop(threading.get_ident(), None)
            slot.busy = False
            slot.latencies_ms.append(elapsed_ms)
            if slot.waiting is not None:
                self._ready.append(slot.camera_id)
                self._lock.notify()

    def _loop(self) -> None:
        while True:
            job = self._take()
            if job is None:
                return
            slot, frame = job
            t0 = time.perf_counter()
            try:
                dets = merge([self._detectors[m].detect([frame.image])[0] for m in slot.models])
                if not self._is_abandoned():  # a restarted thread's late result is dropped: out of order
                    slot.done(frame, dets)
            except Exception:  # supervision boundary: one camera's bad frame never stops the others
                log.exception("camera %s: inference or rules failed on frame %d", slot.camera_id, frame.index)
            finally:
                self._finish(slot, (time.perf_counter() - t0) * 1000)
            with self._lock:
                if threading.get_ident() in self._abandoned:  # replaced: leave (its ident may be reused)
                    self._abandoned.discard(threading.get_ident())
                    return

    def join(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)  # abandoned (stuck) threads are not waited for
        for t in threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
