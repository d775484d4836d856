from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pipeline.config import ScheduleWindow
from pipeline.detections import PERSON, VEHICLE, Detections
from pipeline.rules.base import RuleSignal, SignalKind
from pipeline.rules.parking import ParkingRule
from pipeline.rules.schedule import Schedule
from pipeline.tracking import Tracker
from tests.pipeline.rules.scenarios import SPOT, T0, Obj, box_at, parked, passing, stream, zone

TZ = "Asia/Shanghai"
# no "explain" phase: its line tracer makes failing examples ~10× slower on Python 3.11
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
PROPS = settings(deadline=None, max_examples=60, phases=PHASES)
K = SignalKind


def run(rule: ParkingRule, frames: list[tuple[float, Detections]], track: bool = True) -> list[RuleSignal]:
    tracker = Tracker()
    out: list[RuleSignal] = []
    for ts, d in frames:
        out.extend(rule.update(tracker.update(d, ts) if track else d, ts))
    return out


def kinds(signals: list[RuleSignal], kind: SignalKind) -> list[RuleSignal]:
    return [s for s in signals if s.kind is kind]


def assert_lifecycles(signals: list[RuleSignal]) -> None:
    """Per key: CANDIDATE first; then either CANCEL, or OPEN, UPDATE…, CLOSE; nothing after the end."""
    by_key: dict[str, list[SignalKind]] = {}
    for s in signals:
        by_key.setdefault(s.key, []).append(s.kind)
    for key, ks in by_key.items():
        assert ks[0] is K.CANDIDATE, (key, ks)
        if K.OPEN in ks:
            assert ks.count(K.OPEN) == 1 and ks.index(K.OPEN) == 1, (key, ks)
            assert all(k is K.UPDATE for k in ks[2:-1]), (key, ks)
            assert ks[-1] in (K.CLOSE, K.UPDATE, K.OPEN), (key, ks)
        else:
            assert ks[1:] in ([], [K.CANCEL]), (key, ks)
    ts = [s.ts for s in signals]
    assert ts == sorted(ts)


scenario = st.fixed_dictionaries(
    {
        "dwell": st.floats(20, 120),
        "inertia": st.floats(15, 90),
        "rate": st.floats(0.5, 10),
        "jitter": st.floats(0, 3),
        "drop": st.floats(0, 0.3),
        "seed": st.integers(0, 2**32 - 1),
        "extra": st.floats(20, 120),
        "passers": st.lists(st.tuples(st.floats(0, 1), st.floats(40, 250)), max_size=3),
        "occlusion": st.none() | st.tuples(st.floats(0, 1), st.floats(0, 1)),
    }
)


@settings(PROPS, max_examples=40)
@given(scenario)
def test_parked_beyond_dwell_gives_one_open_and_one_close(p: dict) -> None:
    dwell, inertia = p["dwell"], p["inertia"]
    t_arrive = T0 + 10
    occl = []
    park = dwell + p["extra"]
    if p["occlusion"] is not None:  # shorter than inertia, from ≥ 30 s after arrival to ≥ 20 s before leaving
        # (max(…, 0) alone let short stays be hidden until the car drove off: no stationary sighting past the
        # dwell exists then, and no rule could, or should, open on it)
        length = min(p["occlusion"][1] * (inertia - 10), park - 50)
        if length > 0:
            start = t_arrive + 30 + p["occlusion"][0] * (park - 50 - length)
            occl = [(start, start + length)]
    t_leave = t_arrive + park
    objs = [Obj(parked(t_arrive, t_leave), hidden=occl)]
    objs += [Obj(passing(t_arrive + f * park, v)) for f, v in p["passers"]]
    frames = stream(
        objs, T0, t_leave + inertia + 30, rate=p["rate"], jitter=p["jitter"], drop=p["drop"], seed=p["seed"]
    )
    signals = run(ParkingRule(zone(dwell_s=dwell, inertia_s=inertia), TZ), frames)
    assert_lifecycles(signals)
    opens, closes = kinds(signals, K.OPEN), kinds(signals, K.CLOSE)
    assert len(opens) == 1 and len(closes) == 1, signals
    o, c = opens[0], closes[0]
    assert o.key == c.key
    assert o.snapshot and o.dwell_s >= dwell
    # exact timing, from the frames in which the car was detected standing at its spot
    at_spot = [ts for ts, d in frames if np.any(np.linalg.norm(d.anchors - np.asarray(SPOT), axis=1) < 8)]
    assert t_arrive - 1 <= o.started_ts <= t_arrive + 15
    assert o.ts == next(ts for ts in at_spot if ts - o.started_ts >= dwell)  # as the rule subtracts (float)
    last_seen = o.started_ts + c.dwell_s
    assert at_spot[-1] <= last_seen <= t_leave + 0.5
    assert c.ts == next(ts for ts, _ in frames if ts > last_seen + inertia)
    # evidence: ≥ 3 stills over the stay (candidate, open, a later update), the first and last > dwell apart
    stills = [s for s in signals if s.key == o.key and s.snapshot]
    if t_leave - o.ts > max(30.0, dwell / 2) + 10:
        assert len(stills) >= 3
        assert stills[-1].ts - stills[0].ts > dwell
    # every OPEN/UPDATE still shows the vehicle at its place
    for s in stills[1:]:
        assert s.box_xyxy is not None
        assert abs((s.box_xyxy[0] + s.box_xyxy[2]) / 2 - SPOT[0]) < 10


@PROPS
@given(
    dwell=st.floats(20, 120),
    frac=st.floats(0, 1),
    rate=st.floats(0.5, 10),
    jitter=st.floats(0, 3),
    drop=st.floats(0, 0.3),
    seed=st.integers(0, 2**32 - 1),
)
def test_vehicle_leaving_before_dwell_gives_no_violation(
    dwell: float, frac: float, rate: float, jitter: float, drop: float, seed: int
) -> None:
    t_arrive = T0 + 10
    t_leave = t_arrive + frac * (dwell - 3)
    frames = stream(
        [Obj(parked(t_arrive, t_leave))], T0, t_leave + 150, rate=rate, jitter=jitter, drop=drop, seed=seed
    )
    signals = run(ParkingRule(zone(dwell_s=dwell, inertia_s=60), TZ), frames)
    assert_lifecycles(signals)
    assert not kinds(signals, K.OPEN) and not kinds(signals, K.CLOSE) and not kinds(signals, K.UPDATE)
    assert len(kinds(signals, K.CANDIDATE)) == len(kinds(signals, K.CANCEL)) <= 1


@PROPS
@given(
    n=st.integers(1, 4),
    rate=st.floats(0.5, 10),
    seed=st.integers(0, 2**32 - 1),
    speeds=st.lists(st.floats(40, 300), min_size=4, max_size=4),
)
def test_traffic_driving_through_gives_nothing(n: int, rate: float, seed: int, speeds: list[float]) -> None:
    objs = [Obj(passing(T0 + 20 * i, speeds[i], y=400 + 40 * i)) for i in range(n)]
    frames = stream(objs, T0, T0 + 200, rate=rate, jitter=3, drop=0.2, seed=seed)
    assert run(ParkingRule(zone(dwell_s=20, inertia_s=30), TZ), frames) == []


def _local(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, ZoneInfo(TZ))


@PROPS
@given(
    dwell=st.floats(20, 120),
    rate=st.floats(0.5, 2),
    seed=st.integers(0, 2**32 - 1),
    gap_before=st.integers(2, 600),
    gap_after=st.integers(2, 600),
)
def test_outside_the_schedule_nothing_opens(
    dwell: float, rate: float, seed: int, gap_before: int, gap_after: int
) -> None:
    t_arrive, t_leave = T0 + 10, T0 + 10 + dwell + 120
    # a window that covers everything except the scenario: it starts after it and ends (past midnight) before
    start = (_local(t_leave + 150) + timedelta(minutes=gap_after)).time().replace(second=0, microsecond=0)
    end = (_local(T0) - timedelta(minutes=gap_before)).time().replace(second=0, microsecond=0)
    z = zone(dwell_s=dwell, inertia_s=30, schedule=[{"start": start, "end": end}])
    frames = stream(
        [Obj(parked(t_arrive, t_leave))], T0, t_leave + 150, rate=rate, jitter=2, drop=0.1, seed=seed
    )
    signals = run(ParkingRule(z, TZ), frames)
    assert not kinds(signals, K.OPEN) and not kinds(signals, K.CLOSE)
    assert len(kinds(signals, K.CANDIDATE)) == len(kinds(signals, K.CANCEL)) == 1


@PROPS
@given(
    dwell=st.floats(20, 120),
    rate=st.floats(0.5, 2),
    seed=st.integers(0, 2**32 - 1),
    window_in=st.integers(30, 180),
)
def test_stay_starting_before_the_window_opens_dwell_after_the_window_starts(
    dwell: float, rate: float, seed: int, window_in: int
) -> None:
    t_arrive = T0 + 10
    window_start = T0 + window_in  # 08:00:30 … 08:03:00 local
    t_leave = window_start + dwell + 120
    z = zone(
        dwell_s=dwell,
        inertia_s=30,
        schedule=[{"days": ["thu"], "start": _local(window_start).time(), "end": "20:00"}],
    )
    frames = stream([Obj(parked(t_arrive, t_leave))], T0, t_leave + 60, rate=rate, jitter=2, seed=seed)
    signals = run(ParkingRule(z, TZ), frames)
    opens = kinds(signals, K.OPEN)
    assert len(opens) == 1 and len(kinds(signals, K.CLOSE)) == 1
    assert window_start + dwell <= opens[0].ts <= window_start + dwell + 2.5 / rate
    assert opens[0].started_ts < window_start  # the stay's own start is kept for the record


@settings(PROPS, max_examples=30)
@given(rate=st.floats(0.5, 2), seed=st.integers(0, 2**32 - 1), gap=st.floats(5, 60))
def test_a_second_vehicle_at_the_same_spot_after_the_first_left_is_a_new_stay(
    rate: float, seed: int, gap: float
) -> None:
    inertia = 30.0
    a = Obj(parked(T0 + 10, T0 + 150))
    b = Obj(parked(T0 + 150 + inertia + gap, T0 + 350 + inertia + gap))
    frames = stream([a, b], T0, T0 + 450 + inertia + gap, rate=rate, jitter=2, drop=0.1, seed=seed)
    signals = run(ParkingRule(zone(dwell_s=60, inertia_s=inertia), TZ), frames)
    assert_lifecycles(signals)
    opens, closes = kinds(signals, K.OPEN), kinds(signals, K.CLOSE)
    assert len(opens) == 2 and len(closes) == 2
    assert opens[0].key != opens[1].key
    assert closes[0].ts < opens[1].started_ts + 10


def test_track_id_switches_and_person_in_front_keep_one_stay() -> None:
    """Ids change every frame and a person stands in front (the car's box shrinks, then is not detected)."""
    rule = ParkingRule(zone(dwell_s=60, inertia_s=30), TZ)
    signals: list[RuleSignal] = []
    car = box_at(SPOT)
    for i, ts in enumerate(np.arange(T0, T0 + 300, 2.0)):
        boxes, labels = [], []
        if ts < T0 + 200:
            if T0 + 60 <= ts < T0 + 80:
                boxes.append((car[0], car[1], car[2], car[3] - 15))  # lower part hidden by the person
                labels.append(VEHICLE)
            elif not T0 + 80 <= ts < T0 + 100:
                boxes.append(car)
                labels.append(VEHICLE)
        if T0 + 60 <= ts < T0 + 100:
            boxes.append((480.0, 380.0, 510.0, 470.0))
            labels.append(PERSON)
        d = Detections(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.full(len(boxes), 0.9),
            np.asarray(labels),
            np.full(len(boxes), 100 + i),
        )
        signals.extend(rule.update(d, float(ts)))
    assert [s.kind for s in signals] == [K.CANDIDATE, K.OPEN, K.UPDATE, K.CLOSE]
    assert len({s.key for s in signals}) == 1
    assert signals[-1].dwell_s == 198.0


def test_low_confidence_keeps_but_does_not_start_a_stay() -> None:
    rule = ParkingRule(zone(dwell_s=30, inertia_s=20, min_confidence=0.5), TZ)
    car = np.asarray([box_at(SPOT)], np.float32)
    out: list[RuleSignal] = []
    for ts in np.arange(T0, T0 + 40, 1.0):
        out += rule.update(Detections(car, [0.3], [VEHICLE]), float(ts))
    assert out == []  # 0.3 < 0.5: never starts
    for ts in np.arange(T0 + 40, T0 + 110, 1.0):
        conf = 0.9 if ts < T0 + 50 else 0.3  # starts at 0.9, continues at 0.3 (≥ half of 0.5)
        out += rule.update(Detections(car, [conf], [VEHICLE]), float(ts))
    assert [s.kind for s in out] == [K.CANDIDATE, K.OPEN, K.UPDATE]


def test_exempt_stay_never_opens() -> None:
    rule = ParkingRule(zone(dwell_s=30, inertia_s=10), TZ)
    car = Detections(np.asarray([box_at(SPOT)], np.float32), [0.9], [VEHICLE])
    out: list[RuleSignal] = []
    for ts in np.arange(T0, T0 + 100, 1.0):
        out += rule.update(car, float(ts))
        if out and out[0].kind is K.CANDIDATE and not rule.stays[0].exempt:
            assert rule.exempt(out[0].key)
    out += rule.update(Detections.empty(), T0 + 200)
    assert [s.kind for s in out] == [K.CANDIDATE, K.CANCEL]
    assert not rule.exempt("nope#1")


def test_finish_closes_open_stays() -> None:
    rule = ParkingRule(zone(dwell_s=30, inertia_s=10), TZ)
    car = Detections(np.asarray([box_at(SPOT)], np.float32), [0.9], [VEHICLE])
    for ts in np.arange(T0, T0 + 40, 1.0):
        rule.update(car, float(ts))
    out = rule.finish(T0 + 40)
    assert [s.kind for s in out] == [K.CLOSE] and out[0].dwell_s == 39.0
    assert rule.stays == []


def test_periodic_updates_are_spaced() -> None:
    rule = ParkingRule(zone(dwell_s=60, inertia_s=10), TZ, update_every_s=100)
    car = Detections(np.asarray([box_at(SPOT)], np.float32), [0.9], [VEHICLE])
    out: list[RuleSignal] = []
    for ts in np.arange(T0, T0 + 1000, 1.0):
        out += rule.update(car, float(ts))
    ups = [s.ts - T0 for s in out if s.kind is K.UPDATE]
    opened = next(s.ts - T0 for s in out if s.kind is K.OPEN)
    assert ups[0] == opened + 30  # the extra still: max(30, dwell/2)
    assert all(b - a >= 100 for a, b in itertools.pairwise(ups))
    assert len(ups) == 1 + int((999 - ups[0]) // 100)


# ---- schedule ---------------------------------------------------------------------------------------------


def _ts(day: int, hh: int, mm: int = 0) -> float:
    """2026-11-<day> hh:mm Asia/Shanghai (26 = Thursday)."""
    return datetime(2026, 11, day, hh, mm, tzinfo=ZoneInfo(TZ)).timestamp()


def test_schedule_windows() -> None:
    night = Schedule([ScheduleWindow(days=["fri"], start="22:00", end="06:00")], TZ)
    assert night.active_since(_ts(27, 23)) == _ts(27, 22)  # Friday night
    assert night.active_since(_ts(28, 5, 59)) == _ts(27, 22)  # past midnight, into Saturday
    assert not night.active(_ts(28, 6)) and not night.active(_ts(27, 21, 59))
    assert not night.active(_ts(26, 23))  # Thursday
    office = Schedule(
        [ScheduleWindow(days=["mon", "tue", "wed", "thu", "fri"], start="07:30", end="19:00")], TZ
    )
    assert office.active_since(_ts(26, 12)) == _ts(26, 7, 30)
    assert not office.active(_ts(29, 12))  # Sunday
    always = Schedule(None, TZ)
    assert always.active_since(_ts(26, 3)) == -np.inf
    # adjacent windows merge into one period: a car parked across midnight keeps its clock
    allweek = Schedule([ScheduleWindow(start="00:00", end="23:59:59")], TZ)
    assert allweek.active_since(_ts(26, 0, 30)) <= _ts(25, 0)
    split = Schedule(
        [ScheduleWindow(start="20:00", end="23:59:59"), ScheduleWindow(start="00:00", end="06:00")], TZ
    )
    assert split.active_since(_ts(27, 2)) == _ts(26, 20)
    full = Schedule([ScheduleWindow(days=["sat"], start="08:00", end="08:00")], TZ)
    assert full.active_since(_ts(29, 7, 59)) == _ts(28, 8) and not full.active(_ts(29, 8))


def test_schedule_in_utc_site() -> None:
    s = Schedule([ScheduleWindow(start="07:00", end="09:00")], "UTC")
    assert s.active(T0 + 7.5 * 3600) and not s.active(T0 + 9 * 3600)


@pytest.mark.parametrize("seed", range(5))
def test_night_half_the_detections_missed_still_one_violation(seed: int) -> None:
    frames = stream([Obj(parked(T0 + 10, T0 + 400))], T0, T0 + 500, rate=1, jitter=3, drop=0.5, seed=seed)
    signals = run(ParkingRule(zone(dwell_s=120, inertia_s=60), TZ), frames)
    assert [s.kind for s in signals if s.kind is not K.UPDATE] == [K.CANDIDATE, K.OPEN, K.CLOSE]


def test_schedule_across_daylight_saving_changes() -> None:
    tz = ZoneInfo("Europe/Berlin")
    s = Schedule([ScheduleWindow(start="01:00", end="04:00")], "Europe/Berlin")
    spring = datetime(2026, 3, 29, 3, 30, tzinfo=tz).timestamp()  # 02:00 → 03:00: the window is 2 h long
    assert s.active_since(spring) == datetime(2026, 3, 29, 1, 0, tzinfo=tz).timestamp()
    assert spring - s.active_since(spring) == 1.5 * 3600
    autumn = datetime(2026, 10, 25, 3, 30, tzinfo=tz).timestamp()  # 03:00 → 02:00: 4 h long
    assert autumn - s.active_since(autumn) == 3.5 * 3600
    assert not s.active(datetime(2026, 10, 25, 4, 0, tzinfo=tz).timestamp())


@pytest.mark.parametrize(("dx", "dy"), [(30, 10), (-40, 0), (0, 25)])
def test_camera_bump_or_vehicle_moving_up_keeps_the_stay(dx: float, dy: float) -> None:
    frames = stream([Obj(parked(T0 + 10, T0 + 400))], T0, T0 + 500, rate=1, jitter=2, drop=0.1, seed=4)
    moved = [
        (
            ts,
            Detections(d.xyxy + np.float32([dx, dy, dx, dy]), d.confidence, d.class_id)
            if ts > T0 + 100
            else d,
        )
        for ts, d in frames
    ]
    signals = run(ParkingRule(zone(dwell_s=120, inertia_s=60), TZ), moved)
    assert [s.kind for s in signals if s.kind is not K.UPDATE] == [K.CANDIDATE, K.OPEN, K.CLOSE]
    assert abs(signals[-1].dwell_s - 390) < 5
