from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stream_clock import StreamClock

FRAME_S = 0.04


def _stamps(clock: StreamClock, reads: list[tuple[float, float]]) -> list[float]:
    """Capture times for packets (stream time, read time), in order."""
    return [clock.anchor(t, read) + t for t, read in reads]


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.97, 1.03),
    delays=st.lists(st.floats(0.0, 0.5), min_size=2, max_size=400),
    window_s=st.floats(0.5, 60.0),
)
def test_no_packet_is_stamped_after_it_was_read(rate: float, delays: list[float], window_s: float) -> None:
    clock = StreamClock(window_s)
    reads = [(i * FRAME_S, 1000.0 + i * FRAME_S / rate + d) for i, d in enumerate(delays)]
    for (_t, read), ts in zip(reads, _stamps(clock, reads), strict=True):
        assert ts <= read + 1e-9


@settings(max_examples=25, deadline=None)
@given(
    drift=st.floats(-0.02, 0.02),  # the camera's clock against ours: 2 % either way, far worse than a crystal
    jitter=st.lists(st.floats(0.0, 0.08), min_size=50, max_size=50),
    window_s=st.floats(1.0, 60.0),
)
def test_a_drifting_camera_clock_costs_at_most_window_times_drift(
    drift: float, jitter: list[float], window_s: float
) -> None:
    # 20 minutes of a camera whose clock runs `drift` fast (<0: slow) against ours, read with network jitter:
    # stamped lateness stays within window × |drift| + the jitter, however long it runs. Anchored once,
    # a 2 % slow clock would look 24 s late by then.
    clock = StreamClock(window_s)
    worst = 0.0
    for i in range(int(1200 / FRAME_S)):
        t = i * FRAME_S
        read = 5000.0 + t / (1.0 + drift) + jitter[i % len(jitter)]
        lateness = read - (clock.anchor(t, read) + t)
        if i * FRAME_S > 2 * window_s:
            worst = max(worst, lateness)
    assert worst <= window_s * abs(drift) / (1.0 - abs(drift)) + max(jitter) + 1e-6


@pytest.mark.parametrize("backlog_s", [1.5, 5.0, 20.0])
def test_a_backlog_shorter_than_the_window_shows_in_full(backlog_s: float) -> None:
    # Packets read on time for 60 s, then the reader stalls for backlog_s and reads the rest late: each late
    # packet is stamped at its capture time, so its lateness is there to see (and the keyframe to be shed).
    clock = StreamClock(30.0)
    for i in range(1500):
        clock.anchor(i * FRAME_S, 100.0 + i * FRAME_S)
    late = []
    for i in range(1500, 1500 + int(backlog_s / FRAME_S)):
        t, read = i * FRAME_S, 100.0 + i * FRAME_S + backlog_s
        late.append(read - (clock.anchor(t, read) + t))
    assert min(late) == pytest.approx(backlog_s)


def test_reordered_frames_keep_the_clock_and_a_reset_starts_a_new_one() -> None:
    clock = StreamClock(10.0)
    base = clock.anchor(0.0, 50.0)
    # B-frames: presentation times a frame or two back, read on time
    for t in (0.12, 0.04, 0.08, 0.24, 0.16, 0.2):
        assert clock.anchor(t, 50.0 + 0.24) <= base
    for i in range(7, 250):
        assert clock.anchor(i * FRAME_S, 50.0 + i * FRAME_S) == base
    # the camera restarted its clock: stream time back to 0, read 100 s later; capture = read time
    assert clock.anchor(0.0, 150.0) + 0.0 == pytest.approx(150.0)


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s"):
        StreamClock(0.0)
