"""Golden replays: recorded Detections streams (tests/pipeline/rules/golden/*.json) replayed through the
tracker and a rule; the exact list of signals is asserted, so any change of behaviour shows up here.

After an intended change, regenerate and review the diff:  PINGAN_REGEN_GOLDEN=1 .venv/bin/pytest <this file>
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import Zone
from pipeline.detections import BIN, BIN_OVERFLOW, LITTER, PERSON, Detections
from pipeline.rules.base import RuleSignal
from pipeline.rules.bins import BinRule
from pipeline.rules.parking import ParkingRule
from pipeline.tracking import Tracker
from tests.pipeline.rules import scenarios as sc

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("PINGAN_REGEN_GOLDEN") == "1"
TZ = "Asia/Shanghai"


def _person_walk(t0: float, t1: float, x0: float, x1: float, y: float) -> sc.Obj:
    def f(ts: float) -> tuple[float, float] | None:
        if not t0 <= ts < t1:
            return None
        return (x0 + (x1 - x0) * (ts - t0) / (t1 - t0), y)

    return sc.Obj(f, label=PERSON, w=30, h=80)


def _fire_lane() -> tuple[dict[str, Any], list[tuple[float, Detections]]]:
    """A car parks for 5 min; a person walks in front; a van hides it for 40 s; traffic passes; a second car
    stops briefly further along (cancelled); a third parks late and is still there at the end."""
    T0 = sc.T0
    car = sc.Obj(sc.parked(T0 + 20, T0 + 320), hidden=[(T0 + 150, T0 + 190)])
    brief = sc.Obj(sc.parked(T0 + 60, T0 + 90, spot=(800.0, 500.0)))
    late = sc.Obj(sc.parked(T0 + 330, T0 + 900, spot=(300.0, 520.0)))
    traffic = [sc.Obj(sc.passing(T0 + 30 * k, 90 + 10 * k, y=580)) for k in range(12)]
    person = _person_walk(T0 + 100, T0 + 130, 400, 600, 470)
    frames = sc.stream(
        [car, brief, late, person, *traffic], T0, T0 + 420, rate=1, jitter=2, drop=0.15, seed=11
    )
    zone = {"id": "fire-lane-3", "type": "fire_lane", "polygon": sc.ZONE_POLY, "dwell_s": 60, "inertia_s": 45}
    return zone, frames


def _scheduled() -> tuple[dict[str, Any], list[tuple[float, Detections]]]:
    """No parking 08:02–09:00 on weekdays: a car parked since 08:00:20 opens at 08:02 + dwell."""
    T0 = sc.T0
    car = sc.Obj(sc.parked(T0 + 20, T0 + 400))
    frames = sc.stream([car], T0, T0 + 480, rate=0.5, jitter=3, drop=0.2, seed=5)
    schedule = [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:02", "end": "09:00"}]
    zone = {
        "id": "gate-no-parking",
        "type": "no_parking",
        "polygon": sc.ZONE_POLY,
        "dwell_s": 120,
        "inertia_s": 60,
        "schedule": schedule,
    }
    return zone, frames


def _bins() -> tuple[dict[str, Any], list[tuple[float, Detections]]]:
    """Clean; one false positive; overflow from 60 s (a person in front at 100–130 s); litter joins at 250 s;
    emptied at 400 s with a missed bin at 420 s; clean to the end."""
    T0 = sc.T0
    bin_box = (640.0, 340.0, 720.0, 440.0)
    litter = (700.0, 410.0, 750.0, 450.0)
    person = (590.0, 250.0, 700.0, 470.0)
    rng = np.random.default_rng(9)
    frames = []
    for ts in sc.frame_times(T0, T0 + 560, 1.0, rng):
        t = ts - T0
        boxes: list[tuple[tuple[float, float, float, float], int]] = []
        if 100 <= t < 130:
            boxes.append((person, PERSON))
        elif 420 <= t < 423:
            pass  # the bin is not detected at all: unknown
        elif 60 <= t < 400 or 20 <= t < 21:
            boxes.append((bin_box, BIN_OVERFLOW))
            if t >= 250:
                boxes.append((litter, LITTER))
        else:
            boxes.append((bin_box, BIN))
        xyxy = np.asarray([b for b, _ in boxes], np.float32).reshape(-1, 4)
        xyxy += rng.uniform(-2, 2, xyxy.shape).astype(np.float32)
        frames.append((ts, Detections(xyxy, np.full(len(boxes), 0.7), [c for _, c in boxes])))
    zone = {
        "id": "bins-7",
        "type": "bin_station",
        "polygon": [[600, 300], [760, 300], [760, 460], [600, 460]],
        "dwell_s": 90,
        "clear_s": 45,
        "bin_ids": ["B-0007"],
    }
    return zone, frames


CASES: dict[str, tuple[Callable[[], tuple[dict[str, Any], list[tuple[float, Detections]]]], str]] = {
    "parking_fire_lane": (_fire_lane, "parking"),
    "parking_scheduled": (_scheduled, "parking"),
    "bins_station": (_bins, "bins"),
}


def _row(s: RuleSignal) -> list[Any]:
    return [s.kind.value, s.key, round(s.ts, 3), round(s.dwell_s, 1), s.severity, s.snapshot]


def _replay(kind: str, zone: Zone, frames: list[tuple[float, Detections]]) -> list[list[Any]]:
    tracker = Tracker()
    rule: ParkingRule | BinRule = ParkingRule(zone, TZ) if kind == "parking" else BinRule(zone)
    out: list[list[Any]] = []
    for ts, d in frames:
        out += [_row(s) for s in rule.update(tracker.update(d, ts), ts)]
    out += [_row(s) for s in rule.finish(frames[-1][0])]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_replay(name: str) -> None:
    build, kind = CASES[name]
    frames_path, expected_path = GOLDEN / f"{name}.frames.json", GOLDEN / f"{name}.signals.json"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        zone_data, frames = build()
        sc.dump_frames(frames, frames_path)
        frames = sc.load_frames(frames_path)  # what is replayed is what is stored (rounded)
        signals = _replay(kind, Zone.model_validate(zone_data), frames)
        head = {"rule": kind, "zone": zone_data, "timezone": TZ}
        rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in signals)
        text = json.dumps(head, ensure_ascii=False)[:-1] + ',\n "signals": [\n  ' + rows + "\n ]\n}\n"
        expected_path.write_text(text)
    doc = json.loads(expected_path.read_text())
    frames = sc.load_frames(frames_path)
    got = _replay(doc["rule"], Zone.model_validate(doc["zone"]), frames)
    assert got == doc["signals"]


def test_golden_fire_lane_story() -> None:
    """The recorded fire-lane story, in words: one violation for the parked car (with ≥ 3 stills, through the
    person and the van), none for the brief stop, one still open at the end (closed by finish)."""
    doc = json.loads((GOLDEN / "parking_fire_lane.signals.json").read_text())
    opens = [r for r in doc["signals"] if r[0] == "open"]
    assert len(opens) == 2
    first = [r for r in doc["signals"] if r[1] == opens[0][1]]
    assert [r[0] for r in first][:2] == ["candidate", "open"] and first[-1][0] == "close"
    assert sum(1 for r in first if r[5]) >= 3
    cancelled = [r for r in doc["signals"] if r[0] == "cancel"]
    assert len(cancelled) == 1


def test_golden_bins_story() -> None:
    doc = json.loads((GOLDEN / "bins_station.signals.json").read_text())
    kinds = [r[0] for r in doc["signals"]]
    assert kinds == ["candidate", "cancel", "candidate", "open", "update", "close"]
    assert doc["signals"][4][4] == 3  # litter joined: severity 3
