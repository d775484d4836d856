"""Reads plates off the camera loop: a bounded queue (drop-oldest) and one low-priority thread."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Deliver = Callable[[str, float], None]


class PlateReading(Protocol):
    def read(self, image: npt.NDArray[np.uint8]) -> tuple[str, float] | None: ...


class PlateService:
    def __init__(self, reader: PlateReading, stop: threading.Event, max_queue: int = 8) -> None:
        self.reader = reader
        self.stop = stop
        self._queue: deque[tuple[npt.NDArray[np.uint8], Deliver]] = deque(maxlen=max_queue)
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="plates", daemon=True)
        self.read_count = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def request(self, image: npt.NDArray[np.uint8], box: tuple[float, ...], deliver: Deliver) -> None:
        x1, y1, x2, y2 = (round(v) for v in box)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if x2 - x1 < 8 or y2 - y1 < 8:
            return
        crop = image[y1:y2, x1:x2].copy()  # the frame buffer is reused by the decoder
        with self._cv:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((crop, deliver))
            self._cv.notify()

    def _loop(self) -> None:
        while not self.stop.is_set():
            with self._cv:
                if not self._queue:
                    self._cv.wait(0.5)
                    continue
                crop, deliver = self._queue.popleft()
            try:
                result = self.reader.read(crop)
                self.read_count += 1
            except Exception:  # a failing OCR model must not take the camera loop down
                log.exception("plate reading failed")
                continue
            if result is not None:
                deliver(*result)

    def join(self, timeout_s: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)
