"""Per-camera multi-object tracker for low detection rates (0.5–2 det/s) and long stationary stays.

Pure: state is updated by ``update(dets, ts)`` (ts = the frame's epoch seconds); no I/O, no wall clock.

- Association is class-consistent and gated twice: box IoU, or centre distance within a gate that scales with
  the box size and grows with the time since the track was last seen (objects move far between frames at 0.5
  det/s). Moving tracks are predicted forward with a damped constant-velocity model. Pairs are taken greedily
  by ascending cost (1 − IoU + normalised distance).
- A track whose bottom-centre anchor has stayed within ``still_frac`` × box size of its running-median anchor
  for ``stationary_s`` is *stationary*. A stationary track is matched only at its own place (anchor within
  ``stationary_gate`` × box size of its median anchor, no prediction, no IoU-only match), so a vehicle passing
  in front while the parked one is missed cannot take its id; once lost it is kept for
  ``stationary_max_age_s`` (default 30 min, not ``max_age_s``): a parked vehicle keeps its id for hours
  through missed detections and occlusions. (A parked car that drives off faster than that gate per frame gets
  a new id; the rules do not depend on ids.)
- New ids are monotonic from 1 and never reused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pipeline.detections import Detections, box_iou

_HISTORY = 31


@dataclass
class _Track:
    id: int
    cls: int
    box: np.ndarray  # (4,) float64, last observed
    first_ts: float
    last_ts: float
    still_since: float
    hits: int = 1
    vel: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centre px/s
    anchors: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    stationary: bool = False
    ref: np.ndarray = field(default_factory=lambda: np.zeros(2))  # running median of ``anchors``

    @property
    def size(self) -> float:
        return float(np.sqrt(max(self.box[2] - self.box[0], 1.0) * max(self.box[3] - self.box[1], 1.0)))

    def ref_anchor(self) -> np.ndarray:
        return self.ref


def _greedy(cost: np.ndarray, valid: np.ndarray) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(valid)
    order = np.argsort(cost[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    out: list[tuple[int, int]] = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            out.append((r, c))
    return out


class Tracker:
    """One per camera. ``update`` returns the same rows with ``track_id`` set."""

    def __init__(
        self,
        max_age_s: float = 30.0,
        *,
        stationary_max_age_s: float = 1800.0,
        stationary_s: float = 15.0,
        still_frac: float = 0.2,
        gate: float = 1.0,
        gate_per_s: float = 0.75,
        max_gate: float = 4.0,
        accel_gate_per_s: float = 0.15,
        stationary_gate: float = 0.3,
        iou_min: float = 0.3,
        max_size_ratio: float = 2.0,
        predict_cap_s: float = 3.0,
    ) -> None:
        self.max_age_s = max_age_s
        self.stationary_max_age_s = max(stationary_max_age_s, max_age_s)
        self.stationary_s = stationary_s
        self.still_frac = still_frac
        self.gate = gate
        self.gate_per_s = gate_per_s
        self.max_gate = max_gate
        self.accel_gate_per_s = accel_gate_per_s
        self.stationary_gate = stationary_gate
        self.iou_min = iou_min
        self.max_size_ratio = max_size_ratio
        self.predict_cap_s = predict_cap_s
        self.tracks: list[_Track] = []
        self._next_id = 1
        self._last_ts: float | None = None

    def update(self, dets: Detections, ts: float) -> Detections:
        self._last_ts = ts
        self.tracks = [t for t in self.tracks if ts - t.last_ts <= self._max_age(t)]
        n = len(dets)
        ids = np.full(n, -1, np.int64)
        if n and self.tracks:
            for r, c in _greedy(*self._costs(dets, ts)):
                t = self.tracks[r]
                self._observe(t, dets.xyxy[c].astype(np.float64), ts)
                ids[c] = t.id
        for c in map(int, np.nonzero(ids < 0)[0]):
            box = dets.xyxy[c].astype(np.float64)
            t = _Track(self._next_id, int(dets.class_id[c]), box, ts, ts, ts)
            t.anchors.append(((box[0] + box[2]) / 2, box[3]))
            t.ref = np.asarray(t.anchors[0], np.float64)
            self._next_id += 1
            self.tracks.append(t)
            ids[c] = t.id
        return dets.with_tracks(ids)

    # ---- internals ---------------------------------------------------------------------------------

    def _max_age(self, t: _Track) -> float:
        return self.stationary_max_age_s if t.stationary else self.max_age_s

    def _costs(self, dets: Detections, ts: float) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.stack([t.box for t in self.tracks])
        dt = np.asarray([max(ts - t.last_ts, 0.0) for t in self.tracks])
        moving = np.asarray([not t.stationary and t.hits >= 2 for t in self.tracks])
        shift = np.where(moving[:, None], np.stack([t.vel for t in self.tracks]), 0.0)
        shift = shift * np.minimum(dt, self.predict_cap_s)[:, None]
        pred = boxes + np.concatenate([shift, shift], axis=1)
        tsize = np.sqrt(np.maximum(pred[:, 2] - pred[:, 0], 1) * np.maximum(pred[:, 3] - pred[:, 1], 1))
        dbox = dets.xyxy.astype(np.float64)
        dsize = dets.sizes.astype(np.float64)
        # two hypotheses per track: it kept its velocity, or it stopped where it was last seen
        dc = (dbox[:, :2] + dbox[:, 2:]) / 2
        dist = np.minimum(
            np.linalg.norm(((pred[:, :2] + pred[:, 2:]) / 2)[:, None, :] - dc[None, :, :], axis=2),
            np.linalg.norm(((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None, :] - dc[None, :, :], axis=2),
        )
        # gate, in box sizes: a new track's motion is unknown (wide gate growing with time); a track with a
        # velocity estimate is predicted, and allowed an error that grows with its speed and the time since
        speed = np.asarray([float(np.hypot(*t.vel)) for t in self.tracks])
        dtc = np.minimum(dt, 2 * self.predict_cap_s)
        known = self.gate / 2 + self.accel_gate_per_s * dtc + 0.5 * speed * dtc / tsize
        mult = np.where(moving, known, self.gate + self.gate_per_s * dt)
        mult = np.minimum(mult, self.max_gate)
        # a stationary track is looked for only at its own place, by its median anchor: a vehicle passing in
        # front while the parked one is missed must not take its id
        still = np.asarray([t.stationary for t in self.tracks])
        if still.any():
            ref = np.stack([t.ref_anchor() for t in self.tracks])
            danchor = np.stack([(dbox[:, 0] + dbox[:, 2]) / 2, dbox[:, 3]], axis=1)
            adist = np.linalg.norm(ref[:, None, :] - danchor[None, :, :], axis=2)
            dist = np.where(still[:, None], adist, dist)
        mult = np.where(still, self.stationary_gate, mult)
        scale = np.maximum(tsize[:, None], dsize[None, :]) * mult[:, None]
        iou = np.maximum(
            box_iou(pred.astype(np.float32), dets.xyxy), box_iou(boxes.astype(np.float32), dets.xyxy)
        )
        iou = iou.astype(np.float64)
        ratio = dsize[None, :] / tsize[:, None]
        cls = np.asarray([t.cls for t in self.tracks])
        same = cls[:, None] == dets.class_id[None, :]
        size_ok = (ratio <= self.max_size_ratio) & (ratio >= 1 / self.max_size_ratio)
        iou_ok = (iou >= self.iou_min) & ~still[:, None]
        valid = same & size_ok & ((dist <= scale) | iou_ok)
        cost = (1.0 - iou) + dist / np.maximum(scale, 1e-6)
        return cost, valid

    def _observe(self, t: _Track, box: np.ndarray, ts: float) -> None:
        dt = ts - t.last_ts
        if dt > 0:
            step = ((box[:2] + box[2:]) - (t.box[:2] + t.box[2:])) / 2 / dt
            t.vel = step if t.hits < 2 else 0.5 * t.vel + 0.5 * step
        t.box = box
        t.last_ts = ts
        t.hits += 1
        anchor = ((box[0] + box[2]) / 2, box[3])
        if np.linalg.norm(t.ref_anchor() - np.asarray(anchor)) > self.still_frac * t.size:
            t.anchors.clear()
            t.still_since = ts
        t.anchors.append(anchor)
        t.ref = (
            np.median(np.asarray(t.anchors, np.float64), axis=0) if len(t.anchors) > 1 else np.asarray(anchor)
        )
        t.stationary = ts - t.still_since >= self.stationary_s
        if t.stationary:
            t.vel = np.zeros(2)
