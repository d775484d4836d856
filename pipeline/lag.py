"""Is the detector keeping up with a camera? The signal an operator needs when a box carries more cameras
than it can serve (README, Performance): such a box does not fail, it sheds due frames and its results
come later, so every camera still looks "running". ``LagMeter`` turns a worker's counters and its results'
ages into a verdict over a sliding window; the worker reports it with the camera's status.

No clock and no I/O here: every time is passed in (monotonic seconds for the window, ages in seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

WINDOW_S = 30.0  # judged over this much time: ~30 due frames at 1 det/s (one status interval is too few)
# ... and over at least this many due frames: a camera detecting every 5 s is judged over 75 s, not 30 s
# (6 due frames, under MIN_DUE: its shed share was never judged)
WINDOW_DUE = 15
# Defaults of detector.behind_result_age_s and detector.behind_shed_share (pipeline/config.py):
LATE_S = 2.0  # p95 frame → result above this is late (the latency the benchmarks hold a box to)
SHED_SHARE = 0.1  # more than this share of due frames shed (never detected) is falling behind
# A camera's first seconds are not judged: connecting, and the detector's queue while every camera's first
# frames arrive at once, say nothing about whether the box keeps up. Judged on them (a busy box restarted
# at its knee: a third of the cameras), the verdict then held by hysteresis for as long as the camera
# stayed between the bounds and RECOVER × them, though it kept up.
WARMUP_S = 10.0
MIN_RESULTS = 5  # fewer results in the window say nothing about their p95
MIN_DUE = 10  # nor fewer due frames about the share shed
# A camera judged behind is cleared only once both figures are back under this share of their bounds: at a
# box's knee they hover around the bounds, and the dashboard tile would flip with every status report.
RECOVER = 0.6


@dataclass(frozen=True, slots=True)
class Lag:
    result_age_s: float | None  # p95 capture → result over the window; None: too few results (or warming up)
    shed_share: float | None  # due frames shed ÷ due frames over the window; None: too few due frames
    behind: bool
    # why, now: each figure over its bound (behind with neither: held by hysteresis until both are clear)
    late: bool = False
    shedding: bool = False


class LagMeter:
    """``result(now, age_s)`` for each detector result; ``counts(now, handled, shed)`` with the camera's
    cumulative counters (due frames that got a result — detected, gated or carried — and due frames shed:
    refused or replaced before the detector saw them) whenever status is taken; ``lag(now)`` judges, with
    hysteresis (``RECOVER``): call it from one thread, the one that takes status. Nothing from the first
    ``warmup_s`` after the meter was first told anything is judged."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        late_s: float = LATE_S,
        shed_share: float = SHED_SHARE,
        warmup_s: float = WARMUP_S,
    ) -> None:
        self.window_s = window_s
        self.late_s = late_s
        self.max_shed_share = shed_share
        self.warmup_s = warmup_s
        self._first: float | None = None  # when the meter was first told anything (a result or counters)
        self._ages: deque[tuple[float, float]] = deque(maxlen=512)
        self._counts: deque[tuple[float, int, int]] = deque()
        self._behind = False

    @classmethod
    def for_camera(
        cls, detect_fps: float, late_s: float = LATE_S, shed_share: float = SHED_SHARE
    ) -> LagMeter:
        """A meter whose window holds at least ``WINDOW_DUE`` of the camera's due frames."""
        return cls(max(WINDOW_S, WINDOW_DUE / detect_fps), late_s, shed_share, warmup_s=WARMUP_S)

    def result(self, now: float, age_s: float) -> None:
        if self._first is None:  # inference threads race here only to within one result's time
            self._first = now
        self._ages.append((now, age_s))

    def counts(self, now: float, handled: int, shed: int) -> None:
        if self._first is None:
            self._first = now
        if self._counts and (handled < self._counts[-1][1] or shed < self._counts[-1][2]):
            self._counts.clear()  # counters started again (a restarted worker): the old window means nothing
        self._counts.append((now, handled, shed))
        # keep one snapshot at or before the window's start, so the window is covered whole
        while len(self._counts) > 2 and self._counts[1][0] <= now - self.window_s:
            self._counts.popleft()

    def lag(self, now: float) -> Lag:
        warm = self._first + self.warmup_s if self._first is not None else now
        start = max(now - self.window_s, warm)
        # result() runs on inference threads: list() copies the deque in one step under the GIL
        ages = [a for t, a in list(self._ages) if t >= start]
        age = float(np.percentile(ages, 95)) if len(ages) >= MIN_RESULTS else None
        share = None
        snaps = [c for c in self._counts if c[0] >= warm]
        if len(snaps) >= 2:
            # from the snapshot at or before the window's start (the window covered whole), else the first
            # one after the warm-up
            (_, h0, s0) = next((c for c in reversed(snaps) if c[0] <= start), snaps[0])
            (_, h1, s1) = snaps[-1]
            due = (h1 - h0) + (s1 - s0)
            share = (s1 - s0) / due if due >= MIN_DUE else None
        late = age is not None and age > self.late_s
        shedding = share is not None and share > self.max_shed_share
        clear = (age is None or age <= RECOVER * self.late_s) and (
            share is None or share <= RECOVER * self.max_shed_share
        )
        self._behind = late or shedding or (self._behind and not clear)
        return Lag(age, share, self._behind, late, shedding)
