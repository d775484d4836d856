"""Rule signals → wire events: ids, seq, evidence accumulation, plates, exemptions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.events import Event, EventState, EventType
from pipeline.incidents import MAX_SCENE_STILLS, IncidentBuilder
from pipeline.protocols import Frame
from pipeline.rules.base import RuleSignal, SignalKind

CFG = parse_config(
    """
site: {id: s, timezone: Asia/Shanghai, grid: fs/xl}
cameras:
  - id: cam
    name: 东门
    source: {url: "rtsp://127.0.0.1/x"}
    zones:
      - {id: lane, type: fire_lane, polygon: [[0,0],[100,0],[100,100]], violation_code: "1039",
         exempt_plates: ["京A00001"]}
      - {id: station, type: bin_station, polygon: [[0,0],[100,0],[100,100]], bin_ids: [B1, B2],
         dwell_s: 20, clear_s: 10}
"""
)


class FakeRenderer:
    def __init__(self) -> None:
        self.captions: list[list[str]] = []

    def still(self, image: object, caption: list[str], boxes: list[tuple[tuple[float, ...], str]]) -> bytes:
        self.captions.append(caption)
        return ("still:" + "|".join(caption)).encode()

    def plate_crop(self, image: object, box: tuple[float, ...]) -> bytes | None:
        return b"plate-crop"


def _sig(
    kind: SignalKind, ts: float, rule: str = "parking", zone: str = "lane", snap: bool = True
) -> RuleSignal:
    return RuleSignal(
        kind=kind,
        rule=rule,
        zone_id=zone,
        key=f"{zone}#1",
        ts=ts,
        started_ts=1_700_000_000.0,
        dwell_s=ts - 1_700_000_000.0,
        label="vehicle" if rule == "parking" else "bin_overflow",
        track_id=3,
        box_xyxy=(10.0, 10.0, 50.0, 40.0),
        confidence=0.8,
        snapshot=snap,
    )


def _frame(ts: float) -> Frame:
    return Frame(np.zeros((4, 4, 3), np.uint8), ts=ts, index=int(ts))


@pytest.fixture
def sent() -> list[tuple[Event, dict[str, bytes]]]:
    return []


def _builder(sent: list[tuple[Event, dict[str, bytes]]], **kw: object) -> IncidentBuilder:
    return IncidentBuilder(CFG.cameras[0], CFG.site, FakeRenderer(), lambda e, f: sent.append((e, f)), **kw)  # type: ignore[arg-type]


def test_parking_stay_gives_one_event_with_three_stills_and_plate(sent: list) -> None:
    plates: list[str] = []
    b = _builder(sent, request_plate=lambda key, img, box: plates.append(key))
    t0 = 1_700_000_000.0
    for kind, dt in [
        (SignalKind.CANDIDATE, 0),
        (SignalKind.OPEN, 61),
        (SignalKind.UPDATE, 120),
        (SignalKind.CLOSE, 300),
    ]:
        b.handle([_sig(kind, t0 + dt, snap=kind is not SignalKind.CLOSE)], _frame(t0 + dt))
        if kind is SignalKind.OPEN:
            b.plate_read("lane#1", "京A12345", 0.9)
    assert [e.state for e, _ in sent] == [EventState.OPEN, EventState.UPDATE, EventState.CLOSED]
    assert len({e.id for e, _ in sent}) == 1 and [e.seq for e, _ in sent] == [0, 1, 2]
    opened, files = sent[0]
    assert opened.type is EventType.ILLEGAL_PARKING and opened.violation_code == "1039"
    assert opened.grid == "fs/xl" and opened.id[14] == "7"
    assert sorted(files) == ["plate-1.jpg", "scene-1.jpg", "scene-2.jpg"]
    for ev in opened.evidence:
        assert ev.sha256 == hashlib.sha256(files[ev.name]).hexdigest()
    last = sent[-1][0]
    assert [e.name for e in last.evidence] == ["scene-1.jpg", "scene-2.jpg", "plate-1.jpg", "scene-3.jpg"]
    assert sent[1][1].keys() == {"scene-3.jpg"}, "files already sent are not sent again"
    assert last.object and last.object.plate and last.object.plate.text == "京A12345"
    assert last.ended_at is not None and last.dwell_s == 300.0
    assert last.ended_at.timestamp() == t0 + 300.0
    assert plates == ["lane#1", "lane#1"]
    Event.model_validate(last.to_wire())  # what the API will validate


def test_cancelled_candidate_sends_nothing(sent: list) -> None:
    b = _builder(sent)
    b.handle([_sig(SignalKind.CANDIDATE, 1_700_000_000.0)], _frame(1_700_000_000.0))
    b.handle([_sig(SignalKind.CANCEL, 1_700_000_030.0)], _frame(1_700_000_030.0))
    assert sent == [] and b.open_keys() == []


def test_exempt_plate_suppresses_the_violation(sent: list) -> None:
    b = _builder(sent)
    t0 = 1_700_000_000.0
    b.handle([_sig(SignalKind.CANDIDATE, t0)], _frame(t0))
    b.plate_read("lane#1", "京A00001", 0.95)
    b.handle([_sig(SignalKind.OPEN, t0 + 61)], _frame(t0 + 61))
    b.handle([_sig(SignalKind.CLOSE, t0 + 200, snap=False)], _frame(t0 + 200))
    assert sent == []


def test_stills_are_capped_over_a_long_stay(sent: list) -> None:
    b = _builder(sent)
    t0 = 1_700_000_000.0
    b.handle([_sig(SignalKind.OPEN, t0 + 61)], _frame(t0 + 61))
    for k in range(20):
        b.handle([_sig(SignalKind.UPDATE, t0 + 100 + k * 60)], _frame(t0 + 100 + k * 60))
    scenes = [e for e in sent[-1][0].evidence if e.kind == "scene"]
    assert len(scenes) == MAX_SCENE_STILLS


def test_bin_episode_has_before_and_after_and_bin_ids(sent: list) -> None:
    b = _builder(sent)
    t0 = 1_700_000_000.0
    b.handle([_sig(SignalKind.CANDIDATE, t0, "bins", "station")], _frame(t0))
    b.handle([_sig(SignalKind.OPEN, t0 + 20, "bins", "station", snap=False)], _frame(t0 + 20))
    b.handle([_sig(SignalKind.CLOSE, t0 + 90, "bins", "station")], _frame(t0 + 90))
    opened, closed = sent[0][0], sent[-1][0]
    assert opened.type is EventType.BIN_OVERFLOW and opened.bin_ids == ["B1", "B2"] and opened.bin_id == "B1"
    assert {e.kind for e in closed.evidence} == {"before", "after"}


def test_bin_before_still_is_the_last_clean_frame(sent: list) -> None:
    renderer = FakeRenderer()
    b = IncidentBuilder(CFG.cameras[0], CFG.site, renderer, lambda e, f: sent.append((e, f)))
    t0 = 1_700_000_000.0
    clean = Frame(np.full((4, 4, 3), 7, np.uint8), ts=t0 - 1, index=1)
    seen: list[object] = []
    renderer.still = lambda image, caption, boxes: (seen.append(image), b"x")[1]  # type: ignore[method-assign]
    b.observe(clean)
    cand = RuleSignal(
        kind=SignalKind.CANDIDATE,
        rule="bins",
        zone_id="station",
        key="station#1",
        ts=t0,
        started_ts=t0,
        dwell_s=0.0,
        label="bin_overflow",
        snapshot=True,
        ref_ts=t0 - 1,
    )
    b.handle([cand], _frame(t0))
    assert seen and seen[0] is clean.image


def _stay(
    kind: SignalKind, started: float, ts: float, box: tuple[float, float, float, float], key: str
) -> RuleSignal:
    return RuleSignal(
        kind=kind,
        rule="parking",
        zone_id="lane",
        key=key,
        ts=ts,
        started_ts=started,
        dwell_s=ts - started,
        label="vehicle",
        track_id=1,
        box_xyxy=box,
        confidence=0.8,
        snapshot=kind is not SignalKind.CLOSE,
    )


def test_restart_continues_the_same_event_instead_of_a_second_violation(tmp_path, sent: list) -> None:
    from pipeline.journal import IncidentJournal

    box = (10.0, 10.0, 50.0, 40.0)
    t0 = 1_700_000_000.0
    journal = IncidentJournal(tmp_path / "incidents.db")
    first = _builder(sent, journal=journal)
    for kind, dt in [(SignalKind.CANDIDATE, 0), (SignalKind.OPEN, 61), (SignalKind.UPDATE, 120)]:
        first.handle([_stay(kind, t0, t0 + dt, box, "lane#1")], _frame(t0 + dt))
    event_id = sent[0][0].id
    journal.close()

    # the worker restarts 10 minutes later; the car is still there: the rule sees a new stay
    journal = IncidentJournal(tmp_path / "incidents.db")
    second = _builder(sent, journal=journal)
    t1 = t0 + 720
    moved = (12.0, 11.0, 52.0, 41.0)
    second.handle([_stay(SignalKind.CANDIDATE, t1, t1, moved, "lane#1")], _frame(t1))
    second.handle([_stay(SignalKind.OPEN, t1, t1 + 61, moved, "lane#1")], _frame(t1 + 61))
    second.handle([_stay(SignalKind.CLOSE, t1, t1 + 200, moved, "lane#1")], _frame(t1 + 200))
    later = [e for e, _ in sent[2:]]
    assert [e.state for e in later] == [EventState.UPDATE, EventState.CLOSED]
    assert {e.id for e in later} == {event_id}, "one violation per stay, across the restart"
    assert [e.seq for e, _ in sent] == [0, 1, 2, 3]
    assert later[-1].started_at.timestamp() == t0 and later[-1].dwell_s == 920.0
    names = [e.name for e in later[-1].evidence]
    assert len(names) == len(set(names)) and {"scene-1.jpg", "scene-2.jpg", "scene-3.jpg"} <= set(names)
    assert journal.load("cam") == []
    journal.close()


def test_unclaimed_journalled_event_is_closed_as_of_last_seen(tmp_path, sent: list) -> None:
    from pipeline.journal import IncidentJournal

    t0 = 1_700_000_000.0
    journal = IncidentJournal(tmp_path / "incidents.db")
    first = _builder(sent, journal=journal)
    box = (10.0, 10.0, 50.0, 40.0)
    first.handle([_stay(SignalKind.OPEN, t0, t0 + 61, box, "lane#1")], _frame(t0 + 61))
    first.handle([_stay(SignalKind.UPDATE, t0, t0 + 90, box, "lane#1")], _frame(t0 + 90))
    second = _builder(sent, journal=journal)
    t1 = t0 + 3600
    zone = CFG.cameras[0].zones[0]
    wait = zone.dwell + zone.inertia_s + 30
    for k in range(0, int(wait) + 10, 5):  # the place stays empty after the restart
        second.observe(_frame(t1 + k))
    closed = sent[-1][0]
    assert closed.state is EventState.CLOSED and closed.id == sent[0][0].id and closed.seq == 2
    assert closed.ended_at is not None and closed.ended_at.timestamp() == t0 + 90
    assert len(sent) == 3 and journal.load("cam") == []
    journal.close()
