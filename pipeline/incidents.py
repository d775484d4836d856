"""Turns one camera's rule signals into wire events with evidence stills (the rules never see frames)."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np

from pipeline.config import Camera, SiteConfig, Zone, ZoneType
from pipeline.detections import box_iou
from pipeline.events import (
    Event,
    EventState,
    EventType,
    Evidence,
    ModelRef,
    Plate,
    TrackedObject,
    utc,
)
from pipeline.ids import uuid7
from pipeline.journal import IncidentJournal, OpenIncident
from pipeline.protocols import Frame
from pipeline.rules.base import RuleSignal, SignalKind

# A still costs ~10 ms and ~150 KB; a stay of hours must not fill the disk.
MAX_SCENE_STILLS = 6
MAX_PLATE_READS = 4
# Frames kept for bin stations' "before" stills: the last clean one is usually the one just before.
RECENT_FRAMES = 3
# A stay seen after a restart continues a journalled event when its box overlaps the old one this much.
RESUME_MIN_IOU = 0.3
# How long past a zone's dwell + inertia a journalled event waits to be seen again before it is closed.
RESUME_SLACK_S = 30.0

RULE_EVENT_TYPE = {"parking": EventType.ILLEGAL_PARKING, "bins": EventType.BIN_OVERFLOW}
ZONE_NAMES_ZH = {
    ZoneType.FIRE_LANE: "消防通道",
    ZoneType.NO_PARKING: "禁停区",
    ZoneType.BIN_STATION: "垃圾桶站",
    ZoneType.PARKING_BAY: "车位",
}


class StillRenderer(Protocol):
    """What the builder needs from evidence rendering (pipeline.evidence provides it)."""

    def still(
        self, image: object, caption: list[str], boxes: Sequence[tuple[tuple[float, ...], str]]
    ) -> bytes: ...

    def plate_crop(self, image: object, box: tuple[float, ...]) -> bytes | None: ...


class PictureSource(Protocol):
    """Where stills come from when detection runs on a sub-stream (pipeline.evidence_stream provides it): the
    picture for a frame, in the pixels of the frame's detections, and the time that picture shows."""

    def picture(self, frame: Frame) -> tuple[np.ndarray, float]: ...


Emit = Callable[[Event, dict[str, bytes]], object]
PlateRequest = Callable[[str, object, tuple[float, ...]], None]


@dataclass
class _Incident:
    signal: RuleSignal
    zone: Zone
    event_id: str | None = None
    seq: int = 0
    evidence: list[Evidence] = field(default_factory=list)
    pending_files: dict[str, bytes] = field(default_factory=dict)
    scene_count: int = 0
    plates: list[tuple[str, float]] = field(default_factory=list)
    plate_reads: int = 0
    plate: tuple[str, float] | None = None
    exempt: bool = False
    origin_ts: float | None = None  # the start of an event resumed after a restart


class IncidentBuilder:
    """One per camera. Not thread-safe except ``plate_read``, which the plate service calls."""

    def __init__(
        self,
        camera: Camera,
        site: SiteConfig,
        renderer: StillRenderer,
        emit: Emit,
        model: ModelRef | None = None,
        request_plate: PlateRequest | None = None,
        vote: Callable[[list[tuple[str, float]]], tuple[str, float] | None] | None = None,
        journal: IncidentJournal | None = None,
        pictures: PictureSource | None = None,
    ) -> None:
        self.camera = camera
        self.pictures = pictures
        self.site = site
        self.tz = ZoneInfo(site.timezone)
        self.renderer = renderer
        self.emit = emit
        self.model = model
        self.request_plate = request_plate
        self.vote = vote
        self.zones = {z.id: z for z in camera.zones}
        self._open: dict[str, _Incident] = {}
        self._lock = threading.Lock()
        has_bins = any(z.type is ZoneType.BIN_STATION for z in camera.zones)
        self._recent: deque[Frame] | None = deque(maxlen=RECENT_FRAMES) if has_bins else None
        self.journal = journal
        # Open incidents of an earlier run of this camera, waiting for their stay to be seen again.
        self._resumable: dict[str, OpenIncident] = {}
        if journal is not None:
            for prev in journal.load(camera.id):
                if prev.zone_id in self.zones and prev.rule in RULE_EVENT_TYPE:
                    self._resumable[prev.event_id] = prev
                else:  # its zone was removed from the config: nothing will ever continue it
                    journal.drop(camera.id, prev.event_id)
        self._first_ts: float | None = None

    # ---- signals ---------------------------------------------------------------------------------

    def handle(self, signals: list[RuleSignal], frame: Frame) -> None:
        for s in signals:
            with self._lock:
                self._handle(s, frame)

    def _handle(self, s: RuleSignal, frame: Frame) -> None:
        inc = self._open.get(s.key)
        if s.kind is SignalKind.CANDIDATE:
            inc = self._open[s.key] = _Incident(s, self.zones[s.zone_id])
            self._resume(inc, s)
            if s.snapshot and s.rule == "bins":
                # The ideal "before" still is the last clean observation, which the rule names by ref_ts.
                self._still(inc, s, self._recent_frame(s.ref_ts) or frame, "before")
            elif s.snapshot:
                self._still(inc, s, frame, "scene")
            return
        if inc is None:
            if s.kind is not SignalKind.OPEN:
                return  # a close/update for an incident that started before this process: nothing to add to
            inc = self._open[s.key] = _Incident(s, self.zones[s.zone_id])
            self._resume(inc, s)
        inc.signal = s
        if s.kind is SignalKind.CANCEL:
            del self._open[s.key]
            if inc.event_id:  # a resumed event whose vehicle left before the new stay's threshold
                self._send(inc, EventState.CLOSED, s)
            return
        if s.snapshot:
            kind = "after" if (s.kind is SignalKind.CLOSE and s.rule == "bins") else "scene"
            self._still(inc, s, frame, kind)
        if s.rule == "parking" and s.kind in (SignalKind.OPEN, SignalKind.UPDATE) and s.snapshot:
            self._want_plate(inc, s, frame)
        if inc.exempt:
            if s.kind is SignalKind.CLOSE:
                del self._open[s.key]
            return
        if s.kind is SignalKind.OPEN and inc.event_id:  # resumed: the event is already open at the API
            self._send(inc, EventState.UPDATE, s)
        elif s.kind is SignalKind.OPEN:
            inc.event_id = str(uuid7(int(s.started_ts * 1000)))
            self._send(inc, EventState.OPEN, s)
        elif s.kind is SignalKind.UPDATE and inc.event_id:
            self._send(inc, EventState.UPDATE, s)
        elif s.kind is SignalKind.CLOSE:
            if inc.event_id:
                self._send(inc, EventState.CLOSED, s)
            del self._open[s.key]

    # ---- evidence ---------------------------------------------------------------------------------

    def observe(self, frame: Frame) -> None:
        """Called for every processed frame: keeps recent frames (bin stations' "before" stills) and closes
        resumable incidents that were not seen again in time."""
        if self._recent is not None and not frame.carried:  # a carried frame's picture is an older one
            self._recent.append(frame)
        if self._first_ts is None:
            self._first_ts = frame.ts
        if self._resumable:
            with self._lock:
                self._expire(frame.ts)

    def _resume(self, inc: _Incident, s: RuleSignal) -> None:
        """Continue a journalled event of an earlier run when this stay is the same one (zone, box)."""
        for prev in list(self._resumable.values()):
            if prev.zone_id != s.zone_id or prev.rule != s.rule:
                continue
            if s.rule == "parking":
                if prev.box_xyxy is None or s.box_xyxy is None:
                    continue
                iou = box_iou(np.array([prev.box_xyxy], np.float32), np.array([s.box_xyxy], np.float32))
                if float(iou[0, 0]) < RESUME_MIN_IOU:
                    continue
            del self._resumable[prev.event_id]
            inc.event_id, inc.seq, inc.origin_ts = prev.event_id, prev.seq, prev.started_ts
            inc.evidence = [Evidence.model_validate(e) for e in prev.evidence]
            inc.scene_count, inc.plate = prev.scene_count, prev.plate
            return

    def _expire(self, ts: float) -> None:
        assert self._first_ts is not None
        for prev in list(self._resumable.values()):
            zone = self.zones[prev.zone_id]
            if ts - self._first_ts < zone.dwell + zone.inertia_s + RESUME_SLACK_S:
                continue
            del self._resumable[prev.event_id]
            # Not seen again: it ended while the worker was down, last seen at last_ts.
            s = RuleSignal(
                kind=SignalKind.CLOSE,
                rule=prev.rule,
                zone_id=prev.zone_id,
                key=f"resumed:{prev.event_id}",
                ts=ts,
                started_ts=prev.started_ts,
                dwell_s=max(prev.last_ts - prev.started_ts, 0.0),
                label=prev.label,
                box_xyxy=prev.box_xyxy,
                severity=prev.severity,
            )
            inc = _Incident(s, zone, event_id=prev.event_id, seq=prev.seq, scene_count=prev.scene_count)
            inc.evidence = [Evidence.model_validate(e) for e in prev.evidence]
            inc.plate = prev.plate
            self._send(inc, EventState.CLOSED, s)

    def _recent_frame(self, ts: float | None) -> Frame | None:
        if ts is None or self._recent is None:
            return None
        return next((f for f in reversed(self._recent) if abs(f.ts - ts) < 1e-6), None)

    def _caption(self, s: RuleSignal, zone: Zone, ts: float, plate: tuple[str, float] | None) -> list[str]:
        local = datetime.fromtimestamp(ts, self.tz)
        grid = zone.grid or self.camera.grid or self.site.grid or "-"
        lines = [
            f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or ''}  {self.camera.name} ({self.camera.id})",
            f"区域 {zone.id} {ZONE_NAMES_ZH.get(zone.type, '')}  位置 {grid}",
            f"停留 {s.dwell_s:.0f} s  目标 {s.label} #{s.track_id}",
        ]
        if zone.violation_code:
            lines[2] += f"  违法代码 {zone.violation_code}"
        if plate:
            lines[2] += f"  车牌 {plate[0]}"
        return lines

    def _still(self, inc: _Incident, s: RuleSignal, frame: Frame, kind: str) -> None:
        if kind == "scene":
            if inc.scene_count >= MAX_SCENE_STILLS:
                return
            inc.scene_count += 1
            name = f"scene-{inc.scene_count}.jpg"
        else:
            name = f"{kind}.jpg"
        boxes = [(s.box_xyxy, s.label)] if s.box_xyxy else []
        image, ts = self._picture(frame)
        data = self.renderer.still(image, self._caption(s, inc.zone, ts, inc.plate), boxes)
        self._attach(inc, name, data, ts, kind)

    def _picture(self, frame: Frame) -> tuple[np.ndarray, float]:
        return self.pictures.picture(frame) if self.pictures is not None else (frame.image, frame.ts)

    def _attach(self, inc: _Incident, name: str, data: bytes, ts: float, kind: str) -> None:
        inc.evidence = [e for e in inc.evidence if e.name != name]
        inc.evidence.append(
            Evidence(name=name, taken_at=utc(ts), sha256=hashlib.sha256(data).hexdigest(), kind=kind)  # type: ignore[arg-type]
        )
        inc.pending_files[name] = data

    def _want_plate(self, inc: _Incident, s: RuleSignal, frame: Frame) -> None:
        if s.box_xyxy is None:
            return
        image, ts = self._picture(frame)
        if not any(e.kind == "plate" for e in inc.evidence):
            crop = self.renderer.plate_crop(image, s.box_xyxy)
            if crop is not None:
                self._attach(inc, "plate-1.jpg", crop, ts, "plate")
        if self.request_plate and inc.plate_reads < MAX_PLATE_READS:
            inc.plate_reads += 1
            self.request_plate(s.key, image, s.box_xyxy)

    def plate_read(self, key: str, text: str, confidence: float) -> None:
        """Called from the plate service's thread when a crop was read."""
        with self._lock:
            inc = self._open.get(key)
            if inc is None:
                return
            inc.plates.append((text, confidence))
            inc.plate = self.vote(inc.plates) if self.vote else max(inc.plates, key=lambda p: p[1])
            if inc.plate and inc.plate[0] in inc.zone.exempt_plates:
                inc.exempt = True

    # ---- wire -------------------------------------------------------------------------------------

    def _send(self, inc: _Incident, state: EventState, s: RuleSignal) -> None:
        assert inc.event_id is not None
        zone = inc.zone
        plate = Plate(text=inc.plate[0], confidence=round(inc.plate[1], 3)) if inc.plate else None
        box = [round(float(v), 1) for v in s.box_xyxy] if s.box_xyxy else None
        obj = None
        if box and box[0] < box[2] and box[1] < box[3]:
            obj = TrackedObject(
                label=s.label,  # type: ignore[arg-type]
                track_id=s.track_id,
                confidence=round(min(max(s.confidence, 0.0), 1.0), 3),
                box_xyxy=[max(v, 0.0) for v in box],
                plate=plate,
            )
        # A close arrives inertia_s after the vehicle left; the stay itself ended at started + dwell.
        stay_end = s.started_ts + max(s.dwell_s, 0.0) if state is EventState.CLOSED else s.ts
        if inc.origin_ts is None:
            started, dwell = s.started_ts, max(s.dwell_s, 0.0)
        else:  # resumed after a restart: the stay began in the earlier run
            started = inc.origin_ts
            dwell = max(stay_end - started, 0.0)
        ended = utc(max(stay_end, started)) if state is EventState.CLOSED else None
        event = Event(
            id=inc.event_id,
            type=RULE_EVENT_TYPE[s.rule],
            state=state,
            camera_id=self.camera.id,
            zone_id=zone.id,
            bin_id=zone.bin_ids[0] if zone.bin_ids else None,
            bin_ids=list(zone.bin_ids),
            started_at=utc(started),
            updated_at=utc(max(s.ts, started)),
            ended_at=ended,
            dwell_s=round(dwell, 1),
            severity=s.severity,
            object=obj,
            evidence=list(inc.evidence),
            model=self.model,
            grid=zone.grid or self.camera.grid or self.site.grid,
            violation_code=zone.violation_code,
            allowed_dwell_s=zone.dwell,
            seq=inc.seq,
        )
        files, inc.pending_files = inc.pending_files, {}
        inc.seq += 1
        self.emit(event, files)
        if self.journal is not None:
            if state is EventState.CLOSED:
                self.journal.drop(self.camera.id, inc.event_id)
            else:
                self.journal.save(
                    OpenIncident(
                        camera_id=self.camera.id,
                        event_id=inc.event_id,
                        rule=s.rule,
                        zone_id=zone.id,
                        started_ts=started,
                        last_ts=s.ts,
                        seq=inc.seq,
                        label=s.label,
                        box_xyxy=tuple(s.box_xyxy) if s.box_xyxy else None,  # type: ignore[arg-type]
                        evidence=[e.model_dump(mode="json") for e in inc.evidence],
                        scene_count=inc.scene_count,
                        plate=inc.plate,
                        severity=s.severity,
                    )
                )

    def busy(self) -> bool:
        """Any incident open or building (candidates included)."""
        with self._lock:
            return bool(self._open)

    def open_keys(self) -> list[str]:
        with self._lock:
            return [k for k, inc in self._open.items() if inc.event_id]
