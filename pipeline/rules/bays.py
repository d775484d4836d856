"""Occupancy of a ``parking_bay`` zone (one bay, or a lot with ``capacity``), with hysteresis.

A vehicle occupies the bay once it has stood still at one place inside it (anchor in the polygon) for
``occupy_s`` (default ``zone.dwell``): a car passing through never does. It keeps occupying it until its place
has been empty for more than ``free_s`` (default ``zone.inertia_s``): a parked car hidden for a while still
does. Places, not track ids, carry the state (see ``pipeline.rules.places``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import Zone
from pipeline.detections import LABEL_IDS, Detections
from pipeline.rules.places import MotionFilter, PlaceBook
from pipeline.zones import Polygon


@dataclass(frozen=True, slots=True)
class BayState:
    occupied: int
    capacity: int
    free: int


class BayRule:
    rule = "bays"

    def __init__(
        self,
        zone: Zone,
        *,
        occupy_s: float | None = None,
        free_s: float | None = None,
        still_s: float | None = None,
        gate_frac: float = 0.3,
    ) -> None:
        self.zone = zone
        self.polygon = Polygon.of(zone.polygon)
        self.capacity = zone.capacity or 1
        self.occupy_s = zone.dwell if occupy_s is None else occupy_s
        self.label_ids = np.asarray([LABEL_IDS[n] for n in (zone.labels or ["vehicle"])], np.int64)
        self.min_conf = zone.min_confidence
        still = min(8.0, self.occupy_s / 2) if still_s is None else still_s
        self.motion = MotionFilter(gate_frac)
        self.book = PlaceBook(
            zone.id,
            still_s=still,
            inertia_s=zone.inertia_s if free_s is None else free_s,
            gate_frac=gate_frac,
        )
        self.state = BayState(0, self.capacity, self.capacity)

    def update(self, dets: Detections, ts: float) -> BayState:
        self.book.expire(ts)
        keep = np.isin(dets.class_id, self.label_ids) & (dets.confidence >= self.min_conf * 0.5)
        d = dets[keep]
        d = d[~self.motion.update(d, ts)]
        may_start = (d.confidence >= self.min_conf) & self.polygon.contains(d.anchors)
        self.book.observe(ts, d, may_start)
        occupied = sum(1 for p in self.book.stays if p.last_seen - p.first_ts >= self.occupy_s)
        occupied = min(occupied, self.capacity)
        self.state = BayState(occupied, self.capacity, self.capacity - occupied)
        return self.state
