"""The packet gate on real H.264 (libx264, variable bitrate): Source skips decoding quiet keyframes, and a
CameraWorker with the gate still catches a car that parks in a fire lane after a long quiet stretch.

The clip (640×360, 10 fps, GOP 1 s, sensor grain): a passer-by walks along the top edge for the first
10 s (busy GOPs, outside the zone), nothing moves from 10 s to 40 s, a red car drives into the fire lane from
40 s to 42 s and stays to the end (60 s). The worker's "detector" finds the red car by its colour in the
decoded picture, so it can only see the car in a frame that was really decoded."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import Camera, SiteConfig
from pipeline.detections import PERSON, VEHICLE, Detections
from pipeline.incidents import IncidentBuilder
from pipeline.packet_gate import PacketGate
from pipeline.protocols import Frame
from pipeline.sources import Source
from pipeline.supervisor import EvidenceRenderer
from pipeline.worker import CameraWorker
from tests.fakes import InlineScheduler

W, H, FPS = 640, 360, 10
CAR = (400, 200, 560, 300)  # parked box x0, y0, x1, y1
ARRIVE, PARKED, END = 40.0, 42.0, 60.0
RED = (40, 40, 200)  # BGR; its luminance is the asphalt's: only a colour-aware gate sees it


def scene(i: int, t: float, size: tuple[int, int]) -> Any:
    rng = np.random.default_rng(i)
    img = np.empty((H, W, 3), np.int16)
    img[:] = (95, 95, 100)
    img[: H // 5] = (60, 110, 70)
    img += rng.normal(0, 2.0, img.shape).round().astype(np.int16)  # grain: every P-frame costs something
    if t < 10.0:  # the passer-by (clothes fold and swing: new texture every frame), outside the zone
        x = int(20 + t * 55)
        img[10:130, x : x + 50] = rng.integers(0, 80, (120, 50, 3))
    if t >= ARRIVE:
        k = min(1.0, (t - ARRIVE) / (PARKED - ARRIVE))
        x0 = int(-160 + k * (CAR[0] + 160))
        xa, xb = max(0, x0), max(0, x0 + 160)
        img[CAR[1] : CAR[3], xa:xb] = RED
        if k < 1.0:  # glare sliding over the windscreen while it drives
            img[CAR[1] : CAR[1] + 30, xa:xb] = rng.integers(0, 255, (30, xb - xa, 3))
    return np.clip(img, 0, 255).astype(np.uint8)
    # P-frame means this gives (bytes): ~4,600 while the passer-by walks, ~950 still, ~5,000 as the car drives


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.devtools.clips import make_clip

    return make_clip(
        tmp_path_factory.mktemp("pg") / "quiet-then-car.mp4",
        seconds=END,
        fps=FPS,
        size=(W, H),
        gop=FPS,
        scene_fn=scene,
        deblock=True,
    )


def red_boxes(image: Any) -> Detections:
    mask = (np.abs(image.astype(np.int16) - RED).sum(axis=2) < 40).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    if len(xs) < 200:
        return Detections.empty()
    return Detections(
        xyxy=[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], confidence=[0.9], class_id=[VEHICLE]
    )


def test_source_skips_decoding_only_quiet_keyframes(clip: Path) -> None:
    gate = PacketGate(min_gops=8)
    frames: list[Frame] = []
    with Source(clip, detect_fps=1.0, loop=False, realtime=False, packet_gate=gate) as src:
        for f in src.frames():
            if not f.carried:
                gate.checked(f.motion, f.ts, zones_moved=False)
            gate.hold(False)  # nothing in any zone, as far as this test's "worker" knows
            frames.append(f)
    t0 = frames[0].ts
    rel = [(round(f.ts - t0), f.carried) for f in frames]
    carried = [t for t, c in rel if c]
    assert 55 <= len(frames) <= 61  # one a second, carried or decoded
    assert carried, rel
    assert all(t >= 10 for t in carried)  # never while the passer-by walks
    # the car moves from 40 s to 42 s: the keyframes closing those GOPs (41 s, 42 s) are decoded
    assert not any(ARRIVE < t <= PARKED for t in carried), rel[30:50]
    quiet = list(range(20, 40))
    assert sum(t in carried for t in quiet) >= 15, rel  # most of the quiet stretch costs no decode
    at_parked = [f for f in frames if not f.carried and abs(f.ts - t0 - PARKED) < 0.5]
    assert at_parked and red_boxes(at_parked[0].image).xyxy.tolist() == [list(map(float, CAR))]
    # carried frames hold the last decoded picture (no copy), never a picture of their own moment
    for prev, f in itertools.pairwise(frames):
        if f.carried:
            assert f.image is prev.image


def test_worker_with_packet_gate_still_reports_the_car(clip: Path) -> None:
    cam = Camera.model_validate(
        {
            "id": "lane",
            "name": "消防通道",
            "source": {"path": str(clip), "loop": False, "realtime": False},
            "detect_fps": 1.0,
            "packet_gate": True,
            "gate_refresh_s": 30,
            "zones": [
                {
                    "id": "fire-lane",
                    "type": "fire_lane",
                    "polygon": [[380, 180], [600, 180], [600, 330], [380, 330]],
                    "dwell_s": 5,
                }
            ],
        }
    )
    site = SiteConfig(timezone="Asia/Shanghai")
    events: list[tuple[Any, dict[str, bytes]]] = []
    builder = IncidentBuilder(cam, site, EvidenceRenderer(), lambda ev, files: events.append((ev, files)))
    sched = InlineScheduler(red_boxes)
    stop = threading.Event()

    delivered: list[tuple[float, bool]] = []

    class Recording(Source):
        def frames(self) -> Iterator[Frame]:
            for f in super().frames():
                delivered.append((f.ts, f.carried))
                yield f

    def factory(camera: Camera, stop_: threading.Event) -> Source:
        return Recording(clip, camera_id=camera.id, detect_fps=1.0, loop=False, realtime=False, stop=stop_)

    applied: list[tuple[float, bool]] = []

    class Worker(CameraWorker):
        def _apply(self, frame: Frame, dets: Detections, detected: bool) -> None:
            applied.append((frame.ts, frame.carried))
            super()._apply(frame, dets, detected)

    worker = Worker(cam, site, sched, builder, stop, factory)  # type: ignore[arg-type]
    assert worker.packet_gate is not None
    worker.packet_gate = PacketGate(min_gops=8, refresh_s=30.0)  # learn within this short clip
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.status().source.state.value != "stopped":
        time.sleep(0.1)
    stop.set()
    assert worker.join(5)
    st = worker.status()
    assert st.carried >= 10, st  # the quiet stretch went undecoded
    assert st.packet_gate is not None and st.packet_gate.misses == 0
    t0 = sched.seen[0][0]
    first_car = min(ts - t0 for ts, car in sched.seen if car)
    assert ARRIVE <= first_car <= PARKED + 1.5  # seen within a GOP of arriving, not at the next refresh
    opened = [ev for ev, _ in events if ev.state.value == "open"]
    assert len(opened) == 1 and opened[0].type.value == "illegal_parking"
    # once the car is in the zone the gate is held: keyframes are decoded to the end (evidence needs them);
    # the replay's reader runs up to its queue (2) + 1 frames ahead of the worker, and those carried frames
    # are dropped, never judged
    after = [carried for ts, carried in delivered if ts - t0 > first_car]
    assert len(after) >= int(END - PARKED) - 3 and sum(after) <= 3 and not any(after[4:])
    assert not any(carried for ts, carried in applied if ts - t0 > first_car)
    assert st.packet_gate.reason.startswith("held")


def test_only_objects_the_zones_watch_hold_the_gate() -> None:
    cam = Camera.model_validate(
        {
            "id": "lane",
            "name": "lane",
            "source": {"path": "/dev/null"},
            "packet_gate": True,
            "zones": [
                {"id": "z", "type": "fire_lane", "polygon": [[100, 100], [300, 100], [300, 200], [100, 200]]}
            ],
        }
    )
    worker = CameraWorker(
        cam, SiteConfig(), InlineScheduler(red_boxes), None, threading.Event(), lambda c, s: None
    )  # type: ignore[arg-type]
    inside, outside = [150, 120, 250, 190], [400, 120, 500, 190]
    assert worker._in_zones(Detections(xyxy=[inside], confidence=[0.9], class_id=[VEHICLE]))
    assert not worker._in_zones(Detections(xyxy=[outside], confidence=[0.9], class_id=[VEHICLE]))
    assert not worker._in_zones(Detections(xyxy=[inside], confidence=[0.9], class_id=[PERSON]))
    assert not worker._in_zones(Detections.empty())
