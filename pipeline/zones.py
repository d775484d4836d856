"""Zone geometry: polygons as point arrays, vectorized point-in-polygon tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Points = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Polygon:
    """A simple polygon in frame pixels, vertices (K,2)."""

    points: Points

    @classmethod
    def of(cls, pts: list[tuple[float, float]] | list[list[float]] | Points) -> Polygon:
        arr = np.asarray(pts, dtype=np.float32).reshape(-1, 2)
        if len(arr) < 3:
            raise ValueError("a polygon needs at least 3 points")
        return cls(arr)

    def contains(self, xy: Points) -> npt.NDArray[np.bool_]:
        """Even-odd rule for each point of ``xy`` (N,2); points on an edge may fall either way."""
        xy = np.asarray(xy, np.float32).reshape(-1, 2)
        if len(xy) == 0:
            return np.zeros(0, bool)
        px, py = xy[:, 0:1], xy[:, 1:2]
        x0, y0 = self.points[:, 0], self.points[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        straddles = (y0 <= py) != (y1 <= py)
        dy = np.where(y1 == y0, 1e-12, y1 - y0)
        x_cross = x0 + (py - y0) * (x1 - x0) / dy
        crossings = straddles & (px < x_cross)
        return (np.count_nonzero(crossings, axis=1) % 2 == 1).astype(bool)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        x0, y0 = np.floor(self.points.min(axis=0)).astype(int)
        x1, y1 = np.ceil(self.points.max(axis=0)).astype(int)
        return int(x0), int(y0), int(x1), int(y1)

    @property
    def area(self) -> float:
        x, y = self.points[:, 0].astype(np.float64), self.points[:, 1].astype(np.float64)
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def box_overlap_fraction(xyxy: Points, polygon: Polygon, samples: int = 5) -> npt.NDArray[np.float32]:
    """Share of each box's lower half that lies in the polygon, by a ``samples``² grid of points.

    Cheap and robust enough for deciding whether a bin or a parked car sits in a zone."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    if len(xyxy) == 0:
        return np.zeros(0, np.float32)
    t = (np.arange(samples, dtype=np.float32) + 0.5) / samples
    gx = xyxy[:, 0:1] + (xyxy[:, 2:3] - xyxy[:, 0:1]) * t[None, :]
    ymid = (xyxy[:, 1:2] + xyxy[:, 3:4]) / 2
    gy = ymid + (xyxy[:, 3:4] - ymid) * t[None, :]
    pts = np.stack(np.broadcast_arrays(gx[:, :, None], gy[:, None, :]), axis=-1).reshape(-1, 2)
    inside = polygon.contains(pts).reshape(len(xyxy), samples * samples)
    return inside.mean(axis=1).astype(np.float32)
