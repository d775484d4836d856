"""LagMeter: whether the detector keeps up with a camera, from its counters and its results' ages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.lag import LATE_S, MIN_DUE, MIN_RESULTS, RECOVER, SHED_SHARE, WINDOW_S, LagMeter


def test_nothing_seen_says_nothing() -> None:
    lag = LagMeter().lag(100.0)
    assert (lag.result_age_s, lag.shed_share, lag.behind) == (None, None, False)


def test_late_results_are_behind_and_on_time_ones_are_not() -> None:
    for late, behind in ((1, False), (2, True)):  # of 20 results: the p95 falls between the 19th and 20th
        m = LagMeter()
        for i in range(20):
            m.result(100.0 + i, 3.0 if i < late else 0.4)
        lag = m.lag(120.0)
        assert lag.result_age_s is not None and (lag.result_age_s > LATE_S) is behind
        assert lag.behind is behind


def test_shed_share_is_over_the_window_only() -> None:
    m = LagMeter()
    # a bad start (half the due frames shed), then 60 s of keeping up
    m.counts(0.0, 0, 0)
    m.counts(10.0, 10, 10)
    assert m.lag(10.0).shed_share == 0.5 and m.lag(10.0).behind
    for t in range(12, 72, 2):
        m.counts(float(t), 10 + (t - 10) // 2, 10)
    lag = m.lag(70.0)
    assert lag.shed_share == 0.0 and not lag.behind


def test_a_few_due_frames_or_results_are_not_judged() -> None:
    m = LagMeter()
    m.counts(0.0, 0, 0)
    m.counts(5.0, 1, MIN_DUE - 2)  # nearly all shed, but too few to say
    for i in range(MIN_RESULTS - 1):
        m.result(1.0 + i, 60.0)
    lag = m.lag(5.0)
    assert (lag.result_age_s, lag.shed_share, lag.behind) == (None, None, False)


def test_results_older_than_the_window_are_forgotten() -> None:
    m = LagMeter()
    for i in range(10):
        m.result(float(i), 9.0)
    assert m.lag(10.0).behind
    assert m.lag(10.0 + WINDOW_S).result_age_s is None
    assert not m.lag(10.0 + WINDOW_S).behind


def test_counters_that_start_again_start_a_new_window() -> None:
    m = LagMeter()
    m.counts(0.0, 0, 0)
    m.counts(10.0, 5, 50)
    m.counts(12.0, 2, 0)  # a new source: its shed counter starts at 0 again
    m.counts(20.0, 20, 0)
    lag = m.lag(20.0)
    assert lag.shed_share == 0.0 and not lag.behind


def test_a_camera_hovering_at_the_bound_stays_behind_until_clearly_back() -> None:
    m = LagMeter()
    m.counts(0.0, 0, 0)
    handled = shed = 0
    verdicts = []
    # 30 s windows of 100 due frames each, shedding 12, 8, 12, 8, then 3 of them
    for t, n_shed in zip(range(30, 181, 30), (12, 8, 12, 8, 3, 3), strict=True):
        handled, shed = handled + 100 - n_shed, shed + n_shed
        m.counts(float(t), handled, shed)
        verdicts.append(m.lag(float(t)).behind)
    assert verdicts == [True, True, True, True, False, False]


# counter steps: (seconds later, due frames handled, due frames shed)
steps = st.lists(
    st.tuples(st.floats(0.1, 20.0), st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=40
)


@given(steps)
def test_the_share_shed_is_a_share_and_judged_against_the_bound(seq: list[tuple[float, int, int]]) -> None:
    m = LagMeter()
    now, handled, shed = 0.0, 0, 0
    m.counts(now, handled, shed)
    for dt, dh, ds in seq:
        now, handled, shed = now + dt, handled + dh, shed + ds
        m.counts(now, handled, shed)
        lag = m.lag(now)
        if lag.shed_share is not None:
            assert 0.0 <= lag.shed_share <= 1.0
        if lag.shed_share is not None and lag.shed_share > SHED_SHARE:
            assert lag.behind
        if lag.shed_share is None or lag.shed_share <= RECOVER * SHED_SHARE:
            assert not lag.behind  # no results' ages here: the share alone decides


@given(steps, st.lists(st.floats(-0.5, LATE_S), max_size=60))
def test_keeping_every_due_frame_on_time_is_never_behind(
    seq: list[tuple[float, int, int]], ages: list[float]
) -> None:
    m = LagMeter()
    now = 0.0
    handled = 0
    m.counts(now, 0, 0)
    for i, (dt, dh, _) in enumerate(seq):
        now, handled = now + dt, handled + dh
        m.counts(now, handled, 0)
        for a in ages[i :: len(seq)]:
            m.result(now, a)
        assert not m.lag(now).behind


@given(st.lists(st.floats(LATE_S + 0.01, 600.0), min_size=MIN_RESULTS, max_size=60), st.floats(0.0, WINDOW_S))
def test_every_result_late_is_behind_until_the_window_has_passed(ages: list[float], wait_s: float) -> None:
    m = LagMeter()
    for a in ages:
        m.result(50.0, a)
    assert m.lag(50.0 + wait_s).behind
    assert not m.lag(50.0 + WINDOW_S + 0.01).behind
