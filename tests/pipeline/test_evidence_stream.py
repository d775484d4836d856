"""Detection on a camera's sub-stream, evidence from its main stream (pipeline/evidence_stream.py).

Two H.264 clips of the same scene, as a camera sends them: the main stream at 1280×720 and the analytics
sub-stream at 320×180 (10 fps, GOP 1 s). A red car drives into a fire lane drawn in main-stream pixels."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.config import Camera, SiteConfig
from pipeline.devtools.clips import CAR_BOX, make_clip, parking_scene
from pipeline.evidence_stream import KEEP_KEYFRAMES, MAX_SKEW_S, EvidenceStream
from pipeline.incidents import IncidentBuilder
from pipeline.protocols import Frame
from pipeline.sources import Keyframe, Source
from pipeline.supervisor import EvidenceRenderer
from pipeline.worker import CameraWorker
from tests.fakes import InlineScheduler, red_car

MAIN, SUB = (1280, 720), (320, 180)
SECONDS, FPS = 8, 10
CAR_MAIN = [CAR_BOX[0] * MAIN[0], CAR_BOX[1] * MAIN[1], CAR_BOX[2] * MAIN[0], CAR_BOX[3] * MAIN[1]]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("streams")
    kw: dict[str, Any] = {"seconds": SECONDS, "fps": FPS, "gop": FPS, "scene_fn": parking_scene}
    return make_clip(d / "main.mp4", size=MAIN, **kw), make_clip(d / "sub.mp4", size=SUB, **kw)


def keyframes(path: Path) -> list[Keyframe]:
    got: list[Keyframe] = []
    with Source(path, loop=False, realtime=False, keyframe_sink=got.append) as src:
        assert list(src.frames()) == []  # an evidence stream hands nothing to a detector
        assert src.status().frames == len(got)
    return got


def test_source_hands_over_every_keyframe_undecoded(clips: tuple[Path, Path]) -> None:
    got = keyframes(clips[0])
    assert len(got) == SECONDS  # GOP 1 s
    assert all(k.codec == "h264" and k.data for k in got)
    gaps = np.diff([k.ts for k in got])
    assert np.allclose(gaps, 1.0, atol=0.01)


def test_picture_is_the_nearest_main_keyframe_else_the_frame_scaled_up(clips: tuple[Path, Path]) -> None:
    stream = EvidenceStream("cam")
    assert stream.size() is None
    kfs = keyframes(clips[0])
    for k in kfs:
        stream.put(k)
    assert stream.size() == MAIN
    sub = np.full((SUB[1], SUB[0], 3), 7, np.uint8)
    last = kfs[-1]
    stream.decodes = 0

    image, ts = stream.picture(Frame(image=sub, ts=last.ts - 0.3, index=0))
    assert image.shape == (MAIN[1], MAIN[0], 3) and ts == last.ts
    # it is the scene (the parked car in red where the clip put it), not the placeholder
    x0, y0, x1, y1 = (int(v) for v in CAR_MAIN)
    car = image[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20].reshape(-1, 3).mean(axis=0)
    assert car[2] > 150 and car[0] < 80
    stream.picture(Frame(image=sub, ts=last.ts + 0.2, index=1))
    assert stream.decodes == 1  # a second still of the same moment reuses the decoded keyframe

    _, ts = stream.picture(Frame(image=sub, ts=kfs[-3].ts + 0.4, index=2))
    assert ts == kfs[-3].ts and stream.decodes == 2

    for k in kfs[:KEEP_KEYFRAMES]:  # newer keyframes push the decoded ones out: their picture is freed
        stream.put(dataclasses.replace(k, ts=k.ts + 100))
    assert stream._decoded is None

    late = last.ts + 100 + MAX_SKEW_S + 1.0  # the main stream fell silent: the sub-stream picture, scaled up
    image, ts = stream.picture(Frame(image=sub, ts=late, index=3))
    assert ts == late and image.shape == (MAIN[1], MAIN[0], 3) and int(image.mean()) == 7


def test_an_h265_main_stream_with_b_frames_gives_its_stills(tmp_path: Path) -> None:
    # The usual camera now: H.265 main stream (x265: open GOPs, B-frames), H.264 sub-stream for detection.
    main = make_clip(tmp_path / "main.mp4", seconds=4, fps=FPS, gop=FPS, size=MAIN, codec="hevc", bframes=2)
    stream = EvidenceStream("cam")
    kfs = keyframes(main)
    assert len(kfs) == 4 and all(k.codec == "hevc" for k in kfs)
    for k in kfs:
        stream.put(k)
    assert stream.size() == MAIN  # learnt by decoding one
    stream.decodes = 0
    sub = np.zeros((SUB[1], SUB[0], 3), np.uint8)
    image, ts = stream.picture(Frame(image=sub, ts=kfs[-1].ts + 0.2, index=0))  # the car has parked
    assert ts == kfs[-1].ts and stream.decodes == 1 and image.shape == (MAIN[1], MAIN[0], 3)
    x0, y0, x1, y1 = (int(v) for v in CAR_MAIN)
    car = image[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20].reshape(-1, 3).mean(axis=0)
    assert car[2] > 150 and car[0] < 80  # the scene's red car, decoded, not the sub-stream scaled up


def test_a_keyframe_that_does_not_decode_falls_back(clips: tuple[Path, Path]) -> None:
    stream = EvidenceStream("cam")
    good = keyframes(clips[0])[0]
    stream.put(good)
    bad = Keyframe(b"\x00\x00\x01garbage", good.ts + 1.0, "h264", None, 0, 0)
    stream.put(bad)
    sub = np.zeros((SUB[1], SUB[0], 3), np.uint8)
    image, ts = stream.picture(Frame(image=sub, ts=bad.ts, index=0))
    assert ts == bad.ts and image.shape == (MAIN[1], MAIN[0], 3)


def test_worker_detects_on_the_sub_stream_and_takes_stills_from_the_main(clips: tuple[Path, Path]) -> None:
    main, sub = clips
    cam = Camera.model_validate(
        {
            "id": "lane",
            "name": "消防通道",
            "source": {"path": str(main), "loop": False},
            "detect_source": {"path": str(sub), "loop": False},
            "zones": [  # in main-stream pixels: the sub-stream's boxes are four times smaller
                {
                    "id": "fire-lane",
                    "type": "fire_lane",
                    "polygon": [[650, 300], [1150, 300], [1150, 600], [650, 600]],
                    "dwell_s": 2,
                }
            ],
        }
    )
    site = SiteConfig(timezone="Asia/Shanghai")
    events: list[tuple[Any, dict[str, bytes]]] = []
    builder = IncidentBuilder(cam, site, EvidenceRenderer(), lambda ev, files: events.append((ev, files)))
    sched = InlineScheduler(red_car)
    stop = threading.Event()

    def factory(camera: Camera, stop_: threading.Event) -> Source:
        from pipeline.sources import open_source

        return open_source(camera, stop_)

    worker = CameraWorker(cam, site, sched, builder, stop, factory)  # type: ignore[arg-type]
    evidence = worker.evidence
    assert evidence is not None and builder.pictures is evidence
    from_main: list[bool] = []  # per still: a main-stream keyframe (its own time), or the sub-stream fallback
    picture = evidence.picture

    def recorded(frame: Frame) -> tuple[Any, float]:
        image, ts = picture(frame)
        from_main.append(ts != frame.ts)
        return image, ts

    evidence.picture = recorded  # type: ignore[method-assign]
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.status().source.state.value != "stopped":
        time.sleep(0.1)
    stop.set()
    assert worker.join(10)
    st = worker.status()
    assert sched.shapes == {(SUB[1], SUB[0], 3)}  # the detector only ever saw the sub-stream
    # the main stream: connected for its size, let go while the car was outside the zone (when the worker saw
    # a frame before it arrived), connected again when it entered; its keyframes kept undecoded
    assert evidence.connects in (1, 2) and st.evidence is not None and st.evidence.frames >= 3
    opened = [(ev, files) for ev, files in events if ev.state.value == "open"]
    assert len(opened) == 1
    ev, files = opened[0]
    assert ev.object is not None
    assert np.allclose(ev.object.box_xyxy, CAR_MAIN, atol=8)  # the sub-stream box, in main pixels
    stills = {e.name: e for e in ev.evidence}
    assert "scene-1.jpg" in stills
    for name, data in files.items():
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if name.startswith("scene"):
            assert image.shape[1] == MAIN[0]  # a main-stream still (plus its caption band below)
    assert sum(from_main) >= 1 and from_main.count(False) <= 1  # the first may precede the main stream
    # decoded: one keyframe per connection to learn the size, then one per still at most; never every keyframe
    assert evidence.decodes <= evidence.connects + len(stills)


def test_main_stream_is_connected_only_while_stills_may_be_needed(clips: tuple[Path, Path]) -> None:
    stop = threading.Event()
    opened: list[Source] = []

    def opener(sink: Callable[[Keyframe], None]) -> Source:
        opened.append(Source(clips[0], camera_id="cam", keyframe_sink=sink, stop=stop))  # real time, looping
        return opened[-1]

    def reading(src: Source) -> bool:
        return src._thread is not None and src._thread.is_alive()

    stream = EvidenceStream("cam", opener=opener, linger_s=5.0)
    stream.start()  # connected at once: detections need the main stream's size
    t = 1_000.0
    # A vehicle in a zone at t: the linger runs from here. (Without it the test raced the reader: a size
    # learnt before the first want() lets the size-only connection go at once, as it should.)
    stream.want(True, t)
    deadline = time.monotonic() + 10
    while stream.size() is None and time.monotonic() < deadline:
        stream.want(False, t)  # nothing to watch, but the size is not known yet: it stays
        time.sleep(0.05)
    assert stream.size() == MAIN and stream.source is opened[0]
    stream.want(False, t + 4.0)
    assert stream.source is opened[0]  # within the linger time
    stream.want(False, t + 6.0)
    assert stream.source is None and stream.status() is None and stream.size() == MAIN  # let go, size kept
    deadline = time.monotonic() + 5
    while reading(opened[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not reading(opened[0])  # its reader ended by itself

    sub = np.zeros((SUB[1], SUB[0], 3), np.uint8)
    image, _ = stream.picture(Frame(image=sub, ts=time.time(), index=0))
    assert int(image.mean()) == 0  # nothing kept from before: the sub-stream picture, scaled up

    stream.want(True, t + 7.0)  # a car enters a zone: connected again
    assert stream.source is opened[1] and len(opened) == 2
    stream.want(False, t + 11.0)
    assert stream.source is opened[1]  # the linger time runs from the last want
    deadline = time.monotonic() + 5
    while stream.status() is not None and stream.status().frames == 0 and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    image, ts = stream.picture(Frame(image=sub, ts=time.time(), index=1))
    assert (
        image.shape == (MAIN[1], MAIN[0], 3) and int(image.mean()) > 0 and abs(ts - time.time()) < MAX_SKEW_S
    )
    stream.close()
    assert not any(reading(s) for s in opened)


def test_the_first_connection_only_learns_the_size(clips: tuple[Path, Path]) -> None:
    opened: list[Source] = []

    def opener(sink: Callable[[Keyframe], None]) -> Source:
        opened.append(Source(clips[0], camera_id="cam", keyframe_sink=sink))
        return opened[-1]

    stream = EvidenceStream("cam", opener=opener).start()
    deadline = time.monotonic() + 10
    while stream.size() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.want(False, 1_000.0)  # the worker's first frame: nothing in any zone
    assert stream.source is None and stream.size() == MAIN
    stream.close()
