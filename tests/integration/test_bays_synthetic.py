"""Parking bays end to end on synthetic detections (a vehicle model does not detect drawn cars reliably, so
the detections are generated, with box jitter and missed frames): worker rule path (tracker → BayRule) →
supervisor's bay reporting → HttpSink.put_bay → API → ``GET /api/parking``.

Three bays, one detection a second. Car A parks in bay 1, car B in bay 2 for a while, car A is hidden by a
passer-by for 8 s, and car C drives through all three bays. By the rule's documented hysteresis a bay is
occupied from arrival + ``dwell_s`` (the occupy delay) until departure + ``inertia_s``: the free count the API
serves must equal that truth at every step except within two detection intervals of a change, and car C must
never change it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from api.settings import CameraInfo, Settings, WorkerKey
from pipeline.config import Config
from pipeline.detections import LABEL_IDS, Detections
from pipeline.protocols import Frame
from pipeline.redact import Redactor
from pipeline.sinks import HttpSink
from pipeline.supervisor import Supervisor
from pipeline.worker import CameraWorker
from tests.fakes import InlineScheduler
from tests.fixtures.api import WORKER_KEY, make_settings

T0 = 1_790_000_000.0
D = 1.0  # detection interval (s)
DWELL, INERTIA = 30.0, 20.0
BAYS = {f"bay-{i + 1}": (100 + 120 * i, 200, 200 + 120 * i, 330) for i in range(3)}  # x0, y0, x1, y1
# car: (bay, arrival s, departure s, hidden (from, to) or None)
PARKED = {"A": ("bay-1", 10, 250, (150, 158)), "B": ("bay-2", 60, 140, None)}
THROUGH = (95, 105)  # car C crosses the three bays, right to left, over these seconds
END = 300


def config() -> Config:
    return Config.model_validate(
        {
            "site": {"id": "s", "grid": "fangshan/xilu/haiyi"},
            "cameras": [
                {
                    "id": "lot-a",
                    "name": "A区停车场",
                    "source": {"path": "/dev/null", "loop": False},
                    "grid": "fangshan/xilu/haiyi/0422",
                    "zones": [
                        {
                            "id": z,
                            "type": "parking_bay",
                            "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
                            "dwell_s": DWELL,
                            "inertia_s": INERTIA,
                        }
                        for z, (x0, y0, x1, y1) in BAYS.items()
                    ],
                }
            ],
        }
    )


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    cam = CameraInfo(id="lot-a", name="A区停车场", grid="fangshan/xilu/haiyi/0422", zones=list(BAYS))
    key = WorkerKey(name="worker-1", key=SecretStr(WORKER_KEY), cameras=frozenset({"lot-a"}))
    return make_settings(tmp_path, cameras=[cam], worker_keys=[key])


def detections(t: float, rng: np.random.Generator) -> Detections:
    boxes: list[list[float]] = []
    for bay, arrive, leave, hidden in PARKED.values():
        if not arrive <= t < leave or (hidden and hidden[0] <= t < hidden[1]) or rng.random() < 0.1:
            continue
        x0, y0, x1, y1 = BAYS[bay]
        boxes.append([x0 + 10, y0 + 15, x1 - 10, y1 - 10])
    if THROUGH[0] <= t < THROUGH[1]:  # 48 px/s, right to left over the three bays
        f = (t - THROUGH[0]) / (THROUGH[1] - THROUGH[0])
        cx = 520 - f * 480
        boxes.append([cx - 50, 215, cx + 50, 320])
    if not boxes:
        return Detections.empty()
    xyxy = np.asarray(boxes, np.float32) + rng.normal(0, 1.5, (len(boxes), 4)).astype(np.float32)
    n = len(boxes)
    return Detections(xyxy, np.full(n, 0.8, np.float32), np.full(n, LABEL_IDS["vehicle"], np.int64))


def truth_free(t: float) -> int:
    occupied = sum(1 for _bay, arrive, leave, _h in PARKED.values() if arrive + DWELL <= t < leave + INERTIA)
    return len(BAYS) - occupied


def test_free_count_follows_the_truth(api_client, auth_headers) -> None:
    cfg = config()
    cam = cfg.cameras[0]
    stop = threading.Event()
    # detections are fed to the worker directly: the scheduler's detector is never called
    never = InlineScheduler(lambda image: Detections.empty())
    worker = CameraWorker(cam, cfg.site, never, None, stop, lambda c, s: None)  # type: ignore[arg-type]
    sink = HttpSink("http://testserver", WORKER_KEY, transport=api_client._transport)
    sup = Supervisor(config=cfg, cameras=[cam], stop=stop, redactor=Redactor(), sink=sink, workers=[worker])
    rng = np.random.default_rng(5)
    image = np.zeros((8, 8, 3), np.uint8)
    op = auth_headers("op")
    changes = [a + DWELL for _b, a, _l, _h in PARKED.values()] + [
        le + INERTIA for _b, _a, le, _h in PARKED.values()
    ]
    served: list[tuple[float, int]] = []
    for i in range(int(END / D)):
        t = i * D
        worker._on_detections(Frame(image, T0 + t, i), detections(t, rng))
        sup.report_bays(now_mono=t)  # the status loop, on the stream's clock
        (lot,) = api_client.get("/api/parking", headers=op).json()["lots"]
        free = lot["free"]
        served.append((t, free))
        if all(abs(t - c) > 2 * D for c in changes):
            assert free == truth_free(t), (t, free, truth_free(t))
    # each truth change shows within two detection intervals; car C never occupied a bay
    at = dict(served)
    for c in changes:
        assert at[c + 2 * D] == truth_free(c + 2 * D), c
    assert all(f == truth_free(t) for t, f in served if THROUGH[0] <= t < THROUGH[1] + DWELL)
    # the history holds bay 1's curve: free, occupied, free (8 s behind a passer-by changed nothing)
    since, until = datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + END + 1, UTC)
    r = api_client.get(
        "/api/parking/lot-a/bay-1/history",
        params={"since": since.isoformat(), "until": until.isoformat()},
        headers=op,
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    curve = [
        p["occupied"] for i, p in enumerate(points) if i == 0 or p["occupied"] != points[i - 1]["occupied"]
    ]
    assert curve == [0, 1, 0]
    sink.close()
