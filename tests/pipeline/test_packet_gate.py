"""pipeline/packet_gate.py: when a due keyframe may go undecoded, and when never."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.packet_gate import PacketGate

QUIET, BUSY = 1_000.0, 6_000.0


def learnt(**kw: float) -> PacketGate:
    """A gate that has seen 10 busy and 20 quiet GOPs, decoded a keyframe at t=0 and was released."""
    g = PacketGate(**kw)  # type: ignore[arg-type]
    for size in [BUSY] * 10 + [QUIET] * 20:
        g.gop(size)
    g.checked(QUIET, 0.0, zones_moved=False)
    g.hold(False)
    return g


def test_quiet_gops_skip_busy_ones_decode() -> None:
    g = learnt()
    assert g.status().enabled and g.status().quiet_bytes == pytest.approx(QUIET)
    assert g.skip(QUIET * 1.1, 1.0)
    assert not g.skip(QUIET * 1.5, 2.0)  # beyond the margin
    assert not g.skip(BUSY, 3.0)
    assert g.status().skipped == 1


def test_learning_then_no_spread_never_skips() -> None:
    g = PacketGate()
    g.checked(None, 0.0, zones_moved=False)
    g.hold(False)
    for _ in range(19):
        g.gop(QUIET)
    assert not g.skip(0.0, 1.0) and g.status().reason == "learning"
    for _ in range(100):  # a constant-bitrate encoder: sizes never spread, so they say nothing
        g.gop(QUIET)
    assert not g.skip(0.0, 2.0)
    assert "do not track motion" in g.status().reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(900.0, 1_700.0), min_size=20, max_size=200), st.floats(0.0, 1e6))
def test_sizes_without_spread_never_enable(sizes: list[float], motion: float) -> None:
    """Within a factor of < 2 (what a CBR stream looks like), no sequence of sizes ever allows a skip."""
    g = PacketGate()
    g.checked(0.0, 0.0, zones_moved=False)
    g.hold(False)
    for i, s in enumerate(sizes):
        g.gop(s)
        assert not g.skip(motion, 0.5 + i * 0.01)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1.0, 1e6), min_size=0, max_size=300),
    st.floats(0.0, 1e7),
    st.booleans(),
)
def test_never_skips_motion_above_every_size_seen_nor_while_held(
    sizes: list[float], extra: float, held: bool
) -> None:
    g = PacketGate()
    g.checked(0.0, 0.0, zones_moved=False)
    g.hold(held)
    for s in sizes:
        g.gop(s)
    above = max(sizes, default=0.0) * 1.3 + 1.0 + extra  # above the quiet level × margin, whatever it is
    assert not g.skip(above, 1.0)
    if held:
        assert not g.skip(0.0, 1.0)


def test_held_and_never_decoded_do_not_skip() -> None:
    g = learnt()
    g.hold(True)
    assert not g.skip(0.0, 1.0) and "held" in g.status().reason
    fresh = PacketGate()
    for size in [BUSY] * 10 + [QUIET] * 20:
        fresh.gop(size)
    fresh.hold(False)
    assert not fresh.skip(0.0, 1.0)  # nothing decoded yet on this camera


def test_refresh_forces_a_decode() -> None:
    g = learnt(refresh_s=10.0)
    assert g.skip(QUIET, 9.9)
    assert not g.skip(QUIET, 10.0)
    g.checked(QUIET, 10.0, zones_moved=False)
    assert g.skip(QUIET, 11.0)


def test_a_miss_switches_it_off_then_it_learns_again() -> None:
    g = learnt(cooloff_s=100.0)
    assert g.skip(QUIET, 1.0)
    g.checked(QUIET, 2.0, zones_moved=True)  # the packets said still, the zones moved
    st_ = g.status()
    assert st_.misses == 1 and not st_.enabled and st_.quiet_bytes is None
    for size in [BUSY] * 10 + [QUIET] * 20:
        g.gop(size)
    assert not g.skip(QUIET, 50.0)  # cooling off
    g.checked(QUIET, 101.0, zones_moved=False)
    assert g.skip(QUIET, 102.0)


def test_busy_day_cannot_raise_the_quiet_level() -> None:
    g = learnt(window=40)
    for _ in range(200):  # a long busy stretch: the window holds busy GOPs only
        g.gop(BUSY * 1.1)
    assert g.status().quiet_bytes == pytest.approx(QUIET)
    assert not g.skip(BUSY, 1.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PacketGate(min_gops=2)
    with pytest.raises(ValueError):
        PacketGate(spread=1.2, margin=1.3)
