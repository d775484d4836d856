"""Compressed-domain gate: skip *decoding* a due keyframe while the stream's packet sizes say nothing moved.

The static-scene gate (``pipeline/gate.py``) saves inference but needs the decoded picture; decoding a 1080p
keyframe is the largest cost left per camera (~20 ms of the ~40 ms a camera costs each second). Between
keyframes an encoder spends bits on what changed, so the mean size of a GOP's P-frames is a free motion
signal: the demuxer reads those packets anyway.

It is only a *hint*, and the gate treats it as one:

- **It must earn trust per stream.** A constant-bitrate encoder spends the same bits on a still scene as on a
  busy one, and packet sizes then say nothing. The gate learns a *quiet level* only from a window of recent
  GOPs (at least ``min_gops``) whose sizes spread by ``spread``× between their 10th and 90th percentiles, i.e.
  that held both still and busy moments; the quiet level is that 10th percentile, and a GOP is quiet within
  ``margin``× of it. A long still night keeps the last level learnt; a long busy day cannot raise it (busy
  GOPs alone have no spread), so busy GOPs are never taken for quiet ones.
- **It is checked against the pixels.** Every decoded keyframe is compared by the static-scene gate; when the
  zones moved although the packets since the last decode looked quiet, that is a miss: the gate switches off
  for ``cooloff_s`` and learns again from scratch. A camera whose encoder fools it keeps being decoded.
- **It never hides a pending decision.** The worker *holds* it (decode every due keyframe) while any tracked
  object overlaps a zone or any incident is open, so rules never decide, and evidence is never taken, on a
  frame that was not decoded.
- **It refreshes.** At least every ``refresh_s`` a due keyframe is decoded anyway.

Threads: the source's reader calls ``gop``/``skip``, the camera worker ``checked``/``hold``; a lock guards the
state. Pure otherwise: no clock (times are stream timestamps), no I/O.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class PacketGateStatus:
    enabled: bool
    reason: str
    quiet_bytes: float | None  # the quiet level (bytes per P-frame), once learnt
    skipped: int
    misses: int


class PacketGate:
    def __init__(
        self,
        *,
        window: int = 600,
        min_gops: int = 20,
        spread: float = 2.0,
        margin: float = 1.3,
        refresh_s: float = 30.0,
        cooloff_s: float = 600.0,
    ) -> None:
        if min_gops < 5 or window < min_gops:
            raise ValueError("need window ≥ min_gops ≥ 5")
        if spread <= margin or margin < 1.0:
            raise ValueError("need spread > margin ≥ 1")
        self.min_gops, self.spread, self.margin = min_gops, spread, margin
        self.refresh_s, self.cooloff_s = refresh_s, cooloff_s
        self._sizes: deque[float] = deque(maxlen=window)
        self._quiet_level: float | None = None
        self._lock = threading.Lock()
        self._held = True  # until the worker has seen the scene
        self._off_until: float | None = None
        self._last_decode_ts: float | None = None
        self._skipped = 0
        self._misses = 0

    # ---- the source's side --------------------------------------------------------------------------

    def gop(self, bytes_per_frame: float) -> None:
        """One finished GOP: the mean size of its non-key packets."""
        with self._lock:
            self._sizes.append(float(bytes_per_frame))
            if len(self._sizes) >= self.min_gops:
                lo, hi = np.percentile(np.fromiter(self._sizes, float), (10, 90))
                if lo > 0 and hi >= self.spread * lo:
                    self._quiet_level = float(lo)

    def skip(self, motion: float, ts: float) -> bool:
        """May the keyframe due at ``ts`` go undecoded? ``motion``: the largest GOP mean (bytes per P-frame)
        since the last decoded keyframe."""
        with self._lock:
            ok = (
                not self._held
                and self._last_decode_ts is not None
                and ts - self._last_decode_ts < self.refresh_s
                and (self._off_until is None or ts >= self._off_until)
                and self._looks_quiet(motion)
            )
            if ok:
                self._skipped += 1
            return ok

    # ---- the worker's side --------------------------------------------------------------------------

    def checked(self, motion: float | None, ts: float, zones_moved: bool) -> None:
        """A decoded keyframe, judged by the pixels: did the zones move since the previous decoded one?"""
        with self._lock:
            self._last_decode_ts = ts
            if motion is None or not zones_moved:
                return
            if self._looks_quiet(motion):
                # the packets said "still" and the pixels disagree: stop trusting them for a while
                self._misses += 1
                self._off_until = ts + self.cooloff_s
                self._sizes.clear()
                self._quiet_level = None

    def hold(self, held: bool) -> None:
        """While held, every due keyframe is decoded (objects in zones, open incidents)."""
        with self._lock:
            self._held = held

    def status(self) -> PacketGateStatus:
        with self._lock:
            quiet = self._quiet_level
            if self._off_until is not None and (self._last_decode_ts or 0.0) < self._off_until:
                reason = "off after a miss (packets looked still, the zones moved)"
            elif quiet is None:
                few = len(self._sizes) < self.min_gops
                reason = "learning" if few else "packet sizes do not track motion (yet)"
            elif self._held:
                reason = "held: objects in zones or incidents open"
            else:
                reason = "active"
            return PacketGateStatus(reason == "active", reason, quiet, self._skipped, self._misses)

    def _looks_quiet(self, motion: float) -> bool:
        """Within the margin of the learnt quiet level (never, before one is learnt). Call under the lock."""
        return self._quiet_level is not None and motion <= self._quiet_level * self.margin
