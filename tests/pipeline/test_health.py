"""camera_offline events follow the source state, with the outage's real start."""

from __future__ import annotations

from pipeline.config import parse_config
from pipeline.events import EventState, EventType
from pipeline.health import CameraHealth
from pipeline.protocols import SourceState, SourceStatus

CFG = parse_config(
    'cameras: [{id: cam, name: C, stall_timeout_s: 5, source: {url: "rtsp://127.0.0.1/x"}, grid: a/b}]'
)


def _st(state: SourceState, since: float) -> SourceStatus:
    return SourceStatus(state=state, since=since)


def test_outage_opens_after_threshold_and_closes_on_recovery() -> None:
    h = CameraHealth(CFG.cameras[0], CFG.site)
    wall0, mono0 = 1_700_000_000.0, 100.0
    assert h.update(_st(SourceState.RUNNING, mono0), wall0, mono0) is None
    assert h.update(_st(SourceState.STALLED, mono0 + 1), wall0 + 3, mono0 + 3) is None  # 2 s: not yet
    opened = h.update(_st(SourceState.BACKOFF, mono0 + 1), wall0 + 7, mono0 + 7)
    assert opened is not None and opened.type is EventType.CAMERA_OFFLINE and opened.state is EventState.OPEN
    assert opened.started_at.timestamp() == wall0 + 1 and opened.grid == "a/b"
    assert (
        h.update(_st(SourceState.CONNECTING, mono0 + 8), wall0 + 9, mono0 + 9) is None
    )  # still the same outage
    closed = h.update(_st(SourceState.RUNNING, mono0 + 20), wall0 + 20, mono0 + 20)
    assert closed is not None and closed.id == opened.id and closed.state is EventState.CLOSED
    assert closed.seq == 1 and closed.dwell_s == 19.0
    assert h.update(_st(SourceState.RUNNING, mono0 + 20), wall0 + 30, mono0 + 30) is None


def test_short_blip_gives_no_event() -> None:
    h = CameraHealth(CFG.cameras[0], CFG.site)
    assert h.update(_st(SourceState.STALLED, 0), 1_700_000_000.0, 2) is None
    assert h.update(_st(SourceState.RUNNING, 3), 1_700_000_001.0, 3) is None
