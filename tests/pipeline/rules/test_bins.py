from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pipeline.config import Zone
from pipeline.detections import BIN, BIN_OVERFLOW, LITTER, PERSON, VEHICLE, Detections
from pipeline.rules.base import RuleSignal, SignalKind
from pipeline.rules.bins import BinRule, Observation
from tests.pipeline.rules.scenarios import T0, frame_times

PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)
PROPS = settings(deadline=None, max_examples=60, phases=PHASES)
K = SignalKind

STATION = [(600.0, 300.0), (760.0, 300.0), (760.0, 460.0), (600.0, 460.0)]
BIN_BOX = (640.0, 340.0, 720.0, 440.0)
LITTER_BOX = (700.0, 410.0, 750.0, 450.0)
PERSON_BOX = (590.0, 250.0, 700.0, 470.0)  # stands in front of the bin: the station is not seen


def station(dwell: float = 120.0, clear: float = 60.0, **kw: object) -> Zone:
    data: dict[str, object] = {
        "id": "bins-1",
        "type": "bin_station",
        "polygon": STATION,
        "dwell_s": dwell,
        "clear_s": clear,
        "bin_ids": ["B-0421"],
    }
    data.update(kw)
    return Zone.model_validate(data)


def det(
    *boxes: tuple[tuple[float, float, float, float], int], jitter: float = 0.0, seed: int = 0
) -> Detections:
    xyxy = np.asarray([b for b, _ in boxes], np.float32).reshape(-1, 4)
    if jitter:
        xyxy += np.random.default_rng(seed).uniform(-jitter, jitter, xyxy.shape).astype(np.float32)
    return Detections(xyxy, np.full(len(boxes), 0.8), np.asarray([c for _, c in boxes], np.int64))


CLEAN = det((BIN_BOX, BIN))
DIRTY = det((BIN_BOX, BIN_OVERFLOW))
LITTERED = det((BIN_BOX, BIN), (LITTER_BOX, LITTER))
BOTH = det((BIN_BOX, BIN_OVERFLOW), (LITTER_BOX, LITTER))
OCCLUDED = det((PERSON_BOX, PERSON))
NOTHING = Detections.empty()


def replay(rule: BinRule, times: list[float], at: Callable[[float], Detections]) -> list[RuleSignal]:
    out: list[RuleSignal] = []
    for ts in times:
        out.extend(rule.update(at(ts), ts))
    return out


def of(signals: list[RuleSignal], kind: SignalKind) -> list[RuleSignal]:
    return [s for s in signals if s.kind is kind]


def within(ts: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= ts < b for a, b in windows)


def covered(windows: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``windows`` inside [lo, hi)."""
    total, end = 0.0, lo
    for a, b in sorted(windows):
        a, b = max(a, end), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


def test_classify() -> None:
    rule = BinRule(station())
    assert rule.classify(CLEAN)[0] is Observation.CLEAN
    assert rule.classify(DIRTY)[:2] == (Observation.DIRTY, 1)
    assert rule.classify(LITTERED)[:2] == (Observation.DIRTY, 2)
    assert rule.classify(BOTH)[:2] == (Observation.DIRTY, 3)
    assert rule.classify(OCCLUDED)[0] is Observation.UNKNOWN
    assert rule.classify(NOTHING)[0] is Observation.UNKNOWN  # the bin is not seen at all
    car = det((BIN_BOX, BIN), ((580.0, 280.0, 780.0, 480.0), VEHICLE))
    assert rule.classify(car)[0] is Observation.UNKNOWN
    far = det((BIN_BOX, BIN), ((0.0, 0.0, 100.0, 100.0), LITTER), ((0.0, 0.0, 50.0, 200.0), PERSON))
    assert rule.classify(far)[0] is Observation.CLEAN  # litter and people elsewhere do not count
    # a heap of litter: large
    heap = det((BIN_BOX, BIN), *[((610.0 + 10 * i, 380.0, 650.0 + 10 * i, 455.0), LITTER) for i in range(3)])
    assert rule.classify(heap)[:2] == (Observation.DIRTY, 3)
    assert BinRule(station(), require_bin_visible=False).classify(NOTHING)[0] is Observation.CLEAN


episode = st.fixed_dictionaries(
    {
        "dwell": st.floats(30, 300),
        "clear_frac": st.floats(0.1, 1.0),
        "rate": st.floats(0.5, 2),
        "seed": st.integers(0, 2**32 - 1),
        "start": st.floats(0, 120),
        "extra": st.floats(0, 300),
    }
)


@PROPS
@given(episode)
def test_open_and_close_latency(p: dict) -> None:
    dwell, clear, rate = p["dwell"], p["dwell"] * p["clear_frac"], p["rate"]
    d = 1.2 / rate  # the longest frame interval (±20 % timing jitter)
    t1 = T0 + 30 + p["start"]
    t2 = t1 + dwell + 3 * d + p["extra"]
    times = list(frame_times(T0, t2 + clear + 60, rate, np.random.default_rng(p["seed"])))
    signals = replay(BinRule(station(dwell, clear)), times, lambda ts: DIRTY if t1 <= ts < t2 else CLEAN)
    assert [s.kind for s in signals if s.kind is not K.UPDATE] == [K.CANDIDATE, K.OPEN, K.CLOSE]
    cand, opened, closed = of(signals, K.CANDIDATE)[0], of(signals, K.OPEN)[0], of(signals, K.CLOSE)[0]
    assert t1 <= cand.ts <= t1 + d and cand.snapshot
    assert cand.ref_ts is not None and t1 - d <= cand.ref_ts < t1  # the last clean frame: the "before" still
    assert t1 + dwell <= opened.ts <= t1 + dwell + 2 * d and opened.snapshot
    assert t2 + clear <= closed.ts <= t2 + clear + 2 * d and closed.snapshot  # the "after" still
    assert t2 - d <= closed.started_ts + closed.dwell_s < t2
    assert len({s.key for s in signals}) == 1


@PROPS
@given(
    episode,
    st.lists(st.tuples(st.floats(0, 1), st.floats(1, 400)), max_size=3),
    st.booleans(),
)
def test_occlusion_is_unknown_not_clean(
    p: dict, occl: list[tuple[float, float]], hide_by_absence: bool
) -> None:
    """A person in front of the station (or the bin not seen at all) neither advances nor resets a timer."""
    dwell, clear, rate = p["dwell"], p["dwell"] * p["clear_frac"], p["rate"]
    d = 1.2 / rate
    t1 = T0 + 30 + p["start"]
    span = dwell + 3 * d + p["extra"]
    occluded = [(t1 - 20 + f * (span + clear + 40), t1 - 20 + f * (span + clear + 40) + n) for f, n in occl]
    hidden_total = sum(n for _, n in occl)
    t2 = t1 + span + hidden_total + 2 * d * len(occl)  # long enough to open whatever occlusions took away
    unseen = NOTHING if hide_by_absence else OCCLUDED

    def at(ts: float) -> Detections:
        if within(ts, occluded):
            return unseen
        return DIRTY if t1 <= ts < t2 else CLEAN

    end = max([t2, *(b for _, b in occluded)]) + clear + 60
    times = list(frame_times(T0, end, rate, np.random.default_rng(p["seed"])))
    signals = replay(BinRule(station(dwell, clear)), times, at)
    assert len(of(signals, K.OPEN)) == 1 and len(of(signals, K.CLOSE)) == 1
    opened, closed = of(signals, K.OPEN)[0], of(signals, K.CLOSE)[0]
    # unknown time does not count towards dwell…
    assert opened.ts >= t1 + dwell + covered(occluded, t1, opened.ts)
    # …and each unknown run costs at most its length and the two intervals around it
    assert opened.ts <= t1 + dwell + 2 * d + sum(b - a + 2 * d for a, b in occluded if a < opened.ts)
    # an open episode is not closed by an occlusion, only by clear_s of clean observations after it
    assert closed.ts >= t2 + clear and not within(closed.ts, occluded)
    after = [(a, b) for a, b in occluded if b > t2 - d and a < closed.ts]
    assert closed.ts <= t2 + clear + 2 * d + sum(b - max(a, t2) + 2 * d for a, b in after)


@PROPS
@given(
    rate=st.floats(0.5, 2),
    seed=st.integers(0, 2**32 - 1),
    dwell=st.floats(30, 300),
    clear_frac=st.floats(0.1, 1.0),
    gaps=st.lists(st.floats(0, 1), min_size=1, max_size=20),
    occluded=st.booleans(),
)
def test_flicker_gives_no_event(
    rate: float, seed: int, dwell: float, clear_frac: float, gaps: list[float], occluded: bool
) -> None:
    """Isolated dirty frames (a detector's false positive), far enough apart to be cancelled, never open."""
    rule = BinRule(station(dwell, dwell * clear_frac))
    d = 1.2 / rate
    times = list(frame_times(T0, T0 + 1800, rate, np.random.default_rng(seed)))
    spacing = int((rule.cancel_s + 2 * d) * rate * 2.5) + 2  # frames: enough clean time to cancel
    flicker = set()
    i = 2
    for g in gaps:
        i += spacing + int(g * 20)
        if i < len(times) - spacing:
            flicker.add(i)
    signals: list[RuleSignal] = []
    for k, ts in enumerate(times):
        if k in flicker:
            dets = DIRTY
        elif occluded and k % 7 == 3:
            dets = OCCLUDED
        else:
            dets = CLEAN
        signals += rule.update(dets, ts)
    assert not of(signals, K.OPEN) and not of(signals, K.CLOSE) and not of(signals, K.UPDATE)
    assert len(of(signals, K.CANDIDATE)) == len(of(signals, K.CANCEL)) >= 1


@PROPS
@given(episode, st.lists(st.floats(0, 1), max_size=10), st.floats(0, 1))
def test_hysteresis_missed_overflow_does_not_close(p: dict, misses: list[float], miss_len: float) -> None:
    """While open, runs of clean frames shorter than clear_s (missed detections) do not close the event."""
    dwell, clear, rate = p["dwell"], p["dwell"] * p["clear_frac"], p["rate"]
    d = 1.2 / rate
    t1 = T0 + 30
    t_open = t1 + dwell + 2 * d
    t2 = t_open + 60 + p["extra"]
    slot = (t2 - t_open) / max(len(misses), 1)
    length = miss_len * max(min(clear - 2 * d, slot - 3 * d), 0.0)
    gaps = [(t_open + k * slot + d, t_open + k * slot + d + length) for k in range(len(misses))]
    times = list(frame_times(T0, t2 + clear + 30, rate, np.random.default_rng(p["seed"])))
    signals = replay(
        BinRule(station(dwell, clear)),
        times,
        lambda ts: DIRTY if t1 <= ts < t2 and not within(ts, gaps) else CLEAN,
    )
    assert len(of(signals, K.OPEN)) == 1 and len(of(signals, K.CLOSE)) == 1
    assert of(signals, K.CLOSE)[0].ts >= t2 + clear


def test_short_overflow_is_cancelled() -> None:
    rule = BinRule(station(120, 60))
    times = [T0 + k for k in range(300)]
    signals = replay(rule, times, lambda ts: DIRTY if T0 + 50 <= ts < T0 + 150 else CLEAN)
    assert [(s.kind, s.ts - T0) for s in signals] == [(K.CANDIDATE, 50), (K.CANCEL, 180)]
    assert signals[0].ref_ts == T0 + 49
    assert rule.last_clean_ts == T0 + 299 and rule.observation is Observation.CLEAN


def test_severity_updates() -> None:
    rule = BinRule(station(60, 30), min_update_s=30)

    def at(ts: float) -> Detections:
        if ts < T0 + 10 or ts >= T0 + 300:
            return CLEAN
        return DIRTY if ts < T0 + 150 else BOTH

    signals = replay(rule, [T0 + k for k in range(400)], at)
    assert [(s.kind, s.ts - T0, s.severity) for s in signals] == [
        (K.CANDIDATE, 10, 1),
        (K.OPEN, 70, 1),
        (K.UPDATE, 152, 3),  # smoothed over 5 observations: the median turns at the third
        (K.CLOSE, 330, 3),
    ]
    assert signals[2].snapshot and signals[1].label == "bin_overflow"
    assert signals[-1].dwell_s == 289
    assert rule.finish(T0 + 400) == []


def test_finish_closes() -> None:
    rule = BinRule(station(60, 30))
    replay(rule, [T0 + k for k in range(100)], lambda ts: DIRTY)
    out = rule.finish(T0 + 100)
    assert [s.kind for s in out] == [K.CLOSE]
    assert rule.key is None
