"""Camera health as events: a camera whose stream has stalled for a while opens a camera_offline event."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Camera, SiteConfig
from pipeline.events import Event, EventState, EventType, utc
from pipeline.ids import uuid7
from pipeline.protocols import SourceState, SourceStatus


@dataclass
class _Outage:
    event_id: str
    started_wall: float
    seq: int = 1


class CameraHealth:
    """Fed the source status with the current wall and monotonic time; returns an event message or None."""

    def __init__(self, camera: Camera, site: SiteConfig, offline_after_s: float | None = None) -> None:
        self.camera = camera
        self.grid = camera.grid or site.grid
        self.offline_after_s = offline_after_s if offline_after_s is not None else camera.stall_timeout_s
        self._outage: _Outage | None = None
        # when the camera went down: a source that never connects cycles connecting ⇄ backoff, and each
        # change resets status.since, so the outage is timed from the first down state, not the latest
        self._down_since: float | None = None

    def update(self, status: SourceStatus, now_wall: float, now_mono: float) -> Event | None:
        down = status.state in (SourceState.STALLED, SourceState.BACKOFF, SourceState.CONNECTING)
        if not down:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = status.since
        down_for = now_mono - self._down_since if self._down_since is not None else 0.0
        if down and self._outage is None and down_for >= self.offline_after_s:
            started = now_wall - down_for
            self._outage = _Outage(str(uuid7(int(started * 1000))), started)
            return self._event(EventState.OPEN, 0, now_wall, status)
        if not down and self._outage is not None and status.state is SourceState.RUNNING:
            outage, self._outage = self._outage, None
            return self._event(EventState.CLOSED, outage.seq, now_wall, status, outage)
        return None

    def _event(
        self, state: EventState, seq: int, now: float, status: SourceStatus, outage: _Outage | None = None
    ) -> Event:
        o = outage or self._outage
        assert o is not None
        return Event(
            id=o.event_id,
            type=EventType.CAMERA_OFFLINE,
            state=state,
            camera_id=self.camera.id,
            started_at=utc(o.started_wall),
            updated_at=utc(now),
            ended_at=utc(now) if state is EventState.CLOSED else None,
            dwell_s=round(max(now - o.started_wall, 0.0), 1),
            grid=self.grid,
            seq=seq,
        )
