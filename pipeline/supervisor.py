"""Runs a process's camera workers around one shared set of detectors, one outbox and one sink."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import Camera, Config
from pipeline.errors import ModelError, PinganError
from pipeline.events import Event, ModelRef
from pipeline.evidence_stream import EvidenceStream, open_evidence_stream
from pipeline.health import CameraHealth
from pipeline.incidents import IncidentBuilder
from pipeline.inference import InferenceScheduler
from pipeline.journal import IncidentJournal
from pipeline.lag import Lag, LagMeter
from pipeline.plate_service import PlateService
from pipeline.protocols import Detector, FrameSource
from pipeline.redact import Redactor
from pipeline.worker import CameraWorker

log = logging.getLogger(__name__)

STATUS_EVERY_S = 2.0
LAG_REPEAT_S = 300.0  # while cameras stay behind, the warning is repeated this often (not every status)
BAY_EVERY_S = 30.0  # parking-bay occupancy is sent on change and at least this often


def plate_region(box: tuple[float, ...]) -> tuple[float, float, float, float]:
    """Plates sit in the lower part of a vehicle's box: crop there so the close-up and the reader see it."""
    x1, y1, x2, y2 = box
    return (x1, y1 + (y2 - y1) * 0.45, x2, y2)


class EvidenceRenderer:
    """Adapts pipeline.evidence to what the incident builder asks for."""

    def still(
        self, image: object, caption: list[str], boxes: Sequence[tuple[tuple[float, ...], str]]
    ) -> bytes:
        from pipeline.evidence import render_still

        return render_still(image, caption, boxes)  # type: ignore[arg-type]

    def plate_crop(self, image: object, box: tuple[float, ...]) -> bytes | None:
        from pipeline.evidence import crop_upscaled

        try:
            crop = crop_upscaled(image, plate_region(box), scale=3.0, min_size=240)  # type: ignore[arg-type]
        except ValueError:  # box outside the frame
            return None
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
        return bytes(np.asarray(buf).tobytes()) if ok else None


@dataclass
class Supervisor:
    config: Config
    cameras: list[Camera]
    stop: threading.Event
    redactor: Redactor
    models_dir: Path = Path("models")
    sink: object | None = None  # EventSink with put_status; default: HttpSink to the API
    detectors: dict[str, Detector] | None = None
    source_factory: object | None = None
    stuck_after_s: float = 30.0  # a detector call running longer than this is stuck: its thread is replaced
    plate_reading: bool = True
    workers: list[CameraWorker] = field(default_factory=list)
    _model_errors: dict[str, str] = field(default_factory=dict)
    _bays_sent: dict[tuple[str, str], tuple[object, float]] = field(default_factory=dict)  # last accepted
    _behind_since: float | None = None  # monotonic: since when some camera has been behind
    _lag_told: float = 0.0  # monotonic: when that was last logged

    def start(self) -> None:
        from pipeline.detection import cross_camera_batch
        from pipeline.outbox import Outbox

        cfg = self.config
        data_dir = cfg.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.detectors is None:
            self.detectors = self._load_detectors()
        # A camera whose model could not be loaded is reported, not run; the other cameras go on.
        self.unavailable: dict[str, str] = {}
        for cam in self.cameras:
            missing = [m for m in cam.models if m not in self.detectors]
            if missing:
                self.unavailable[cam.id] = (
                    f"model {', '.join(missing)} unavailable: {self._model_errors.get(missing[0])}"
                )
                log.error("camera %s not started: %s", cam.id, self.unavailable[cam.id])
        self.cameras = [c for c in self.cameras if c.id not in self.unavailable]
        self._own_sink = self.sink is None  # made here: closed here (its HTTP connections) at shutdown
        if self.sink is None:
            from pipeline.sinks_nats import sink_for  # HttpSink to the API, or NatsSink when bus.kind is nats

            self.sink = sink_for(cfg)
        # The outbox outlives the workers at shutdown (it flushes what they left), so it has its own stop.
        self._outbox_stop = threading.Event()
        self.outbox = Outbox(data_dir / "outbox.db", self.sink, self._outbox_stop)  # type: ignore[arg-type]
        # Open incidents survive a restart: a car still parked continues its event, not a second one.
        self.journal = IncidentJournal(data_dir / "incidents.db")
        self.scheduler = InferenceScheduler(
            self.detectors,
            self.stop,
            threads=cfg.detector.inference_threads,
            stuck_after_s=self.stuck_after_s,
            max_batch=cross_camera_batch(self.detectors.values(), cfg.detector.max_batch),
            max_age_s=cfg.detector.max_frame_age_s,
        )
        self.plates = self._plate_service()
        factory = self.source_factory or self._open_source
        for cam in self.cameras:
            det = self.detectors[cam.models[0]]
            builder = IncidentBuilder(
                cam,
                cfg.site,
                EvidenceRenderer(),
                self.outbox.put,
                model=ModelRef(name=det.name, sha256=det.sha256),
                request_plate=None,
                vote=self._vote(),
                journal=self.journal,
            )
            if self.plates is not None:
                builder.request_plate = self._plate_request(builder)
            self.workers.append(
                CameraWorker(
                    cam,
                    cfg.site,
                    self.scheduler,
                    builder,
                    self.stop,
                    factory,  # type: ignore[arg-type]
                    evidence_factory=self._open_evidence,
                    lag=LagMeter.for_camera(
                        cam.detect_fps, cfg.detector.behind_result_age_s, cfg.detector.behind_shed_share
                    ),
                )
            )
        self.health = {w.camera.id: CameraHealth(w.camera, cfg.site) for w in self.workers}
        self.scheduler.start()
        if self.plates is not None:
            self.plates.start()
        for w in self.workers:
            w.start()
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()
        log.info(
            "supervisor: %d camera(s) started; up to %d camera(s) per detector call",
            len(self.workers),
            self.scheduler.max_batch,
        )

    # ---- parts ------------------------------------------------------------------------------------

    def _load_detectors(self) -> dict[str, Detector]:
        from pipeline.detection import DEFAULT_MAX_BATCH, load_detector

        names = sorted({m for c in self.cameras for m in c.models})
        d = self.config.detector
        out: dict[str, Detector] = {}
        for n in names:
            try:
                out[n] = load_detector(
                    n,
                    self.models_dir,
                    providers=d.providers,
                    intra_op_threads=d.intra_op_threads,
                    precision=d.precision,
                    max_batch=d.max_batch or DEFAULT_MAX_BATCH,
                )
            except PinganError as err:
                self._model_errors[n] = str(err)
        if names and not out:
            raise ModelError("no model could be loaded: " + "; ".join(self._model_errors.values()))
        return out

    def _open_source(self, camera: Camera, stop: threading.Event) -> FrameSource:
        from pipeline.sources import open_source

        return open_source(camera, stop, self.redactor)

    def _open_evidence(self, camera: Camera, stop: threading.Event) -> EvidenceStream:
        return open_evidence_stream(camera, stop, self.redactor)

    def _plate_service(self) -> PlateService | None:
        if not self.plate_reading or not any(
            z.type.value in ("no_parking", "fire_lane") for c in self.cameras for z in c.zones
        ):
            return None
        try:
            from pipeline.plates import PlateReader

            reader = PlateReader()
        except Exception as err:  # the plates extra is optional
            log.warning("plate reading unavailable: %s", err)
            return None
        return PlateService(reader, self.stop)

    @staticmethod
    def _vote():  # type: ignore[no-untyped-def]
        try:
            from pipeline.plates import vote

            return vote
        except ImportError:
            return None

    def _plate_request(self, builder: IncidentBuilder):  # type: ignore[no-untyped-def]
        plates = self.plates
        assert plates is not None

        def request(key: str, image: object, box: tuple[float, ...]) -> None:
            plates.request(image, plate_region(box), lambda text, conf: builder.plate_read(key, text, conf))  # type: ignore[arg-type]

        return request

    # ---- health -----------------------------------------------------------------------------------

    def _status_loop(self) -> None:
        while not self.stop.wait(STATUS_EVERY_S):
            self.check_inference()
            self.report_status()

    def check_inference(self) -> int:
        """Restart inference threads stuck in a detector call (``InferenceScheduler.stuck()``)."""
        if not self.scheduler.stuck():
            return 0
        n = self.scheduler.restart_stuck()
        log.error("supervisor: %d stuck inference thread(s) replaced (%d in all)", n, self.scheduler.restarts)
        return n

    def report_status(self) -> None:
        now_wall, now_mono = time.time(), time.monotonic()
        put_status = getattr(self.sink, "put_status", None)
        for cam_id, reason in self.unavailable.items():
            if put_status is not None:
                cam = self.config.camera(cam_id)
                put_status(cam_id, {"name": cam.name, "state": "stopped", "reason": reason[:480]})
        lags: dict[str, Lag] = {}
        for w in self.workers:
            st = w.status()
            event: Event | None = self.health[w.camera.id].update(st.source, now_wall, now_mono)
            if event is not None:
                self.outbox.put(event, {})
            src = st.source
            payload = {
                "name": w.camera.name,
                "state": src.state.value,
                "reason": self.redactor.redact(src.reason) if src.reason else None,
                "last_frame_at": src.last_frame_ts,
                "fps": round(src.fps, 3),
                "frames": src.frames,
                "dropped": st.dropped,
                "reconnects": src.reconnects,
                "keyframe_interval_s": src.keyframe_interval_s,
                "decode": src.decode,
                "detections": st.detections,
                "gated": st.gated,
                "undecoded": st.carried,
                "detector_ms": st.detector_ms,
                "outbox_depth": self.outbox.depth(),
            }
            if st.lag is not None:
                lags[w.camera.id] = st.lag
                age, share = st.lag.result_age_s, st.lag.shed_share
                payload["result_age_ms"] = None if age is None else round(age * 1000)
                payload["shed_share"] = None if share is None else round(share, 3)
                payload["behind"] = st.lag.behind
            if st.evidence is not None:  # the main stream, where detection runs on a sub-stream
                payload["evidence_state"] = st.evidence.state.value
                why = st.evidence.reason
                payload["evidence_reason"] = f"main stream: {self.redactor.redact(why)}" if why else None
            if put_status is not None:
                put_status(w.camera.id, payload)
        self._log_lag(lags, now_mono)
        self.report_bays(now_mono)

    def _log_lag(self, lags: dict[str, Lag], now_mono: float) -> None:
        """Warn when cameras fall behind (the box carries more than it serves), again every ``LAG_REPEAT_S``
        while they stay behind, and say when all have recovered."""
        behind = sorted(c for c, lag in lags.items() if lag.behind)
        if behind and (self._behind_since is None or now_mono - self._lag_told >= LAG_REPEAT_S):
            self._behind_since = self._behind_since if self._behind_since is not None else now_mono
            self._lag_told = now_mono
            worst = max(behind, key=lambda c: (lags[c].shed_share or 0.0, lags[c].result_age_s or 0.0))
            age, share = lags[worst].result_age_s, lags[worst].shed_share
            figures = [f"results p95 {age:.1f} s after capture"] if age is not None else []
            figures += [f"{share:.0%} of due frames shed"] if share is not None else []
            lasted = now_mono - self._behind_since
            log.warning(
                "detector behind on %d of %d camera(s)%s (%s): worst %s, %s; the box is past its capacity "
                "(README: Performance)",
                len(behind),
                len(lags),
                f" for {lasted:.0f} s" if lasted >= 1 else "",
                ", ".join(behind[:8]) + (" …" if len(behind) > 8 else ""),
                worst,
                ", ".join(figures),
            )
        elif not behind and self._behind_since is not None:
            log.info("detector keeping up with all cameras again after %.0f s", now_mono - self._behind_since)
            self._behind_since = None

    def report_bays(self, now_mono: float | None = None) -> int:
        """Send each parking bay's occupancy (``sink.put_bay``, best effort) when it changed since it was last
        accepted, or every ``BAY_EVERY_S``. Returns how many were sent."""
        put_bay = getattr(self.sink, "put_bay", None)
        if put_bay is None:
            return 0
        now_mono = time.monotonic() if now_mono is None else now_mono
        sent = self._bays_sent
        n = 0
        for w in self.workers:
            for zone_id, (st, ts) in w.bay_states().items():
                key = (w.camera.id, zone_id)
                last = sent.get(key)
                if last is not None and last[0] == st and now_mono - last[1] < BAY_EVERY_S:
                    continue
                zone = next(z for z in w.camera.zones if z.id == zone_id)
                payload = {
                    "occupied": st.occupied,
                    "capacity": st.capacity,
                    "free": st.free,
                    "ts": ts,
                    "grid": zone.grid or w.camera.grid or self.config.site.grid,
                }
                if put_bay(w.camera.id, zone_id, payload):
                    sent[key] = (st, now_mono)
                n += 1
        return n

    # ---- shutdown ---------------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 8.0) -> None:
        """Stop the workers, then give the outbox what is left of the time to deliver."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            w.join(max(0.1, min(2.0, deadline - time.monotonic())))
        self.scheduler.join(max(0.1, min(2.0, deadline - time.monotonic())))
        if self.plates is not None:
            # A read in flight sits in ONNX Runtime; left running at interpreter exit, it aborts the process.
            self.plates.join(max(0.5, min(4.0, deadline - time.monotonic())))
        self._status_thread.join(1.0)
        self.journal.close()
        self.outbox.flush(max(0.1, deadline - time.monotonic()))
        self._outbox_stop.set()
        self.outbox.close(max(0.5, deadline - time.monotonic()))
        close = getattr(self.sink, "close", None)
        if self._own_sink and close is not None:
            try:
                close()
            except Exception as err:  # shutting down: report, go on
                log.warning("closing the sink failed: %s", type(err).__name__)
