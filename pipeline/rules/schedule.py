"""When a zone's rule is in force: weekday windows in the site's time zone.

A window belongs to the day it *starts* on: ``days: [fri], start: 22:00, end: 06:00`` runs from Friday 22:00
to Saturday 06:00. ``end`` at or before ``start`` runs past midnight (``end == start`` is a full 24 h); an
``end`` of 23:59:59 means midnight. Windows that touch or overlap merge into one continuous period, so a rule
that needs "dwell of stationary presence inside the schedule" can ask when the current period began
(``active_since``). No windows at all means always in force.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from pipeline.config import ScheduleWindow

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_END_OF_DAY = dtime(23, 59, 59)
_LOOKBACK_DAYS = 8  # a period that has been running longer than this reports its start as 8 days ago
_MERGE_GAP_S = 1.0


class Schedule:
    """Answers ``active(ts)`` and ``active_since(ts)`` for epoch seconds; caches one local day at a time."""

    def __init__(self, windows: Sequence[ScheduleWindow] | None, timezone: str = "UTC") -> None:
        self.windows = list(windows) if windows else []
        self.tz = ZoneInfo(timezone)
        self._day: date | None = None
        self._periods: list[tuple[float, float]] = []

    @property
    def always(self) -> bool:
        return not self.windows

    def active(self, ts: float) -> bool:
        return self.active_since(ts) is not None

    def active_since(self, ts: float) -> float | None:
        """Start (epoch s) of the continuous in-force period containing ``ts``; ``-inf`` when there is no
        schedule; ``None`` when the schedule is not in force at ``ts``."""
        if self.always:
            return -math.inf
        day = datetime.fromtimestamp(ts, self.tz).date()
        if day != self._day:
            self._day = day
            self._periods = self._build(day)
        for start, end in self._periods:
            if start <= ts < end:
                return start
        return None

    def _at(self, d: date, t: dtime) -> float:
        return datetime.combine(d, t, tzinfo=self.tz).timestamp()

    def _build(self, day: date) -> list[tuple[float, float]]:
        raw: list[tuple[float, float]] = []
        for back in range(_LOOKBACK_DAYS, -1, -1):
            d = day - timedelta(days=back)
            name = _DAYS[d.weekday()]
            for w in self.windows:
                if name not in w.days:
                    continue
                start = self._at(d, w.start)
                if w.end == _END_OF_DAY or w.end <= w.start:
                    end_day = d + timedelta(days=1)
                    end_t = dtime(0, 0) if w.end == _END_OF_DAY else w.end
                    end = self._at(end_day, end_t)
                else:
                    end = self._at(d, w.end)
                if end > start:
                    raw.append((start, end))
        raw.sort()
        merged: list[tuple[float, float]] = []
        for start, end in raw:
            if merged and start <= merged[-1][1] + _MERGE_GAP_S:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged
