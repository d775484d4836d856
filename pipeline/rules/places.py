"""Stays keyed by *place*, not by track id: the shared core of the parking and bay rules.

A detection first opens a *pending* place. When a later detection is found at the same place (anchor within
``gate_frac`` × box size of the place's running-median anchor) at least ``still_s`` after the first one, the
place becomes a *stay* (the vehicle is stationary there). A stay lives on while detections keep matching it;
it ends once nothing has matched it for more than ``inertia_s`` — so missed detections, a person walking in
front, or a tracker id switch neither end a stay nor start a second one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pipeline.detections import LABELS, Detections, box_iou

_HISTORY = 31  # observations kept for the running medians
_MAX_PENDING = 256  # pending places kept (oldest dropped first): bounds the work in crowded scenes


@dataclass
class Place:
    first_ts: float
    last_seen: float
    anchors: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    boxes: deque[tuple[float, float, float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    key: str = ""  # set when the place becomes a stay
    n_obs: int = 0
    first_frame: int = 0
    # the latest matching detection (what a still should show)
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    confidence: float = 0.0
    track_id: int = -1
    label: str = "vehicle"
    # rule bookkeeping (parking): when the event opened, the next still/update, exemption
    opened_ts: float | None = None
    extra_still_ts: float | None = None
    last_update_ts: float | None = None
    exempt: bool = False
    # running medians of the reference observations (the place's position, robust to jitter)
    ref_anchor: tuple[float, float] = (0.0, 0.0)
    ref_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    ref_size: float = 1.0

    @property
    def is_stay(self) -> bool:
        return bool(self.key)

    def rebase(self, other: Place) -> None:
        """Continue this stay at ``other``'s position (its reference observations replace ours)."""
        self.anchors, self.boxes = other.anchors, other.boxes
        self.ref_anchor, self.ref_box, self.ref_size = other.ref_anchor, other.ref_box, other.ref_size
        self.last_seen = other.last_seen
        self.n_obs += other.n_obs
        self.box, self.confidence, self.track_id, self.label = (
            other.box,
            other.confidence,
            other.track_id,
            other.label,
        )

    def observe(self, ts: float, dets: Detections, i: int, *, reference: bool = True) -> None:
        box = tuple(float(v) for v in dets.xyxy[i])
        self.last_seen = ts
        self.n_obs += 1
        self.box = (box[0], box[1], box[2], box[3])
        self.confidence = float(dets.confidence[i])
        self.track_id = int(dets.track_id[i])
        self.label = LABELS[int(dets.class_id[i])]
        if reference or not self.anchors:
            ax, ay = dets.anchors[i]
            self.anchors.append((float(ax), float(ay)))
            self.boxes.append(self.box)
            if len(self.anchors) == 1:
                a, b = self.anchors[0], self.box
            else:
                ma = np.median(np.asarray(self.anchors, np.float64), axis=0)
                mb = np.median(np.asarray(self.boxes, np.float64), axis=0)
                a, b = (float(ma[0]), float(ma[1])), (float(mb[0]), float(mb[1]), float(mb[2]), float(mb[3]))
            self.ref_anchor, self.ref_box = a, b
            self.ref_size = float(np.sqrt(max(b[2] - b[0], 1.0) * max(b[3] - b[1], 1.0)))


def greedy_match(cost: np.ndarray, valid: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) by ascending cost among ``valid`` entries, each row and column used once."""
    rows, cols = np.nonzero(valid)
    order = np.argsort(cost[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    out: list[tuple[int, int]] = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        out.append((r, c))
    return out


class MotionFilter:
    """Flags detections whose track moved recently: a vehicle driving through a zone must neither start nor
    keep a stay at a place it merely passes. Uses the tracker's ids only as evidence of motion (an id switch
    or an untracked detection, id -1, counts as not moving), so a stay never depends on a stable id.

    A detection is *moving* when its track was seen, within the last ``settle_s`` or (if not then) at its
    latest sighting within ``window_s``, more than ``gate_frac`` × box size away from where it is now."""

    def __init__(self, gate_frac: float = 0.3, settle_s: float = 3.0, window_s: float = 10.0) -> None:
        self.gate_frac = gate_frac
        self.settle_s = settle_s
        self.window_s = window_s
        self._seen: dict[int, deque[tuple[float, float, float]]] = {}

    def update(self, dets: Detections, ts: float) -> np.ndarray:
        moving = np.zeros(len(dets), bool)
        anchors, sizes = dets.anchors, dets.sizes
        for i, tid in enumerate(dets.track_id.tolist()):
            if tid < 0:
                continue
            hist = self._seen.setdefault(tid, deque(maxlen=64))
            x, y = float(anchors[i, 0]), float(anchors[i, 1])
            gate = self.gate_frac * float(sizes[i])
            recent = [h for h in hist if ts - h[0] <= self.settle_s]
            if not recent and hist and ts - hist[-1][0] <= self.window_s:
                recent = [hist[-1]]
            moving[i] = any(np.hypot(hx - x, hy - y) > gate for _, hx, hy in recent)
            hist.append((ts, x, y))
        self._seen = {k: v for k, v in self._seen.items() if ts - v[-1][0] <= self.window_s}
        return moving


class PlaceBook:
    """Pending places and stays of one zone. ``observe`` matches one frame's (already filtered) detections."""

    def __init__(
        self,
        prefix: str,
        *,
        still_s: float,
        inertia_s: float,
        gate_frac: float = 0.3,
        iou_gate: float = 0.5,
        pending_ttl_s: float = 20.0,
        handover_frac: float = 0.75,
    ) -> None:
        self.prefix = prefix
        self.handover_frac = handover_frac
        self.still_s = still_s
        self.inertia_s = inertia_s
        self.gate_frac = gate_frac
        self.iou_gate = iou_gate
        self.pending_ttl_s = pending_ttl_s
        self.stays: list[Place] = []
        self.pending: list[Place] = []
        self._next = 1
        self._frame = 0

    def _match(
        self, places: list[Place], dets: Detections, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cost and validity of places × the detections ``cols``; anchor distance within the gate, or (for
        stays, whose box is known well) a box overlap ≥ ``iou_gate``."""
        if not places or len(cols) == 0:
            z = np.zeros((len(places), len(cols)))
            return z, z.astype(bool)
        ref = np.asarray([p.ref_anchor for p in places], np.float64)
        size = np.asarray([p.ref_size for p in places], np.float64)
        anchors = dets.anchors[cols].astype(np.float64)
        dsize = dets.sizes[cols].astype(np.float64)
        dist = np.linalg.norm(ref[:, None, :] - anchors[None, :, :], axis=2)
        scale = self.gate_frac * np.maximum(size[:, None], dsize[None, :])
        near = dist <= scale
        iou = box_iou(np.asarray([p.ref_box for p in places], np.float32), dets.xyxy[cols]).astype(np.float64)
        overlap = iou >= self.iou_gate if places[0].is_stay else np.zeros_like(near)
        cost = dist / np.maximum(scale, 1e-6) + (1.0 - iou)
        return cost, near | overlap

    def observe(self, ts: float, dets: Detections, may_start: np.ndarray) -> tuple[list[Place], list[Place]]:
        """Match ``dets`` to stays (any detection may continue a stay) and to pending places (only those in
        ``may_start``). Returns (stays seen this frame, stays that began this frame)."""
        self._frame += 1
        n = len(dets)
        free = np.ones(n, bool)
        seen: list[Place] = []
        cols = np.arange(n)
        cost, valid = self._match(self.stays, dets, cols)
        for r, c in greedy_match(cost, valid):
            place = self.stays[r]
            gap = np.linalg.norm(np.asarray(place.ref_anchor) - dets.anchors[c])
            anchor_ok = bool(gap <= self.gate_frac * place.ref_size)
            place.observe(ts, dets, c, reference=anchor_ok)
            free[c] = False
            seen.append(place)
        # a second box on a stay (a duplicate, or a part of the vehicle) must not start a second stay
        if len(self.stays):
            free &= ~valid.any(axis=0)
        cols = np.nonzero(free & may_start)[0]
        self.pending = [p for p in self.pending if ts - p.last_seen <= self.pending_ttl_s][-_MAX_PENDING:]
        cost, valid = self._match(self.pending, dets, cols)
        began: list[Place] = []
        matched_cols: set[int] = set()
        for r, c in greedy_match(cost, valid):
            place = self.pending[r]
            place.observe(ts, dets, int(cols[c]))
            matched_cols.add(c)
            # seen at this place in at least a third of the frames since it was first seen (a lane of traffic
            # passing the same point now and then is not a stationary vehicle; a parked one missed in half
            # of the frames at night still is)
            dense = place.n_obs >= max(2.0, (self._frame - place.first_frame + 1) / 3)
            if ts - place.first_ts >= self.still_s and dense:
                old = self._lapsed_near(place)
                if old is not None:  # the same vehicle, found again a little off its place: keep the stay
                    old.rebase(place)
                    seen.append(old)
                    place.key = old.key
                    continue
                place.key = f"{self.prefix}#{self._next}"
                self._next += 1
                began.append(place)
        for c in range(len(cols)):
            if c not in matched_cols:
                p = Place(first_ts=ts, last_seen=ts, first_frame=self._frame)
                p.observe(ts, dets, int(cols[c]))
                self.pending.append(p)
        self.pending = [p for p in self.pending if not p.is_stay]
        self.stays.extend(began)
        return seen, began

    def _lapsed_near(self, place: Place) -> Place | None:
        """A stay not matched at all since ``place`` was first seen, within ``handover_frac`` × size of it:
        the camera shifted, the vehicle moved up a little, or its box changed shape (door open, trailer)."""
        best, best_d = None, np.inf
        for s in self.stays:
            if s.last_seen >= place.first_ts:
                continue
            d = float(np.hypot(s.ref_anchor[0] - place.ref_anchor[0], s.ref_anchor[1] - place.ref_anchor[1]))
            if d <= self.handover_frac * max(s.ref_size, place.ref_size) and d < best_d:
                best, best_d = s, d
        return best

    def expire(self, ts: float) -> list[Place]:
        """Stays that nothing has matched for more than ``inertia_s``, removed from the book."""
        gone = [p for p in self.stays if ts - p.last_seen > self.inertia_s]
        if gone:
            self.stays = [p for p in self.stays if ts - p.last_seen <= self.inertia_s]
        return gone

    def clear(self) -> list[Place]:
        gone, self.stays, self.pending = self.stays, [], []
        return gone
