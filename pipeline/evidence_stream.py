"""A camera's main stream as a source of evidence pictures, for cameras that detect on their sub-stream.

Detection needs few pixels (the detector sees 416×234 of a 16:9 frame), evidence needs many (a plate close-up
from a 1080p frame). A camera with an analytics sub-stream (``detect_source``) is decoded and detected at the
sub-stream's resolution, and its main stream is only demuxed: the last few keyframes are kept as packets and
one is decoded (~20 ms at 1080p) only when the incident builder takes a still, a few times per incident. The
main stream's picture size, learnt from a decoded keyframe, maps detections into its pixels, where zones are
drawn and where event boxes and stills are.

The main stream is connected only while stills may be needed (an object the zones watch overlaps one, or an
incident is open) and for a minute after, and once at the start to learn its size: a quiet camera costs its
sub-stream alone. When no main keyframe lies close enough in time (the main stream is down, let go, or still
connecting), a still falls back to the sub-stream picture scaled up to the main size: geometry stays
consistent and the still's own timestamp stays true, only its detail is lower.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import av.error
import cv2
import numpy as np
import numpy.typing as npt

from pipeline.config import Camera
from pipeline.protocols import Frame, SourceStatus
from pipeline.redact import Redactor
from pipeline.sources import Keyframe, Source, open_source, to_bgr

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

# Keyframes kept (one a second at GOP 25): a bin station's "before" still looks back a few frames.
KEEP_KEYFRAMES = 5
# A main keyframe this far from the detection frame still shows a stay as it was; farther, the sub-stream
# picture is the truer one. (Each stream's clock is anchored at its own connection, so they differ by the
# network delay; keyframes come once per GOP.)
MAX_SKEW_S = 2.0
# The main stream's picture size is checked this often (a camera reconfigured to another resolution).
SIZE_CHECK_S = 60.0
# The main stream stays connected this long after stills were last possible (an object in a zone, an incident
# open): a car that stops again soon finds it ready, a quiet camera does not demux 4 Mb/s for nothing.
LINGER_S = 60.0

Opener = Callable[[Callable[[Keyframe], None]], Source]


class EvidenceStream:
    """Keeps a camera's latest main-stream keyframes undecoded; decodes one when a still needs it.

    With an ``opener`` (a ``Source`` for a keyframe sink), the main stream is connected only while the worker
    says stills may be needed (``want``) and for ``linger_s`` after. ``put`` runs on the source's reader
    thread; ``picture``, ``size`` and ``status`` on any other; ``want`` on the worker's."""

    def __init__(
        self,
        camera_id: str,
        keep: int = KEEP_KEYFRAMES,
        opener: Opener | None = None,
        linger_s: float = LINGER_S,
    ) -> None:
        self.camera_id = camera_id
        self.source: Source | None = None
        self._opener = opener
        self.linger_s = linger_s
        self._wanted_ts: float | None = None  # stream time stills were last possible
        self._retired: list[Source] = []  # let go, their readers ending; closed (joined) later
        self.connects = 0
        self._lock = threading.Lock()
        self._keyframes: deque[Keyframe] = deque(maxlen=keep)
        self._size: tuple[int, int] | None = None  # (width, height) of the main stream
        self._size_ts: float | None = None  # ts of the keyframe it was learnt from
        self._decoded: tuple[float, Image] | None = None  # the last decoded keyframe, reused by later stills
        self.decodes = 0  # keyframes decoded (size checks and stills)

    # ---- life cycle -------------------------------------------------------------------------------------

    def start(self) -> EvidenceStream:
        if self.source is None and self._opener is not None:
            self._connect()
        return self

    def close(self) -> None:
        for src in [*self._retired, self.source]:
            if src is not None:
                src.close()
        self._retired.clear()

    def want(self, wanted: bool, ts: float) -> None:
        """Told per processed frame (stream time ``ts``) whether stills may be needed soon. Until the main
        stream's size is known it stays connected regardless (detections need it)."""
        if self._opener is None:
            return
        if wanted or self.size() is None:
            self._wanted_ts = ts
        if self.source is None:
            if wanted:
                self._connect()
        elif self._wanted_ts is None or ts - self._wanted_ts > self.linger_s:
            self._let_go()  # (the first connection, only for the size, goes as soon as the size is known)

    def _connect(self) -> None:
        assert self._opener is not None
        self.source = self._opener(self.put).start()
        self.connects += 1
        log.debug("camera %s: main stream connecting (stills may be needed)", self.camera_id)

    def _let_go(self) -> None:
        src, self.source = self.source, None
        assert src is not None
        src.stop()  # its reader ends at its next packet; joined by a later close()
        self._retired.append(src)
        while len(self._retired) > 2:
            self._retired.pop(0).close()
        with self._lock:  # old pictures are no use to a later still, and 1080p ones are large
            self._keyframes.clear()
            self._decoded = None
        log.debug(
            "camera %s: main stream let go (no stills needed for %.0f s)", self.camera_id, self.linger_s
        )

    def status(self) -> SourceStatus | None:
        return self.source.status() if self.source is not None else None

    # ---- the reader's side ------------------------------------------------------------------------------

    def put(self, kf: Keyframe) -> None:
        with self._lock:
            self._keyframes.append(kf)
            if self._decoded is not None and self._decoded[0] < self._keyframes[0].ts:
                self._decoded = None  # its keyframe is gone: free the picture (6 MB at 1080p)
            due = self._size_ts is None or kf.ts - self._size_ts >= SIZE_CHECK_S or kf.ts < self._size_ts
        if due:
            image = self._decode(kf)
            if image is not None:
                h, w = image.shape[:2]
                with self._lock:
                    if self._size not in (None, (w, h)):
                        log.warning("camera %s: main stream is now %d×%d", self.camera_id, w, h)
                    self._size, self._size_ts = (w, h), kf.ts

    # ---- the builder's side -----------------------------------------------------------------------------

    def size(self) -> tuple[int, int] | None:
        """The main stream's (width, height), once a keyframe of it was decoded."""
        with self._lock:
            return self._size

    def picture(self, frame: Frame) -> tuple[Image, float]:
        """The picture for a still of ``frame`` (a sub-stream frame) and the time it shows: the main stream's
        keyframe nearest to it, else the frame itself scaled to the main stream's size."""
        with self._lock:
            near = min(self._keyframes, key=lambda k: abs(k.ts - frame.ts), default=None)
            cached = self._decoded
            size = self._size
        if near is not None and abs(near.ts - frame.ts) <= MAX_SKEW_S:
            if cached is not None and cached[0] == near.ts:
                return cached[1], near.ts
            image = self._decode(near)
            if image is not None:
                with self._lock:
                    self._decoded = (near.ts, image)
                return image, near.ts
        if size is None or frame.image.shape[1::-1] == size:
            return frame.image, frame.ts
        scaled = np.asarray(cv2.resize(frame.image, size, interpolation=cv2.INTER_LINEAR), np.uint8)
        return scaled, frame.ts

    def _decode(self, kf: Keyframe) -> Image | None:
        """One keyframe with a fresh decoder (an IDR picture needs nothing before it)."""
        try:
            cc: Any = av.CodecContext.create(kf.codec, "r")
            if kf.extradata:
                cc.extradata = kf.extradata
            if kf.width and kf.height:
                cc.width, cc.height = kf.width, kf.height
            cc.thread_count = 1
            frames = list(cc.decode(av.Packet(kf.data))) + list(cc.decode(None))
        except (av.error.FFmpegError, ValueError) as err:
            log.debug("camera %s: main-stream keyframe did not decode: %s", self.camera_id, err)
            return None
        self.decodes += 1
        if not frames:
            return None
        image: Image = to_bgr(frames[-1])
        return image


EvidenceFactory = Callable[[Camera, threading.Event], EvidenceStream]


def open_evidence_stream(
    camera: Camera, stop: threading.Event, redactor: Redactor | None = None
) -> EvidenceStream:
    """The evidence stream of a camera with a ``detect_source``: its main ``source``, demuxed only, connected
    while stills may be needed (``EvidenceStream.want``)."""

    def opener(sink: Callable[[Keyframe], None]) -> Source:
        return open_source(camera, stop, redactor, keyframe_sink=sink)

    return EvidenceStream(camera.id, opener=opener)
