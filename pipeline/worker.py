"""One camera's stages wired together: source → gate → (shared detector) → tracker → rules → incidents.

The worker's thread is the supervision boundary for its camera: whatever goes wrong there is logged
(credential-masked), counted and retried after a backoff, and never reaches another camera.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from pipeline.config import Camera, FileSource, SiteConfig, ZoneType
from pipeline.detections import LABEL_IDS, Detections
from pipeline.evidence_stream import EvidenceFactory, EvidenceStream, open_evidence_stream
from pipeline.gate import SceneGate
from pipeline.incidents import IncidentBuilder
from pipeline.inference import InferenceScheduler
from pipeline.lag import Lag, LagMeter
from pipeline.packet_gate import PacketGate, PacketGateStatus
from pipeline.protocols import Clock, Frame, FrameSource, SourceState, SourceStatus, SystemClock
from pipeline.rules.base import RuleSignal
from pipeline.rules.bays import BayState
from pipeline.sources import Source
from pipeline.zones import Polygon

log = logging.getLogger(__name__)

SourceFactory = Callable[[Camera, threading.Event], FrameSource]


class Rule(Protocol):
    """What the worker needs of a rule (parking, bins)."""

    def update(self, dets: Detections, ts: float) -> list[RuleSignal]: ...


def build_rules(camera: Camera, site: SiteConfig) -> list[Rule]:
    from pipeline.rules.bays import BayRule
    from pipeline.rules.bins import BinRule
    from pipeline.rules.parking import ParkingRule

    rules: list[Rule] = []
    for zone in camera.zones:
        if zone.type in (ZoneType.NO_PARKING, ZoneType.FIRE_LANE):
            rules.append(ParkingRule(zone, site.timezone))
        elif zone.type is ZoneType.BIN_STATION:
            rules.append(BinRule(zone))
        elif zone.type is ZoneType.PARKING_BAY:
            rules.append(BayRule(zone))  # type: ignore[arg-type]  # gives a BayState, not signals
    return rules


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    camera_id: str
    source: SourceStatus
    detections: int
    gated: int
    dropped: int
    crashes: int
    detector_ms: float | None
    last_detection_ts: float | None
    carried: int = 0  # due keyframes the packet gate let go undecoded
    packet_gate: PacketGateStatus | None = None
    evidence: SourceStatus | None = None  # the main stream, where detection runs on a sub-stream
    lag: Lag | None = None  # is the detector keeping up with this camera (pipeline/lag.py)


class CameraWorker:
    def __init__(
        self,
        camera: Camera,
        site: SiteConfig,
        scheduler: InferenceScheduler,
        builder: IncidentBuilder | None,
        stop: threading.Event,
        source_factory: SourceFactory,
        rules: list[Rule] | None = None,
        tracker: object | None = None,
        evidence_factory: EvidenceFactory | None = None,
        clock: Clock | None = None,
        lag: LagMeter | None = None,
    ) -> None:
        from pipeline.tracking import Tracker

        self.camera = camera
        self.scheduler = scheduler
        self.builder = builder
        self.stop = stop
        self.source_factory = source_factory
        self.rules = build_rules(camera, site) if rules is None else rules
        self.tracker = tracker if tracker is not None else Tracker()
        self.gate: SceneGate | None = None
        self.packet_gate = PacketGate(refresh_s=camera.gate_refresh_s) if camera.packet_gate else None
        # zone bounding boxes (x0, y0, x1, y1): an object of a label the zones watch, overlapping one, holds
        # the packet gate
        boxes = [Polygon.of(z.polygon).bbox for z in camera.zones]
        self._zone_boxes = np.array(boxes, np.float32).reshape(-1, 4)
        labels = {LABEL_IDS[n] for z in camera.zones for n in z.labels or ()}
        self._zone_labels = np.array(sorted(labels), np.int64)
        self._carried = 0
        self._held = True  # what the packet gate was last told
        self._lock = threading.Lock()
        self._source: FrameSource | None = None
        self._last_dets: Detections | None = None
        self._last_det_ts: float | None = None
        self._detections = 0
        self._gated = 0
        self._crashes = 0
        self.clock = clock or SystemClock()
        self.lag = lag if lag is not None else LagMeter.for_camera(camera.detect_fps)
        # a frame's ts is its capture time on the wall clock only where the source runs in real time
        src = camera.source
        self._live = not isinstance(src, FileSource) or src.realtime
        self._bays: dict[str, tuple[BayState, float]] = {}  # zone id -> (latest state, stream ts)
        # Detecting on a sub-stream: the main stream gives the stills, and its size maps detections into the
        # pixels the zones are drawn in.
        self.evidence: EvidenceStream | None = None
        if camera.detect_source is not None:
            self.evidence = (evidence_factory or open_evidence_stream)(camera, stop)
            if builder is not None:
                builder.pictures = self.evidence
        self._waiting_since: float | None = None
        self._waiting_told = False
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.id}", daemon=True)
        scheduler.register(camera.id, camera.models, self._on_detections)

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.evidence is not None:
            self.evidence.start()
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                self._source = self.source_factory(self.camera, self.stop)
                if isinstance(self._source, Source):
                    if self.packet_gate is not None:
                        self._source.packet_gate = self.packet_gate
                    self._source.admit = partial(self.scheduler.admit, self.camera.id)
                for frame in self._source.frames():
                    if self.stop.is_set():
                        break
                    self._on_frame(frame)
                    backoff = 1.0
            except Exception as err:  # supervision boundary for this camera
                self._crashes += 1
                log.error("camera %s: worker error (%s); restarting in %.0f s", self.camera.id, err, backoff)
                log.debug("camera %s: worker traceback", self.camera.id, exc_info=True)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.camera.backoff_max_s)
            finally:
                if self._source is not None:
                    self._source.close()
            if isinstance(self.camera.source, FileSource) and not self.camera.source.loop:
                self.stop.wait()  # a finished file stays finished; rules keep their state until shutdown
            elif not self.stop.is_set():
                self.stop.wait(backoff)  # frames() ends by itself only on faults the source gave up on
        if self.evidence is not None:
            self.evidence.close()

    # ---- per frame ----------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if self.evidence is not None and self.evidence.size() is None:
            # The main stream's size is not known yet: zones (in its pixels) cannot be placed on the
            # sub-stream. Its status (reported with the camera's) says why; the log says it once.
            self._waiting_since = self._waiting_since or frame.ts
            if not self._waiting_told and frame.ts - self._waiting_since > self.camera.open_timeout_s:
                self._waiting_told = True
                log.warning(
                    "camera %s: not detecting until its main stream's picture size is known", self.camera.id
                )
            return
        if frame.carried:  # not decoded: the packets said nothing moved; time runs on with the last result
            # ... unless the gate was held since the source decided (it reads ahead when the worker lags):
            # objects in zones are never judged on a picture that is not this moment's; the frame is dropped.
            if self._last_dets is not None and not self._held:
                self._carried += 1
                self._apply(frame, self._last_dets, detected=False)
            return
        if self.camera.static_gate:
            if self.gate is None:  # made on the first frame: it needs the frame size
                sx, sy = self._scale(frame)
                polygons = [[(x / sx, y / sy) for x, y in z.polygon] for z in self.camera.zones]
                self.gate = SceneGate(polygons, frame.image.shape, refresh_s=self.camera.gate_refresh_s)
            changed = self.gate.changed(frame.image, frame.ts)
            if self.packet_gate is not None:
                self.packet_gate.checked(frame.motion, frame.ts, self.gate.last_moved)
            if not changed and self._last_dets is not None:
                # Zones unchanged since the last detection: carry its result forward so dwell timers run on.
                self._gated += 1
                self._apply(frame, self._last_dets, detected=False)
                return
        self.scheduler.submit(self.camera.id, frame)

    def _on_detections(self, frame: Frame, dets: Detections) -> None:
        sx, sy = self._scale(frame)
        self._apply(frame, dets if sx == sy == 1.0 else dets.scaled(sx, sy), detected=True)
        if self._live:
            self.lag.result(self.clock.monotonic(), self.clock.time() - frame.ts)

    def _scale(self, frame: Frame) -> tuple[float, float]:
        """From this frame's pixels to the main stream's (where zones are drawn): 1 without a sub-stream."""
        size = self.evidence.size() if self.evidence is not None else None
        if size is None:
            return 1.0, 1.0
        h, w = frame.image.shape[:2]
        return size[0] / w, size[1] / h

    def _apply(self, frame: Frame, dets: Detections, detected: bool) -> None:
        with self._lock:
            if detected:
                self._detections += 1
                self._last_dets = dets
                self._last_det_ts = frame.ts
            tracked = self.tracker.update(dets, frame.ts)  # type: ignore[attr-defined]
            signals: list[RuleSignal] = []
            for rule in self.rules:
                out = rule.update(tracked, frame.ts)
                if isinstance(out, BayState):  # parking bays: occupancy, reported by the supervisor
                    self._bays[rule.zone.id] = (out, frame.ts)  # type: ignore[attr-defined]
                else:
                    signals.extend(out)
            if self.builder is not None:  # a camera with parking bays only has no incidents to build
                if signals:
                    self.builder.handle(signals, frame)
                self.builder.observe(frame)
            if self.packet_gate is not None or self.evidence is not None:
                # stills may be needed: an incident is open, or an object the zones watch overlaps one
                busy = self.builder is not None and self.builder.busy()
                self._held = busy or self._in_zones(tracked)
                if self.packet_gate is not None:
                    self.packet_gate.hold(self._held)
                if self.evidence is not None:
                    self.evidence.want(self._held, frame.ts)

    def _in_zones(self, dets: Detections) -> bool:
        """Does any object overlap any zone's bounding box? (Coarse on purpose: it only keeps decoding on.)"""
        dets = dets[np.isin(dets.class_id, self._zone_labels)]  # a passer-by in a fire lane changes nothing
        if len(dets) == 0 or len(self._zone_boxes) == 0:
            return False
        b, z = dets.xyxy[:, None, :], self._zone_boxes[None, :, :]
        across = (b[..., 0] < z[..., 2]) & (b[..., 2] > z[..., 0])
        down = (b[..., 1] < z[..., 3]) & (b[..., 3] > z[..., 1])
        return bool((across & down).any())

    def bay_states(self) -> dict[str, tuple[BayState, float]]:
        """The latest occupancy of each ``parking_bay`` zone, with the stream time it was measured."""
        with self._lock:
            return dict(self._bays)

    # ---- health -------------------------------------------------------------------------------------

    def status(self) -> WorkerStatus:
        src = self._source.status() if self._source is not None else None
        if src is None:
            src = SourceStatus(state=SourceState.CONNECTING, since=time.monotonic())
        dropped = self.scheduler.dropped(self.camera.id) + src.dropped
        now = self.clock.monotonic()
        self.lag.counts(now, self._detections + self._gated + self._carried, dropped)
        return WorkerStatus(
            camera_id=self.camera.id,
            source=src,
            detections=self._detections,
            gated=self._gated,
            dropped=dropped,
            crashes=self._crashes,
            detector_ms=self.scheduler.latency_ms(self.camera.id),
            last_detection_ts=self._last_det_ts,
            carried=self._carried,
            packet_gate=self.packet_gate.status() if self.packet_gate is not None else None,
            evidence=self.evidence.status() if self.evidence is not None else None,
            lag=self.lag.lag(now),
        )
