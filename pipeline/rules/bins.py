"""Overflowing bin stations: one rule per ``bin_station`` zone.

Semantics (for the README):

- Each frame is one observation of the station: **dirty** when a detection labelled one of ``zone.labels``
  (bin_overflow, litter) with confidence ≥ ``zone.min_confidence`` has ≥ ``min_overlap`` of its lower half in
  the polygon; otherwise **unknown** when persons/vehicles cover ≥ ``occlusion_frac`` of the station or (with
  ``require_bin_visible``) no bin is seen there at all; otherwise **clean**.
- Unknown observations neither advance nor reset any timer: time counts only over intervals between two known
  observations (each interval capped at ``max_gap_s``).
- The first dirty observation starts an episode → ``CANDIDATE`` (snapshot, plus ``ref_ts`` = the last clean
  observation, the ideal "before" still). Dirty time accumulates over intervals that end on a dirty
  observation; at ≥ ``zone.dwell`` → ``OPEN`` (snapshot). A candidate is cancelled (``CANCEL``) after
  ``cancel_s`` of consecutive clean observations, so single-frame flicker never opens anything.
- An open episode closes after ≥ ``zone.clear_s`` of consecutive clean observations → ``CLOSE`` (snapshot: the
  "after" still); any dirty observation resets that clean clock (hysteresis).
- Severity 1 = overflow only, 2 = litter, 3 = both, or large (dirty boxes ≥ ``large_frac`` of the station
  area, or ≥ 3 litter heaps); smoothed over the last 5 dirty observations. ``UPDATE`` (snapshot) when it
  changes (at most every ``min_update_s``), and every ``update_every_s`` (no snapshot).
- With detections every ``d`` seconds and no unknown frames, OPEN comes within ``dwell + 2d`` of the
  overflow's start and CLOSE within ``clear_s + 2d`` of its end.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

import numpy as np

from pipeline.config import Zone
from pipeline.detections import BIN, BIN_OVERFLOW, LABEL_IDS, LITTER, PERSON, VEHICLE, Detections
from pipeline.rules.base import RuleSignal, SignalKind
from pipeline.zones import Polygon, box_overlap_fraction


class Observation(StrEnum):
    CLEAN = "clean"
    DIRTY = "dirty"
    UNKNOWN = "unknown"


def _polygon_samples(poly: Polygon, n: int = 16) -> np.ndarray:
    (x0, y0), (x1, y1) = poly.points.min(axis=0), poly.points.max(axis=0)
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    gx, gy = np.meshgrid(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    inside = pts[poly.contains(pts)]
    return inside if len(inside) else poly.points.mean(axis=0, keepdims=True)


class BinRule:
    rule = "bins"

    def __init__(
        self,
        zone: Zone,
        *,
        min_overlap: float = 0.3,
        occlusion_frac: float = 0.3,
        require_bin_visible: bool = True,
        cancel_s: float | None = None,
        large_frac: float = 0.5,
        min_update_s: float = 30.0,
        update_every_s: float = 600.0,
        max_gap_s: float = 60.0,
    ) -> None:
        self.zone = zone
        self.polygon = Polygon.of(zone.polygon)
        self.samples = _polygon_samples(self.polygon)
        self.area = max(self.polygon.area, 1.0)
        self.dirty_ids = np.asarray(
            [LABEL_IDS[n] for n in (zone.labels or []) if LABEL_IDS[n] in (BIN_OVERFLOW, LITTER)]
            or [BIN_OVERFLOW, LITTER],
            np.int64,
        )
        self.min_conf = zone.min_confidence
        self.min_overlap = min_overlap
        self.occlusion_frac = occlusion_frac
        self.require_bin_visible = require_bin_visible
        self.dwell = zone.dwell
        self.clear_s = zone.clear_s
        self.cancel_s = min(zone.clear_s, zone.dwell) / 2 if cancel_s is None else cancel_s
        self.large_frac = large_frac
        self.min_update_s = min_update_s
        self.update_every_s = update_every_s
        self.max_gap_s = max_gap_s
        self.bbox = tuple(float(v) for v in self.polygon.bbox)
        # state
        self.observation: Observation | None = None  # of the latest frame
        self.last_clean_ts: float | None = None
        self._prev_ts: float | None = None
        self._n = 0
        self.key: str | None = None
        self.opened_ts: float | None = None
        self._started = 0.0
        self._last_dirty = 0.0
        self._dirty_acc = 0.0
        self._clean_run = 0.0
        self._sev_hist: deque[int] = deque(maxlen=5)
        self._severity = 1
        self._last_update = 0.0
        self._box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
        self._label = "bin_overflow"
        self._conf = 0.0

    # ---- observation --------------------------------------------------------------------------------

    def classify(self, dets: Detections) -> tuple[Observation, int, Detections]:
        """This frame's observation of the station, its raw severity and the dirty detections."""
        d = dets[dets.confidence >= self.min_conf]
        over = box_overlap_fraction(d.xyxy, self.polygon) >= self.min_overlap
        dirty = d[over & np.isin(d.class_id, self.dirty_ids)]
        if len(dirty):
            overflow = bool(np.any(dirty.class_id == BIN_OVERFLOW))
            n_litter = int(np.count_nonzero(dirty.class_id == LITTER))
            wh = np.clip(dirty.xyxy[:, 2:] - dirty.xyxy[:, :2], 0, None)
            large = float(np.sum(wh[:, 0] * wh[:, 1])) >= self.large_frac * self.area or n_litter >= 3
            sev = 3 if (overflow and n_litter) or large else 2 if n_litter else 1
            return Observation.DIRTY, sev, dirty
        occ = d.xyxy[np.isin(d.class_id, [PERSON, VEHICLE])]
        if len(occ):
            px, py = self.samples[:, 0:1], self.samples[:, 1:2]
            covered = (px >= occ[:, 0]) & (px <= occ[:, 2]) & (py >= occ[:, 1]) & (py <= occ[:, 3])
            if covered.any(axis=1).mean() >= self.occlusion_frac:
                return Observation.UNKNOWN, 0, dirty
        if self.require_bin_visible and not np.any(over & np.isin(d.class_id, [BIN, BIN_OVERFLOW])):
            return Observation.UNKNOWN, 0, dirty
        return Observation.CLEAN, 0, dirty

    # ---- public -------------------------------------------------------------------------------------

    def update(self, dets: Detections, ts: float) -> list[RuleSignal]:
        obs, sev, dirty = self.classify(dets)
        prev, prev_ts = self.observation, self._prev_ts
        known_dt = 0.0
        known = prev in (Observation.CLEAN, Observation.DIRTY) and obs is not Observation.UNKNOWN
        if known and prev_ts is not None:
            known_dt = min(max(ts - prev_ts, 0.0), self.max_gap_s)
        self.observation, self._prev_ts = obs, ts
        out: list[RuleSignal] = []
        if obs is Observation.DIRTY:
            self._see_dirty(ts, sev, dirty)
            if self.key is None:
                self._n += 1
                self.key = f"{self.zone.id}#{self._n}"
                self._started, self._dirty_acc, self._clean_run = ts, 0.0, 0.0
                self._sev_hist.clear()
                self._sev_hist.append(sev)
                self._severity = sev
                out.append(self._signal(SignalKind.CANDIDATE, ts, snapshot=True, ref_ts=self.last_clean_ts))
            else:
                self._dirty_acc += known_dt
                self._clean_run = 0.0
            out.extend(self._progress(ts))
        elif obs is Observation.CLEAN:
            self.last_clean_ts = ts
            if self.key is not None:
                if prev is Observation.CLEAN:
                    self._clean_run += known_dt
                limit = self.clear_s if self.opened_ts is not None else self.cancel_s
                if self._clean_run >= limit:
                    out.append(self._end(ts))
        return out

    def finish(self, ts: float) -> list[RuleSignal]:
        """End the episode now (shutdown, end of file)."""
        return [self._end(ts)] if self.key is not None else []

    # ---- internals ----------------------------------------------------------------------------------

    def _see_dirty(self, ts: float, sev: int, dirty: Detections) -> None:
        self._last_dirty = ts
        x0, y0 = dirty.xyxy[:, :2].min(axis=0)
        x1, y1 = dirty.xyxy[:, 2:].max(axis=0)
        self._box = (float(x0), float(y0), float(x1), float(y1))
        self._label = "bin_overflow" if np.any(dirty.class_id == BIN_OVERFLOW) else "litter"
        self._conf = float(dirty.confidence.max())
        self._sev_hist.append(sev)

    def _smoothed(self) -> int:
        h = sorted(self._sev_hist)
        return h[(len(h) - 1) // 2]

    def _progress(self, ts: float) -> list[RuleSignal]:
        if self.opened_ts is None:
            if self._dirty_acc >= self.dwell:
                self.opened_ts = self._last_update = ts
                self._severity = self._smoothed()
                return [self._signal(SignalKind.OPEN, ts, snapshot=True)]
            return []
        sev = self._smoothed()
        if sev != self._severity and ts - self._last_update >= self.min_update_s:
            self._severity = sev
            self._last_update = ts
            return [self._signal(SignalKind.UPDATE, ts, snapshot=True)]
        if ts - self._last_update >= self.update_every_s:
            self._last_update = ts
            return [self._signal(SignalKind.UPDATE, ts)]
        return []

    def _end(self, ts: float) -> RuleSignal:
        if self.opened_ts is not None:
            self._box = self.bbox  # type: ignore[assignment]
            s = self._signal(SignalKind.CLOSE, ts, snapshot=True, dwell=self._last_dirty - self._started)
        else:
            s = self._signal(SignalKind.CANCEL, ts, dwell=self._last_dirty - self._started)
        self.key = None
        self.opened_ts = None
        return s

    def _signal(
        self,
        kind: SignalKind,
        ts: float,
        *,
        snapshot: bool = False,
        dwell: float | None = None,
        ref_ts: float | None = None,
    ) -> RuleSignal:
        assert self.key is not None
        return RuleSignal(
            kind=kind,
            rule=self.rule,
            zone_id=self.zone.id,
            key=self.key,
            ts=ts,
            started_ts=self._started,
            dwell_s=ts - self._started if dwell is None else dwell,
            label=self._label,
            box_xyxy=self._box,
            confidence=self._conf,
            severity=self._severity,
            snapshot=snapshot,
            ref_ts=ref_ts,
        )
