"""The parking rule on real CCTV footage: Debian opencv-doc's ``vtest.avi`` (768×576, 10 fps, 79.5 s: a white
van parked by the building at about x 650-725, y 45-100, a car at the right edge, pedestrians crossing the
square), replayed as a file source (as fast as it decodes) through the real detector, tracker and rule at
2 det/s.

A zone around the van gives exactly one violation, opened once the van has stood there for the zone's dwell; a
zone on the square, where only pedestrians pass, gives none."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pipeline.config import Camera, SiteConfig, Zone
from pipeline.detection import load_detector
from pipeline.events import Event
from pipeline.evidence_pack import build_manifest, pack_bytes, verify_pack
from pipeline.incidents import IncidentBuilder
from pipeline.rules.base import SignalKind
from pipeline.rules.parking import ParkingRule
from pipeline.sources import open_source
from pipeline.supervisor import EvidenceRenderer
from pipeline.tracking import Tracker

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
MODELS = Path(__file__).resolve().parents[2] / "models"
DWELL_S = 20.0
VAN_ZONE = [[622, 64], [738, 64], [738, 124], [622, 124]]
SQUARE_ZONE = [[300, 200], [620, 200], [620, 340], [300, 340]]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vtest() -> Path:
    if not VTEST.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{VTEST} missing: scripts/setup-system.sh installs opencv-doc")
        pytest.skip(f"{VTEST} missing (Debian package opencv-doc)")
    return VTEST


def test_parked_van_gives_one_violation_and_the_square_none(vtest: Path) -> None:
    zones = [
        Zone(id="van", type="fire_lane", polygon=VAN_ZONE, dwell_s=DWELL_S),  # type: ignore[arg-type]
        Zone(id="square", type="no_parking", polygon=SQUARE_ZONE, dwell_s=DWELL_S),  # type: ignore[arg-type]
    ]
    camera = Camera.model_validate(
        {
            "id": "vtest",
            "name": "vtest",
            "source": {"path": str(vtest), "loop": False, "realtime": False},
            "detect_fps": 2.0,
            "zones": [z.model_dump() for z in zones],
        }
    )
    detector = load_detector("vehicles", MODELS)
    tracker = Tracker()
    rules = {z.id: ParkingRule(z, "Asia/Shanghai") for z in camera.zones}
    signals = []
    emitted: list[tuple[Event, dict[str, bytes]]] = []
    builder = IncidentBuilder(
        camera, SiteConfig(timezone="Asia/Shanghai"), EvidenceRenderer(), lambda e, f: emitted.append((e, f))
    )
    stop = threading.Event()
    source = open_source(camera, stop)
    first_ts = last_ts = None
    frames = 0
    try:
        for frame in source.frames():
            frames += 1
            first_ts = frame.ts if first_ts is None else first_ts
            last_ts = frame.ts
            dets = tracker.update(detector.detect([frame.image])[0], frame.ts)
            for rule in rules.values():
                out = rule.update(dets, frame.ts)
                builder.handle(out, frame)
                signals += out
    finally:
        source.close()
    assert first_ts is not None and last_ts is not None
    assert 70 <= last_ts - first_ts <= 80 and 80 <= frames <= 170, (frames, first_ts, last_ts)  # 1-2 det/s
    for rule in rules.values():
        signals += rule.finish(last_ts)

    van = [s for s in signals if s.zone_id == "van"]
    opens = [s for s in van if s.kind is SignalKind.OPEN]
    assert len(opens) == 1, [(s.kind, round(s.ts - first_ts, 1)) for s in van]
    assert opens[0].label == "vehicle"
    # (the file source delivers frame 0, then nothing until the next keyframe at 25 s: the stay starts there)
    assert opens[0].ts - opens[0].started_ts >= DWELL_S and opens[0].started_ts - first_ts <= 30
    x1, _, x2, y2 = opens[0].box_xyxy or (0, 0, 0, 0)
    assert 600 < (x1 + x2) / 2 < 750 and 30 < y2 < 140  # the van, not something else
    assert [s.kind for s in van].count(SignalKind.CLOSE) == 1  # one stay, closed at the end of the file
    square = [s for s in signals if s.zone_id == "square" and s.kind is SignalKind.OPEN]
    assert square == []

    # the incident builder's evidence for it (real stills, plate close-up) makes a pack that verifies
    events = [e for e, _ in emitted if e.zone_id == "van"]
    assert events[0].state.value == "open" and events[-1].allowed_dwell_s == DWELL_S
    files = {name: data for e, f in emitted if e.zone_id == "van" for name, data in f.items()}
    last = events[-1]
    assert [e.name for e in last.evidence] == ["scene-1.jpg", "scene-2.jpg", "plate-1.jpg", "scene-3.jpg"]
    images = [e.model_dump(mode="json") for e in last.evidence]
    pack = pack_bytes(build_manifest(last.to_wire(), images, present=files, timezone="Asia/Shanghai"), files)
    assert verify_pack(pack) == []
