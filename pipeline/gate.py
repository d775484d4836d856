"""Static-scene gate: skip detection while the zones of interest look the same as at the last detection.

Cheap by construction: the zones' bounding region (plus a margin) is cut out, shrunk with area averaging so
the longer side is ~64 px (INTER_AREA also averages away sensor noise and compression flicker), and compared
with the reference taken at the last detection — only inside the zones' (rasterised) polygons, per colour
channel after removing each channel's median difference so that a global brightness change (clouds, auto
exposure) does not count. Colour, not gray: a red car on grey asphalt can have the asphalt's luminance.
``changed()`` is True when enough of the zones' area moved, on the first frame, after a resolution change, and
at least every ``refresh_s`` seconds (so detections are confirmed now and then even in a still scene). The
reference is replaced only when ``changed()`` says True, so slow drift accumulates until it counts.

Cost (benchmarks/bench_decode.py): ~0.4–0.6 ms a frame at 720p and 1080p on this shared 2-core box.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

Points = Sequence[tuple[float, float]]


class SceneGate:
    """``SceneGate(zone_polygons, frame_shape).changed(image, ts) -> bool``. One per camera; not thread-safe.

    ``changed`` replaces the reference only when it answers True; ``anchor(image, ts)`` replaces it always.

    - ``zone_polygons``: polygons in pixel coordinates of the full frame; empty means the whole frame.
    - ``frame_shape``: (height, width[, channels]) of the frames to come (a different shape resets the gate).
    - ``pixel_threshold``: gray-level change (0–255) for a small pixel to count as changed.
    - ``area_fraction``: fraction of the zones' small pixels that must change (0.01 ≈ a car entering a lane
      zone of 100 small pixels: 1 pixel is too few, so ``min_pixels`` also applies).
    - ``refresh_s``: force True once this long has passed since the last True (stream time when ``ts`` is
      given, else monotonic time).
    """

    def __init__(
        self,
        zone_polygons: Sequence[Points],
        frame_shape: tuple[int, ...],
        *,
        long_side: int = 64,
        margin: float = 0.05,
        pixel_threshold: float = 18.0,
        area_fraction: float = 0.02,
        min_pixels: int = 3,
        refresh_s: float = 60.0,
    ) -> None:
        self.zone_polygons = [list(p) for p in zone_polygons]
        self.long_side = long_side
        self.margin = margin
        self.pixel_threshold = pixel_threshold
        self.area_fraction = area_fraction
        self.min_pixels = min_pixels
        self.refresh_s = refresh_s
        self._ref: npt.NDArray[np.float32] | None = None
        self._last_true: float | None = None
        self.last_score = 0.0  # fraction of the zones' area that changed, at the last call
        self.last_moved = False  # the last call saw the zones move (not only a refresh or a first frame)
        self._setup(tuple(frame_shape[:2]))

    def _setup(self, hw: tuple[int, ...]) -> None:
        h, w = int(hw[0]), int(hw[1])
        self._hw = (h, w)
        if self.zone_polygons:
            pts = np.array([p for poly in self.zone_polygons for p in poly], dtype=np.float64)
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            mx, my = (x1 - x0) * self.margin, (y1 - y0) * self.margin
            x0, y0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
            x1, y1 = min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my)))
            if x1 - x0 < 2 or y1 - y0 < 2:  # zones outside the frame: watch the whole frame
                x0, y0, x1, y1 = 0, 0, w, h
        else:
            x0, y0, x1, y1 = 0, 0, w, h
        self._box = (x0, y0, x1, y1)
        bw, bh = x1 - x0, y1 - y0
        scale = self.long_side / max(bw, bh)
        self._small = (max(2, round(bw * scale)), max(2, round(bh * scale)))  # (w, h) for cv2
        # subsample by striding first, keeping ≥ 4×4 source pixels per small pixel for INTER_AREA to average
        self._step = max(1, int(max(bw, bh) / (self.long_side * 4)))
        mask = np.zeros((self._small[1], self._small[0]), np.uint8)
        if self.zone_polygons:
            for poly in self.zone_polygons:
                p = (np.array(poly, dtype=np.float64) - (x0, y0)) * (self._small[0] / bw, self._small[1] / bh)
                cv2.fillPoly(mask, [np.round(p).astype(np.int32)], 1)
        else:
            mask[:] = 1
        if not mask.any():
            mask[:] = 1
        self._mask = mask.astype(bool)
        self._area = int(self._mask.sum())
        self._ref = None

    def small(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """The downscaled view (h × w × channels) of the zones' region that the gate compares."""
        x0, y0, x1, y1 = self._box
        s = self._step
        crop = image[y0:y1:s, x0:x1:s] if s > 1 else image[y0:y1, x0:x1]
        tiny = cv2.resize(crop, self._small, interpolation=cv2.INTER_AREA)
        return tiny.astype(np.float32).reshape(tiny.shape[0], tiny.shape[1], -1)

    def changed(self, image: npt.NDArray[np.uint8], ts: float | None = None) -> bool:
        """True when detection should run on this frame (and then this frame becomes the reference)."""
        now = time.monotonic() if ts is None else ts
        if tuple(image.shape[:2]) != self._hw:
            self._setup(tuple(image.shape[:2]))
        cur = self.small(image)
        ref = self._ref
        need = max(self.min_pixels, self.area_fraction * self._area)
        self.last_score = 1.0 if ref is None else self._score(cur, ref)
        self.last_moved = ref is not None and self.last_score * self._area >= need
        if ref is None or self._last_true is None or now - self._last_true >= self.refresh_s:
            return self._take(cur, now)
        if self.last_moved:
            return self._take(cur, now)
        return False

    def anchor(self, image: npt.NDArray[np.uint8], ts: float | None = None) -> None:
        """Make ``image`` the reference unconditionally (e.g. the frame a detection just ran on)."""
        if tuple(image.shape[:2]) != self._hw:
            self._setup(tuple(image.shape[:2]))
        self._take(self.small(image), time.monotonic() if ts is None else ts)

    def _score(self, cur: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]) -> float:
        if cur.shape != ref.shape:  # gray frames after colour ones (or back): compare afresh
            return 1.0
        diff = (cur - ref)[self._mask]  # (pixels, channels)
        # a global brightness or white-balance change is not a change of scene
        diff -= np.median(diff, axis=0)
        moved = (np.abs(diff) > self.pixel_threshold).any(axis=1)
        return float(np.count_nonzero(moved)) / max(1, self._area)

    def _take(self, cur: npt.NDArray[np.float32], now: float) -> bool:
        self._ref = cur
        self._last_true = now
        return True
