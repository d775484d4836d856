"""Illegal parking in one no_parking / fire_lane zone.

Semantics (for the README):

- A vehicle counts when its label is one of ``zone.labels``, its confidence ≥ ``zone.min_confidence`` and its
  bottom-centre anchor lies in the zone polygon. Once a stay exists, detections down to half that confidence
  keep it alive (night, rain), and the anchor may wander off the polygon edge.
- A *stay* is a place, not a track id: it begins when a vehicle is seen at the same place (anchor within 0.3 ×
  box size of the place's running-median anchor) at least ``still_s`` apart → ``CANDIDATE`` (snapshot: the
  first still). It is continued by any matching vehicle, and ends only after the place has been empty for more
  than ``zone.inertia_s`` → ``CLOSE`` (if opened; ``dwell_s`` = last seen − start) or ``CANCEL`` (never
  opened). Missed detections, a person walking in front, a tracker id switch: the same stay, the same clock.
  A vehicle found standing still again within 0.75 × box size of a stay that lost it (camera bumped, vehicle
  moved up a little, box changed shape) continues that stay too.
- ``OPEN`` (snapshot) when the stay has been present for ``zone.dwell`` *while the schedule is in force*: the
  clock starts at the later of the stay's start and the start of the current schedule period, so a vehicle
  parked before the window opens is reported ``dwell`` after the window opens. Outside the schedule nothing
  opens. An opened event stays open until the vehicle leaves, even if the window ends meanwhile (the offence
  happened).
- After ``OPEN``: one ``UPDATE`` with a snapshot ``max(30 s, dwell/2)`` later (so a stay has ≥ 3 stills, the
  first and the last more than ``dwell`` apart), then an ``UPDATE`` with a snapshot every ``update_every_s``.
  OPEN and UPDATE are only emitted on frames where the vehicle itself was detected, so every still shows it.
- Moving vehicles count for nothing: a detection whose tracker id moved more than the gate within the last
  few seconds neither starts nor continues a stay (ids are only evidence of motion: an id switch or an
  untracked detection counts as not moving). A pending place also has to be matched in at least a third of the
  frames since it was first seen, so a lane of traffic passing one point now and then is not a stay.
- ``exempt(key)`` (e.g. a plate on ``zone.exempt_plates`` was read on the candidate still): the stay never
  opens.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import Zone
from pipeline.detections import LABEL_IDS, Detections
from pipeline.rules.base import RuleSignal, SignalKind
from pipeline.rules.places import MotionFilter, Place, PlaceBook
from pipeline.rules.schedule import Schedule
from pipeline.zones import Polygon


class ParkingRule:
    rule = "parking"

    def __init__(
        self,
        zone: Zone,
        timezone: str = "UTC",
        *,
        still_s: float | None = None,
        gate_frac: float = 0.3,
        keep_confidence_ratio: float = 0.5,
        pending_ttl_s: float = 20.0,
        extra_still_s: float | None = None,
        update_every_s: float = 300.0,
    ) -> None:
        self.zone = zone
        self.polygon = Polygon.of(zone.polygon)
        self.schedule = Schedule(zone.schedule, timezone)
        self.dwell = zone.dwell
        self.label_ids = np.asarray([LABEL_IDS[n] for n in (zone.labels or ["vehicle"])], np.int64)
        self.min_conf = zone.min_confidence
        self.keep_conf = zone.min_confidence * keep_confidence_ratio
        self.extra_still_s = max(30.0, self.dwell / 2) if extra_still_s is None else extra_still_s
        self.update_every_s = update_every_s
        still = min(8.0, self.dwell / 3) if still_s is None else still_s
        self.motion = MotionFilter(gate_frac)
        self.book = PlaceBook(
            zone.id, still_s=still, inertia_s=zone.inertia_s, gate_frac=gate_frac, pending_ttl_s=pending_ttl_s
        )

    # ---- public ------------------------------------------------------------------------------------

    def update(self, dets: Detections, ts: float) -> list[RuleSignal]:
        out = [self._end(p, ts) for p in self.book.expire(ts)]
        keep = np.isin(dets.class_id, self.label_ids) & (dets.confidence >= self.keep_conf)
        d = dets[keep]
        d = d[~self.motion.update(d, ts)]
        may_start = (d.confidence >= self.min_conf) & self.polygon.contains(d.anchors)
        seen, began = self.book.observe(ts, d, may_start)
        for p in began:
            out.append(self._signal(SignalKind.CANDIDATE, p, ts, snapshot=True))
        for p in sorted(seen + began, key=lambda p: int(p.key.rsplit("#", 1)[1])):
            out.extend(self._progress(p, ts))
        return out

    def finish(self, ts: float) -> list[RuleSignal]:
        """End every stay now (shutdown, end of file): CLOSE for opened ones, CANCEL for the rest."""
        return [self._end(p, ts) for p in self.book.clear()]

    def exempt(self, key: str) -> bool:
        """Mark a stay exempt (an authorised plate): it will not open. True if the stay exists."""
        for p in self.book.stays:
            if p.key == key:
                p.exempt = True
                return True
        return False

    @property
    def stays(self) -> list[Place]:
        return list(self.book.stays)

    # ---- internals ---------------------------------------------------------------------------------

    def _progress(self, p: Place, ts: float) -> list[RuleSignal]:
        if p.opened_ts is None:
            if p.exempt:
                return []
            since = self.schedule.active_since(ts)
            if since is not None and ts - max(p.first_ts, since) >= self.dwell:
                p.opened_ts = p.last_update_ts = ts
                p.extra_still_ts = ts + self.extra_still_s
                return [self._signal(SignalKind.OPEN, p, ts, snapshot=True)]
            return []
        if p.extra_still_ts is not None and ts >= p.extra_still_ts:
            p.extra_still_ts = None
            p.last_update_ts = ts
            return [self._signal(SignalKind.UPDATE, p, ts, snapshot=True)]
        due = p.last_update_ts is not None and ts - p.last_update_ts >= self.update_every_s
        if p.extra_still_ts is None and due:
            p.last_update_ts = ts
            return [self._signal(SignalKind.UPDATE, p, ts, snapshot=True)]
        return []

    def _end(self, p: Place, ts: float) -> RuleSignal:
        kind = SignalKind.CLOSE if p.opened_ts is not None else SignalKind.CANCEL
        return self._signal(kind, p, ts, dwell=p.last_seen - p.first_ts)

    def _signal(
        self, kind: SignalKind, p: Place, ts: float, *, snapshot: bool = False, dwell: float | None = None
    ) -> RuleSignal:
        return RuleSignal(
            kind=kind,
            rule=self.rule,
            zone_id=self.zone.id,
            key=p.key,
            ts=ts,
            started_ts=p.first_ts,
            dwell_s=ts - p.first_ts if dwell is None else dwell,
            label=p.label,
            track_id=p.track_id,
            box_xyxy=p.box,
            confidence=p.confidence,
            severity=1,
            snapshot=snapshot,
        )
