"""A camera that detects on its sub-stream, over real RTSP: the main stream gives the stills, and when it dies
detection goes on (stills fall back to the sub-stream picture) while the camera reports its main stream down.

Two GStreamer RTSP servers stand in for the camera's two streams, so the main one can be killed alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import Camera, SiteConfig
from pipeline.devtools.clips import CAR_BOX, make_clip, parking_scene
from pipeline.incidents import IncidentBuilder
from pipeline.protocols import SourceState
from pipeline.sources import open_source
from pipeline.supervisor import EvidenceRenderer
from pipeline.worker import CameraWorker
from tests.fakes import InlineScheduler, red_car

MAIN, SUB = (1280, 720), (320, 180)


def wait(cond: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_sub_stream_detection_survives_its_main_stream(rtsp_server: Any, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"seconds": 30, "fps": 10, "gop": 10, "scene_fn": parking_scene}
    main_srv = rtsp_server({"main": make_clip(tmp_path / "main.mp4", size=MAIN, **kw)})
    sub_srv = rtsp_server({"sub": make_clip(tmp_path / "sub.mp4", size=SUB, **kw)})
    cam = Camera.model_validate(
        {
            "id": "lane",
            "name": "lane",
            "source": {"url": main_srv.url("main")},
            "detect_source": {"url": sub_srv.url("sub")},
            "stall_timeout_s": 2,
            "backoff_max_s": 2,
            "zones": [
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
    worker = CameraWorker(cam, site, sched, builder, stop, open_source)  # type: ignore[arg-type]
    worker.start()
    try:
        assert wait(lambda: any(ev.state.value == "open" for ev, _ in events), 30), worker.status()
        ev, files = next((ev, f) for ev, f in events if ev.state.value == "open")
        car = [CAR_BOX[0] * MAIN[0], CAR_BOX[1] * MAIN[1], CAR_BOX[2] * MAIN[0], CAR_BOX[3] * MAIN[1]]
        assert ev.object is not None and np.allclose(ev.object.box_xyxy, car, atol=8)
        scene = cv2.imdecode(np.frombuffer(files["scene-1.jpg"], np.uint8), cv2.IMREAD_COLOR)
        assert scene.shape[1] == MAIN[0]
        assert sched.shapes == {(SUB[1], SUB[0], 3)}

        main_srv.kill()
        down = (SourceState.STALLED, SourceState.BACKOFF, SourceState.CONNECTING)
        assert wait(lambda: (st := worker.status().evidence) is not None and st.state in down, 10)
        before = worker.status().detections + worker.status().gated
        assert wait(lambda: worker.status().detections + worker.status().gated >= before + 3, 10)
        st = worker.status()
        assert st.source.state is SourceState.RUNNING and st.crashes == 0
    finally:
        stop.set()
        assert worker.join(15)
