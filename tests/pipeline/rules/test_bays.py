from __future__ import annotations

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pipeline.config import Zone
from pipeline.rules.bays import BayRule, BayState
from pipeline.tracking import Tracker
from tests.pipeline.rules.scenarios import SPOT, T0, ZONE_POLY, Obj, parked, passing, stream

PROPS = settings(
    deadline=None, max_examples=40, phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
)


def bay(**kw: object) -> Zone:
    data: dict[str, object] = {"id": "bay-1", "type": "parking_bay", "polygon": ZONE_POLY, "inertia_s": 30}
    data.update(kw)
    return Zone.model_validate(data)


def replay(rule: BayRule, frames: list) -> list[tuple[float, BayState]]:
    tracker = Tracker()
    return [(ts, rule.update(tracker.update(d, ts), ts)) for ts, d in frames]


@PROPS
@given(
    rate=st.floats(0.5, 4),
    jitter=st.floats(0, 3),
    drop=st.floats(0, 0.3),
    seed=st.integers(0, 2**32 - 1),
    hidden=st.floats(0, 20),
    passers=st.lists(st.floats(40, 250), max_size=3),
)
def test_parked_car_occupies_passing_cars_do_not(
    rate: float, jitter: float, drop: float, seed: int, hidden: float, passers: list[float]
) -> None:
    t_arrive, t_leave = T0 + 10, T0 + 200
    car = Obj(parked(t_arrive, t_leave), hidden=[(T0 + 100, T0 + 100 + hidden)])
    objs = [car] + [Obj(passing(T0 + 20 + 40 * i, v, y=550)) for i, v in enumerate(passers)]
    frames = stream(objs, T0, t_leave + 60, rate=rate, jitter=jitter, drop=drop, seed=seed)
    states = replay(BayRule(bay()), frames)  # occupy after 30 s (parking_bay dwell), free after 30 s empty
    for ts, s in states:
        assert s.capacity == 1 and s.free == 1 - s.occupied
        if ts < t_arrive + 30 - 1:
            assert s.occupied == 0, ts - T0
        if t_arrive + 50 <= ts <= t_leave:
            assert s.occupied == 1, ts - T0
        if ts > t_leave + 30 + 1:
            assert s.occupied == 0, ts - T0


def test_traffic_only_never_occupies() -> None:
    objs = [Obj(passing(T0 + 15 * i, 40 + 20 * i, y=420 + 30 * (i % 4))) for i in range(10)]
    states = replay(BayRule(bay()), stream(objs, T0, T0 + 300, rate=2, jitter=3, drop=0.2, seed=3))
    assert all(s.occupied == 0 for _, s in states)


def test_lot_capacity() -> None:
    spots = [(300.0 + 120 * i, 450.0) for i in range(4)]
    objs = [Obj(parked(T0 + 10, T0 + 300, spot=s, approach=0.0)) for s in spots]
    rule = BayRule(bay(capacity=3, dwell_s=20))
    states = replay(rule, stream(objs, T0, T0 + 200, rate=1, jitter=2, seed=1))
    assert states[-1][1] == BayState(occupied=3, capacity=3, free=0)
    assert len(rule.book.stays) == 4


def test_hidden_car_still_occupies_until_free_s() -> None:
    rule = BayRule(bay(dwell_s=10), free_s=60)
    car = Obj(parked(T0, T0 + 1000, spot=SPOT, approach=0.0), hidden=[(T0 + 100, T0 + 1000)])
    states = replay(rule, stream([car], T0, T0 + 300, rate=1, seed=2))

    def at(t: float) -> int:
        return next(s.occupied for ts, s in states if ts >= T0 + t)

    assert at(50) == 1 and at(150) == 1 and at(250) == 0
