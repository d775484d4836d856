"""Fakes for the pipeline's I/O seams (pipeline/protocols.py). Others add theirs here with targeted edits."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.detections import VEHICLE, Detections
from pipeline.errors import PermanentSinkError, SinkError
from pipeline.events import Event


@dataclass
class Delivery:
    event: Event
    files: dict[str, bytes]


@dataclass
class MemorySink:
    """EventSink that keeps what it is given. Thread-safe.

    Failure injection, checked in this order on every ``send``:
    - ``reject(event) -> bool``: True → PermanentSinkError (nothing recorded);
    - ``fail_next``: that many next sends raise SinkError (nothing recorded);
    - ``fail_rate``: probability of a transient SinkError (seeded by ``seed``);
    - ``gate``: when set to a cleared ``threading.Event``, sends block until it is set (slow API).
    ``calls`` counts every attempt; ``deliveries`` holds the acknowledged ones, in order.
    """

    fail_rate: float = 0.0
    seed: int = 0
    fail_next: int = 0
    reject: Callable[[Event], bool] | None = None
    gate: threading.Event | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    calls: int = 0
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self.delivered = threading.Condition(self._lock)

    def send(self, event: Event, files: dict[str, bytes]) -> None:
        if self.gate is not None:
            self.gate.wait(10.0)
        with self._lock:
            self.calls += 1
            if self.reject is not None and self.reject(event):
                raise PermanentSinkError(f"rejected {event.id}#{event.seq}")
            if self.fail_next > 0:
                self.fail_next -= 1
                raise SinkError("injected transient failure")
            if self.fail_rate and self._rng.random() < self.fail_rate:
                raise SinkError("injected random transient failure")
            self.deliveries.append(Delivery(event, dict(files)))
            self.delivered.notify_all()

    def put_status(self, camera_id: str, payload: dict[str, Any]) -> bool:
        with self._lock:
            self.statuses.append((camera_id, dict(payload)))
        return True

    def acked(self) -> list[tuple[str, int]]:
        """(id, seq) of each acknowledged delivery, in delivery order (duplicates kept)."""
        with self._lock:
            return [(d.event.id, d.event.seq) for d in self.deliveries]

    def wait_for(self, n: int, timeout_s: float = 5.0) -> bool:
        with self.delivered:
            return self.delivered.wait_for(lambda: len(self.deliveries) >= n, timeout_s)


class FakeClock:
    """Clock whose time moves only when told: ``advance(s)``. ``time()`` starts at a fixed epoch."""

    def __init__(self, start_time: float = 1_764_144_000.0, start_monotonic: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._wall = start_time
        self._mono = start_monotonic

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds


class RecordingApi:
    """A tiny stand-in for the pingan API's worker routes on 127.0.0.1 (stdlib ``http.server`` in a thread).

    Records every request; de-duplicates messages by (id, seq) like the API (201 new, 200 duplicate) and
    evidence by (id, name); with ``batch=True`` it also serves ``POST /api/events/batch`` (per-item codes;
    without it that route is a 404, as on an older API). ``script`` is a list of status codes answered to the
    next requests instead of handling them (e.g. ``[503, 500]``); ``delay_s`` slows every answer; ``port`` may
    be fixed (to start after a refusal).
    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self, port: int = 0, delay_s: float = 0.0, script: list[int] | None = None, batch: bool = False
    ) -> None:
        self.port = port
        self.batch = batch  # serve POST /api/events/batch (else 404, as an older API)
        self.delay_s = delay_s
        self.script = list(script or [])
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers, body
        self.messages: dict[tuple[str, int], dict[str, Any]] = {}
        self.created: list[tuple[str, int]] = []  # (id, seq) of each 201, in order
        self.evidence: dict[tuple[str, str], bytes] = {}
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        import json
        import time

        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.requests.append((method, path, headers, body))
            if self.script:
                return self.script.pop(0), b'{"detail": "scripted"}'
            parts = path.strip("/").split("/")
            if method == "POST" and parts == ["api", "events"]:
                return self._store(json.loads(body)), b"{}"
            if method == "POST" and parts == ["api", "events", "batch"] and self.batch:
                codes = [self._store(msg) for msg in json.loads(body)["events"]]
                items = [{"index": i, "code": c} for i, c in enumerate(codes)]
                return 200, json.dumps({"items": items}).encode()
            if (
                method == "PUT"
                and len(parts) == 5
                and parts[:2] == ["api", "events"]
                and parts[3] == "evidence"
            ):
                if not any(k[0] == parts[2] for k in self.messages):
                    return 404, b'{"detail": "no such event"}'
                dup = (parts[2], parts[4]) in self.evidence
                self.evidence[(parts[2], parts[4])] = body
                return (200 if dup else 201), b"{}"
            if (
                method == "PUT"
                and len(parts) == 4
                and parts[:2] == ["api", "cameras"]
                and parts[3] == "status"
            ):
                self.statuses.append((parts[2], json.loads(body)))
                return 204, b""
            return 404, b'{"detail": "not found"}'

    def _store(self, msg: dict[str, Any]) -> int:
        key = (msg["id"], int(msg["seq"]))
        if key in self.messages:
            return 200
        self.messages[key] = msg
        self.created.append(key)
        return 201

    def start(self) -> RecordingApi:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                code, out = api._handle(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                if out:
                    self.wfile.write(out)

            do_POST = do_PUT = do_GET = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> RecordingApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SlowDetector:
    """A Detector that takes ``delay_s`` a call and finds one vehicle in every image; counts its calls."""

    name = "slow"
    sha256 = None

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.calls += 1
        time.sleep(self.delay_s)
        return [Detections(np.array([[1, 2, 30, 40]]), np.array([0.9]), np.array([VEHICLE])) for _ in images]


# Two file cameras with a fire lane each, for supervisor tests (``.format(data=DATA_DIR)``).
TWO_CAMERAS_CONFIG = """
site: {{id: s, timezone: Asia/Shanghai}}
storage: {{data_dir: {data}}}
cameras:
  - id: cam-a
    name: A
    source: {{path: a.mp4}}
    zones: [{{id: z, type: fire_lane, polygon: [[0, 0], [60, 0], [60, 40], [0, 40]]}}]
  - id: cam-b
    name: B
    source: {{path: b.mp4}}
    zones: [{{id: z, type: fire_lane, polygon: [[0, 0], [60, 0], [60, 40], [0, 40]]}}]
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InlineScheduler:
    """The shared-detector seam (``InferenceScheduler``) run inline on the worker's thread: ``detect`` stands
    in for the model. Records what it was given: ``seen`` (ts, found anything) and the picture ``shapes``."""

    def __init__(self, detect: Callable[[Any], Any]) -> None:
        self.detect = detect
        self.done: Callable[[Any, Any], None] | None = None
        self.seen: list[tuple[float, bool]] = []
        self.shapes: set[tuple[int, ...]] = set()

    def register(self, camera_id: str, models: Any, done: Callable[[Any, Any], None]) -> None:
        self.done = done

    def submit(self, camera_id: str, frame: Any) -> None:
        assert not frame.carried, "a carried frame must never reach the detector"
        dets = self.detect(frame.image)
        self.seen.append((frame.ts, len(dets) > 0))
        self.shapes.add(frame.image.shape)
        assert self.done is not None
        self.done(frame, dets)

    def admit(self, camera_id: str, age_s: float = 0.0) -> bool:
        return True  # inline: no frame ever waits, so the detector is never behind

    def dropped(self, camera_id: str) -> int:
        return 0

    def latency_ms(self, camera_id: str) -> float | None:
        return None


def red_car(image: Any) -> Any:
    """Stand-in detector for ``pipeline.devtools.clips.parking_scene``: the red car's box, by colour."""
    import numpy as np

    from pipeline.detections import VEHICLE, Detections

    b, g, r = (image[..., i].astype(np.int16) for i in range(3))
    ys, xs = np.nonzero((r > 150) & (b < 80) & (g < 80))
    if len(xs) <= 50:
        return Detections.empty()
    box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    return Detections(xyxy=box, confidence=[0.9], class_id=[VEHICLE])
