"""Camera sources: RTSP streams and video files, decoded with PyAV, sampled at the camera's ``detect_fps``.

One ``Source`` owns one stream and one reader thread (started by the first ``frames()`` call). The thread
connects, demuxes, decodes only what the sampler needs, and hands frames over through a small queue; it
reconnects by itself and never raises on stream faults. States (``SourceStatus.state``)::

    connecting ──open ok, data──► running ──no data for stall_timeout_s──► stalled
        ▲                           │  ▲                                     │
        │                           │  └──────────── data again ─────────────┤
        │            EOF / error    ▼                                        ▼ read times out
        └──── wait (capped, jittered exponential) ◄──────── backoff ◄────────┘
    stopped: close(), the shared stop event, or the end of a non-looping file.

Sampling: with ``detect_fps`` at or below the keyframe rate, only keyframes are decoded (non-key packets are
not even handed to the decoder, and ``skip_frame = "NONKEY"`` guards the rest), every k-th keyframe as needed.
Keyframes that come less often than ``detect_fps`` asks but at least at ``min_detect_fps`` (by default
half of detect_fps: a camera's 2 s I-frame interval at 1 det/s) are each decoded and detected alone: the rate
drops to the keyframe rate, the readers' CPU to a quarter (README, "Long keyframe intervals"). Only below
``min_detect_fps`` is every frame decoded (and only the sampled ones converted to BGR), as far into each GOP
as its last due frame: the rest of the GOP is left undecoded where nothing due refers to it (no B-frames; a
2 s GOP at 1 det/s decodes half its frames). The status says which (``decode``, ``keyframe_interval_s``) and
the log warns. The keyframe interval is learnt from the packets (demuxing is ~0.03 ms a frame). Until it is
known, a connection decodes its keyframes and holds the packets between them undecoded: the next keyframe
drops them; a frame between keyframes falling due when the next keyframe is already too late for keyframe-only
decoding has them decoded, in order, and everything after (``_MAX_HELD``; the frame that fell due while the
keyframe could still come is passed over). Decoding every
connection's first GOP in full was 25 frames per 1080p25 camera: a 2-core box restarted with 80 cameras
spent its first ~10 s on that, and again at every reconnect storm.

Keyframes alone, due times lie on a grid of the camera's own (``phase_s + k / detect_fps``, epoch seconds;
the phase fixed by the camera's id): below the keyframe rate a camera takes every k-th keyframe, and which
ones must not depend on when it connected, or cameras started together all take the same ones. They did: 38
cameras at 0.5 det/s on a 1 s GOP handed the detector 26 and 12 frames in alternate seconds; at 0.2 det/s
56 cameras' frames, bunched into a few seconds of every five, waited 0.72-0.81 s for a result (p50; p95
2.3-2.7 s), and 0.25-0.33 s (p95 0.8-1.7 s) on the grid (benchmarks/LOG.md). Decoding every frame keeps to
the frames it took instead (due frames on keyframes leave the most of each GOP undecoded; the keyframes'
own phases spread the load).

Between keyframes a keyframe-only live reader that has caught up with the stream pauses (``read_pause_s``,
ending ``_PAUSE_MARGIN_S`` before the next keyframe is due) and then reads what the socket gathered in one
burst: FFmpeg reads RTSP one RTP packet at a time, and waking the thread for each of them cost more than
reading them (80 cameras at 0.5 det/s: 1.51 → 1.46 cores, and the RTSP server 0.42 → 0.37).

Falling behind: a keyframe-only live reader that is more than a keyframe interval (plus
``_STALE_MARGIN_S``) behind the stream when a due keyframe comes out of the socket does not decode it (the
next one has already arrived) and counts it in ``dropped``; the schedule does not advance, so the next fresh
keyframe is taken. Demuxing alone is cheap, so an overloaded box sheds stale keyframes and catches up,
instead of decoding every due one seconds late from the socket's backlog and never catching up (measured:
36 cameras on a 2-core box once settled at 11 s behind, every result too late).

Evidence streams (``keyframe_sink``): a camera that detects on its sub-stream still takes evidence from
its main stream, which is then only demuxed: every keyframe goes to the sink as a packet, decoded only
when a still is taken (pipeline/evidence_stream.py).

Timestamps: ``Frame.ts`` = anchor + (pts − first pts): the stream's own clock, never going backwards. A file's
anchor is the wall time at its first packet (a looping file carries on from its last ``ts``). A live stream's
is the smallest (read time − stream time) over the last ``clock_window_s`` of stream time
(pipeline/stream_clock.py): no frame is stamped later than its packet was read (the packets buffered while
probing come out late), a backlog shows as lateness, and a camera clock slower than ours does not pile up
into lateness for ever (anchored once per connection, a 0.1 % slow clock looked 1.3 s behind after 22 min,
and from then on every keyframe was shed as stale).

Hangs: FFmpeg's ``timeout`` option (socket I/O, ``read_s = stall_timeout_s / 2``) ends a read on a silent
socket, and PyAV's interrupt timeout bounds the whole open (``av.open(timeout=(open_s, None))``); a watchdog
(run by ``status()`` and by the ``frames()`` loop) reports ``stalled`` once no packet came for
``stall_timeout_s``. Measured against a SIGSTOP'd GStreamer server: stalled at stall_timeout_s, backoff soon
after. A socket that is not silent but carries no video (RTCP reports from a camera whose encoder hung) never
times out in FFmpeg, so the watchdog then shuts the connection's socket down (pipeline/stream_socket.py: the
reader learns it at open) and the reader reconnects; close() does the same. PyAV gets no read timeout on
purpose: its interrupt callback takes the GIL on every FFmpeg I/O call (several per RTP packet). Beside a
thread busy in Python each of those waits a switch interval, and with many cameras in one process the GIL
traffic costs CPU: demuxing alone, 108 cameras cost 3.7 → 2.9 thousandths of a core each, and 54 whose packets
arrive together 17.6 → 2.7 (``pingan bench demux``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error

from pipeline.config import Camera, FileSource, RtspSource
from pipeline.packet_gate import PacketGate
from pipeline.protocols import Frame, SourceState, SourceStatus
from pipeline.redact import Redactor, mask_url
from pipeline.stream_clock import StreamClock
from pipeline.stream_socket import OPENER, StreamSocket, shut

log = logging.getLogger(__name__)

_END = object()
_BACKOFF_BASE_S = 0.5
_FPS_WINDOW_S = 10.0
_NO_KEYFRAME_S = 10.0  # stream seconds without a flagged keyframe before we let the decoder decide
_MAX_BAD_PACKETS = 50  # decode errors in a row before the connection is given up
_KEY_LEEWAY = 0.9  # keyframes at 0.9 × the rate keyframe-only decoding needs still do (encoders jitter)
_DECODE_WARN_EVERY_S = 600.0  # a camera switching to every-frame decoding again warns no sooner than this
_MAX_HELD = 250  # packets held undecoded while the keyframe interval is learnt (10 s at 25 fps)
_SELF_DESCRIBING_CODECS = frozenset({"h264", "hevc"})  # parameter sets in band or in extradata
_PAUSE_MARGIN_S = 0.04  # a read pause ends this long before the next keyframe's capture time
_PAUSE_MIN_S = 0.02  # shorter pauses save nothing
_STALE_MARGIN_S = 0.3  # behind by a keyframe interval and this much: the next keyframe is surely in


class _Fault(Exception):
    """A stream fault of one connection: where it happened, the cause, and whether frames had come."""

    def __init__(self, phase: str, cause: BaseException, got_frames: bool) -> None:
        super().__init__(phase)
        self.phase, self.cause, self.got_frames = phase, cause, got_frames


@dataclass(frozen=True, slots=True)
class Keyframe:
    """One keyframe as it came off the wire, undecoded, with what a fresh decoder needs to decode it alone."""

    data: bytes
    ts: float  # as Frame.ts
    codec: str
    extradata: bytes | None
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class _Carry:
    """What a looping file's next pass continues from: its clock, its sampling schedule, its keyframe rate."""

    wall: float
    mono: float
    next_due: float | None
    key_iv: float | None


def keyframes_suffice(key_iv_s: float, min_detect_fps: float) -> bool:
    """Whether keyframes every ``key_iv_s`` are enough alone, for a camera that may detect as seldom as
    ``min_detect_fps`` (10 % leeway: encoders jitter)."""
    return key_iv_s * min_detect_fps <= 1.0 / _KEY_LEEWAY


def describe_fault(
    err: BaseException, phase: str, is_file: bool, open_timeout_s: float, read_s: float
) -> str:
    """What an operator should read for a failed open or read (``phase``), not FFmpeg's raw words."""
    if isinstance(err, av.error.HTTPUnauthorizedError):
        return "authentication failed (401 Unauthorized): check the user name and password"
    if isinstance(err, av.error.HTTPForbiddenError):
        return "access forbidden (403)"
    if isinstance(err, av.error.HTTPNotFoundError):
        return "stream not found (404): check the path"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, av.error.ExitError | av.error.TimeoutError | TimeoutError):
        if phase == "open":
            return f"open timed out after {open_timeout_s:g} s"
        return f"no data for {read_s:g} s (read timed out)"
    if phase == "open" and isinstance(err, av.error.InvalidDataError) and not is_file:
        return "no valid answer from the server (hung, or not an H.264 RTSP stream)"
    detail = getattr(err, "strerror", None) or str(err)
    return f"{phase} failed: {type(err).__name__}: {detail}"


def open_rtsp(url: str, transport: str, open_timeout_s: float, read_timeout_s: float) -> Any:
    """An RTSP stream opened as every pingan reader opens it: FFmpeg's socket timeout ends a silent read, and
    PyAV's interrupt timeout bounds only the open (no PyAV read timeout: see "Hangs" above); probing is kept
    short so the first frame comes within a GOP."""
    options = {
        "rtsp_transport": transport,
        "timeout": str(int(read_timeout_s * 1e6)),
        "analyzeduration": "0",
        "probesize": "32768",
        "fpsprobesize": "0",
    }
    if transport == "udp":
        options["buffer_size"] = str(4 << 20)  # a 1080p keyframe arrives as a burst of ~170 datagrams
    return av.open(url, options=options, timeout=(open_timeout_s, None))


def to_bgr(frame: Any) -> Any:
    """A decoded picture as an H×W×3 BGR array, converted on the calling thread alone.

    PyAV (≥ 17) gives every decoded frame its own scaling context and by default one swscale thread per
    core: each conversion started and joined a thread pool. A 1080p keyframe cost ~1.65 ms of CPU that way
    against ~1.0 ms on one thread (``python -m benchmarks.bench_decode --skip file,rtsp,faults,gate``), and
    its threads woke on cores the decoders and the detector were using. A reader already has a thread."""
    return frame.to_ndarray(format="bgr24", threads=1)


def _read_pause(now: float, packet_ts: float, next_key_ts: float, frame_iv: float, pause_s: float) -> float:
    """How long a keyframe-only reader may pause after a non-key packet captured at ``packet_ts``: only when
    it has caught up with the stream (read within a frame interval of capture), at most ``pause_s``, and
    ending ``_PAUSE_MARGIN_S`` before the next keyframe; 0 when not worth it. All times wall-clock seconds."""
    if now - packet_ts >= frame_iv:
        return 0.0  # behind the stream: read on
    pause = min(pause_s, next_key_ts - _PAUSE_MARGIN_S - now)
    return pause if pause > _PAUSE_MIN_S else 0.0


def _stale(now: float, ts: float, key_iv: float) -> bool:
    """True when a keyframe captured at ``ts`` is read so late that the next one (``key_iv`` later) has
    already arrived: decoding it would only deepen the backlog. Wall-clock seconds."""
    return now - ts > key_iv + _STALE_MARGIN_S


def camera_phase(camera_id: str) -> float:
    """Where in each sampling period a camera's due frames fall, as a fraction of the period: fixed by its id
    (CRC-32), so the cameras of one box spread over the period instead of falling due together."""
    return zlib.crc32(camera_id.encode()) / 2**32


def _advance(next_due: float | None, ts: float, period: float, slack: float) -> float:
    """The next sampling time after taking a frame at ``ts``; no catching up after a gap."""
    if next_due is None or next_due + period <= ts - slack:
        return ts + period
    return next_due + period


def _next_on_grid(ts: float, period: float, slack: float, phase_s: float) -> float:
    """Keyframes alone: the next sampling time after taking one at ``ts``, the first point of the camera's
    grid (``phase_s + k × period``, epoch seconds) more than ``period - slack`` after it, so the next keyframe
    taken is at least a period later. A keyframe taken off the grid (a connection's first, one taken late)
    puts the next back on it, a gap of less than two periods; no catching up. Decoding every frame keeps
    ``_advance`` (module docstring: why)."""
    return phase_s + (math.floor((ts + period - slack - phase_s) / period) + 1) * period


def make_decoder(stream: Any, full: bool, fast_keyframes: bool = True) -> Any:
    """The decoder for the next stretch of ``stream`` (every frame, or keyframes only).

    H.264/HEVC (what cameras send) get a fresh decoder at each switch (always at a keyframe, so nothing
    is lost, and the replaced one is freed with its frame pool). Keyframe-only decoding then skips the
    in-loop deblocking filter (``fast_keyframes``): nothing is predicted from these frames, so the saving
    (~12 % of a 1080p keyframe's decode) costs no drift, only ~44 dB PSNR against the filtered picture
    (measured on the benchmark clip), invisible in a still. Full decoding keeps the filter: every P-frame
    would inherit unfiltered references. Other codecs (MPEG-4 part 2 in AVI files, MJPEG, …) may need what
    only the container knows (msmpeg4 takes its picture size from the AVI header): they keep the demuxer's
    own. ``pingan``'s readers and ``benchmarks.bench_decode`` both decode with it."""
    src = stream.codec_context
    if src.name not in _SELF_DESCRIBING_CODECS:
        if not src.is_open:
            src.thread_count = 1
        src.skip_frame = "DEFAULT" if full else "NONKEY"
        return src
    cc = av.CodecContext.create(src.name, "r")
    cc.extradata = src.extradata
    if src.width and src.height:
        cc.width, cc.height = src.width, src.height
    cc.thread_count = 1
    if not full and fast_keyframes:
        cc.options = {"skip_loop_filter": "all", "flags2": "+fast"}
    cc.skip_frame = "DEFAULT" if full else "NONKEY"
    return cc


def drain(cc: Any) -> list[Any]:
    """The pictures a decoder fed keyframes alone still holds, and a clean start for the next keyframe.

    B-frames: the decoder holds pictures back to reorder them, and fed keyframes alone it gave each one out
    two keyframes later (2 s at 1 det/s; a file's last two never). Nothing refers back across keyframe-only
    decoding, so a keyframe that gives nothing is drained at once."""
    frames: list[Any] = cc.decode(None)
    cc.flush_buffers()
    return frames


class Source:
    """A ``FrameSource`` for one RTSP URL or video file. See the module docstring.

    ``frames()`` may be iterated by one consumer; ``status()`` and ``close()`` may be called from any thread.
    ``Frame.index`` counts video packets seen since the source was made (across reconnects).
    ``SourceStatus.fps`` is the rate of frames delivered over the last 10 s; ``frames`` counts delivered
    frames; ``dropped`` counts sampled frames discarded because the consumer lagged (live sources keep the
    newest two) and due keyframes shed undecoded because the reader itself fell behind the stream;
    ``reconnects`` counts connection attempts after the first.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        camera_id: str = "camera",
        is_file: bool | None = None,
        detect_fps: float = 1.0,
        min_detect_fps: float | None = None,
        stall_timeout_s: float = 10.0,
        open_timeout_s: float = 5.0,
        backoff_max_s: float = 30.0,
        transport: str = "tcp",
        loop: bool = True,
        realtime: bool = True,
        stop: threading.Event | None = None,
        redactor: Redactor | None = None,
        queue_size: int = 2,
        fast_keyframes: bool = True,
        full_decode: bool = False,
        packet_gate: PacketGate | None = None,
        keyframe_sink: Callable[[Keyframe], None] | None = None,
        read_pause_s: float = 0.2,
        clock_window_s: float = 30.0,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        target = str(target)
        self.camera_id = camera_id
        self.is_file = is_file if is_file is not None else "://" not in target
        self._target = target
        self.detect_fps = float(detect_fps)
        self.period_s = 1.0 / self.detect_fps
        self.phase_s = camera_phase(camera_id) * self.period_s  # epoch seconds mod period_s
        # Keyframes alone are decoded while they come often enough (keyframes_suffice): at detect_fps, or
        # down to min_detect_fps (every keyframe is then due).
        self.min_detect_fps = min(float(min_detect_fps or detect_fps), self.detect_fps)
        self.stall_timeout_s = float(stall_timeout_s)
        self.open_timeout_s = float(open_timeout_s)
        self.read_timeout_s = max(0.5, self.stall_timeout_s / 2)
        self.backoff_max_s = float(backoff_max_s)
        self.transport = transport
        self.loop = loop
        self.realtime = realtime if self.is_file else True
        self._stop = stop or threading.Event()
        self._closed = threading.Event()
        self._redactor = redactor or Redactor()
        self.display = mask_url(target)

        self._lock = threading.Lock()
        self._state = SourceState.CONNECTING
        self._since = time.monotonic()
        self._reason: str | None = None
        self._last_frame_ts: float | None = None
        self._frames = 0
        self._dropped = 0
        self._reconnects = 0
        self._key_iv: float | None = None  # the keyframe interval last learnt (stream seconds)
        self._mode: str | None = None  # keyframes | every_frame, once the interval is known
        self._warned_at: float | None = None  # monotonic time of the last "every frame decoded" warning
        self._emitted: deque[float] = deque(maxlen=64)
        self._last_data = self._since  # monotonic time of the last packet (or of the open)
        # this connection's TCP socket, to end a read stuck on a stream that sends no video
        # (pipeline/stream_socket.py); set while FFmpeg owns it, under _lock
        self._sock: StreamSocket | None = None
        self._shut_reason: str | None = None
        # its own generator for backoff jitter: a reader retrying in the background never moves the
        # process's shared one (a property test in the same process saw it move under its strategies)
        self._rng = random.Random()

        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        self._index = 0
        self._carry: _Carry | None = None  # a looping file's next pass continues this
        self._session_frames = 0
        self.fast_keyframes = fast_keyframes
        # Decode every frame even where keyframes alone would do (the sampled ones still are all that is
        # converted): what keyframe-only decoding saves, measured (the benchmarks' full_decode lever).
        self.full_decode = full_decode
        self.packet_gate = packet_gate
        # Asked before a due keyframe is decoded (keyframe-only, live), with the keyframe's age in seconds:
        # False when the detector would take it too late or would only replace this camera's previous frame
        # with it, unseen (InferenceScheduler.admit). The keyframe is then left undecoded and counted as
        # dropped, and the next one is due instead.
        self.admit: Callable[[float], bool] | None = None
        # An evidence stream (pipeline/evidence_stream.py): nothing is decoded; every keyframe goes to the
        # sink as a packet, and frames() yields nothing.
        self.keyframe_sink = keyframe_sink
        # Keyframe-only reads pause up to this long between bursts when caught up (see _pump); 0: never.
        self.read_pause_s = float(read_pause_s)
        # A live stream's anchor is the minimum over this much stream time (pipeline/stream_clock.py), and
        # wall_time is the box's clock it maps capture times onto (a test runs it fast: a slow camera clock).
        self.clock_window_s = float(clock_window_s)
        self._wall = wall_time

    # ---- FrameSource ---------------------------------------------------------------------------------------

    def frames(self) -> Iterator[Frame]:
        """Sampled frames until ``close()``, the shared stop event, or the end of a non-looping file."""
        self._start()
        while True:
            try:
                item = self._q.get(timeout=0.25)
            except queue.Empty:
                self._watchdog(time.monotonic())
                thread = self._thread
                if thread is None or not thread.is_alive():  # the reader is gone and its end was taken
                    return
                continue
            if item is _END:
                return
            yield item

    def status(self) -> SourceStatus:
        now = time.monotonic()
        self._watchdog(now)
        with self._lock:
            recent = [t for t in self._emitted if now - t <= _FPS_WINDOW_S]
            fps = 0.0
            if len(recent) >= 2 and self._state in (SourceState.RUNNING, SourceState.STALLED):
                fps = (len(recent) - 1) / max(now - recent[0], 1e-3)
            return SourceStatus(
                state=self._state,
                since=self._since,
                reason=self._reason,
                last_frame_ts=self._last_frame_ts,
                fps=round(fps, 3),
                frames=self._frames,
                dropped=self._dropped,
                reconnects=self._reconnects,
                keyframe_interval_s=None if self._key_iv is None else round(self._key_iv, 3),
                decode=self._mode,
            )

    def close(self) -> None:
        """Stop the reader thread (bounded by one read timeout) and release the stream. Idempotent."""
        self._closed.set()
        self._unstick("closing")  # a read stuck on a stream without video would not see the flag
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.open_timeout_s + 2 * self.read_timeout_s + 2.0)
            if thread.is_alive():
                log.warning("camera %s: reader thread did not stop in time", self.camera_id)
        self._drain()
        self._set_state(SourceState.STOPPED, self._reason if self._state is SourceState.STOPPED else None)

    def stop(self) -> None:
        """Ask the reader thread to end (at its next packet or wait); unlike close(), do not wait for it."""
        self._closed.set()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals: life cycle -----------------------------------------------------------------------------

    def start(self) -> Source:
        """Start the reader thread now (``frames()`` does it on first use), e.g. to report health early."""
        self._start()
        return self

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"source-{self.camera_id}", daemon=True)
        self._thread.start()

    def _stopping(self) -> bool:
        return self._closed.is_set() or self._stop.is_set()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when stopping. close() wakes it at once, the shared stop in 0.2 s."""
        end = time.monotonic() + seconds
        while not self._stopping():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._closed.wait(min(left, 0.2))
        return True

    def _set_state(self, state: SourceState, reason: str | None = None) -> None:
        reason = self._redactor.redact(mask_url(reason)) if reason else None
        with self._lock:
            if state is self._state and reason == self._reason:
                return
            changed = state is not self._state
            self._state, self._reason = state, reason
            if changed:
                self._since = time.monotonic()
        if changed:
            offline = state in (SourceState.STALLED, SourceState.BACKOFF)
            level = logging.WARNING if offline else logging.INFO
            log.log(level, "camera %s: %s%s", self.camera_id, state.value, f" ({reason})" if reason else "")

    def _watchdog(self, now: float) -> None:
        # files do not hang like sockets, and a paced or back-pressured file reader waits on purpose
        if self.is_file:
            return
        quiet = now - self._last_data
        if quiet <= self.stall_timeout_s:
            return
        if self._state is SourceState.RUNNING:
            self._set_state(SourceState.STALLED, f"no data for {quiet:.1f} s")
        # FFmpeg's socket timeout has not ended the read, so the socket is not silent: RTCP reports and no
        # video (an encoder that hung, a server media that never started). End the read; it reconnects.
        if self._stopping():
            self._unstick("closing")
        else:
            self._unstick(f"no video for {quiet:.0f} s while the connection stayed up; reconnecting")

    def _unstick(self, reason: str) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None and shut(sock):
                self._shut_reason = reason
                log.debug("camera %s: shut its stream socket down (%s)", self.camera_id, reason)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()

    def _run(self) -> None:
        failures = 0
        attempt = 0
        looping = False  # a file starting its next pass: not a reconnect
        try:
            while not self._stopping():
                if not looping:
                    if attempt:
                        with self._lock:
                            self._reconnects += 1
                    self._set_state(SourceState.CONNECTING)
                attempt += 1
                looping = False
                eof = False
                index0 = self._index
                try:
                    got_frames = self._session()
                    eof = True
                    reason = (
                        "end of file" if self.is_file else "stream ended (the server closed the connection)"
                    )
                except _Fault as fault:  # never raise on stream faults
                    reason = self._describe(fault.cause, fault.phase)
                    got_frames = fault.got_frames
                with self._lock:
                    shut_reason, self._shut_reason = self._shut_reason, None
                if shut_reason is not None:  # we ended it (see _watchdog): say why, not what FFmpeg saw
                    reason, eof = shut_reason, False
                if self._stopping():
                    break
                if self.is_file and eof:
                    if not self.loop:
                        self._set_state(SourceState.STOPPED, "end of file")
                        break
                    if self._index > index0:  # the pass had packets (maybe none due for sampling)
                        failures, looping = 0, True
                        continue  # loop the file at once
                if got_frames:
                    failures = 0
                delay = min(self.backoff_max_s, _BACKOFF_BASE_S * 2**failures) * self._rng.uniform(0.5, 1.0)
                failures = min(failures + 1, 30)
                self._set_state(SourceState.BACKOFF, f"{reason}; retrying in {delay:.1f} s")
                if self._wait(delay):
                    break
        except Exception as err:  # a bug, not a stream fault: report, don't kill the worker
            trace = self._redactor.redact(traceback.format_exc())
            log.error("camera %s: reader thread failed\n%s", self.camera_id, trace)
            self._set_state(SourceState.STOPPED, f"internal error: {type(err).__name__}: {err}")
        finally:
            with self._lock:
                final = self._reason if self._state is SourceState.STOPPED else None
            self._set_state(SourceState.STOPPED, final)
            self._put_end()

    def _put_end(self) -> None:
        while True:
            try:
                self._q.put(_END, timeout=0.2)
                return
            except queue.Full:
                if self._stopping():  # nobody reads any more: make room
                    self._drain()

    def _describe(self, err: BaseException, phase: str) -> str:
        return describe_fault(err, phase, self.is_file, self.open_timeout_s, self.stall_timeout_s)

    # ---- internals: one connection -------------------------------------------------------------------------

    def _open(self) -> Any:
        if self.is_file:
            return av.open(self._target)
        container, sock = OPENER.open(
            self._target,
            lambda: open_rtsp(self._target, self.transport, self.open_timeout_s, self.read_timeout_s),
        )
        with self._lock:
            self._sock = sock
            self._last_data = time.monotonic()  # the first packet is due within a stall timeout of the open
        return container

    def _session(self) -> bool:
        """One connection: demux, decode, sample, deliver. Returns at EOF (True if it delivered frames)."""
        self._session_frames = 0
        try:
            container = self._open()
        except Exception as err:
            raise _Fault("open", err, False) from err
        with container:
            try:
                if not container.streams.video:
                    raise av.error.InvalidDataError(0, "no video stream")
                return self._pump(container)
            except Exception as err:
                raise _Fault("read", err, self._session_frames > 0) from err
            finally:
                with self._lock:  # before FFmpeg closes the descriptor: never shut a reused number
                    self._sock = None

    def _pump(self, container: Any) -> bool:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        rate = stream.guessed_rate or stream.average_rate
        frame_iv = 1.0 / float(rate) if rate else 0.04
        period = self.period_s
        phase_s = self.phase_s

        carry, self._carry = self._carry, None
        # Until the keyframe interval is known, keyframes are decoded as in full mode and the packets between
        # them are held (module docstring): guessing keyframe-only on a long-GOP camera (or a file like
        # vtest.avi, 25 s between keyframes) would starve the rules until the next keyframe.
        full = True
        held: list[Any] | None = (
            [] if carry is None and not self.full_decode and self.keyframe_sink is None else None
        )
        synced = False  # seen the first keyframe of this connection
        key_iv: float | None = carry.key_iv if carry else None
        last_key_t: float | None = None
        first_t: float | None = None
        last_t = 0.0
        next_due: float | None = carry.next_due if carry else None  # in Frame.ts (epoch) seconds
        # the connection's clock: ts = wall0 + (t - t0); realtime files pace to mono0 + (t - t0)
        wall0 = mono0 = t0 = 0.0
        last_ts = self._last_frame_ts
        stopping = self._stopping
        qput = self._deliver
        now = time.monotonic
        wall = self._wall
        clock = StreamClock(self.clock_window_s)
        # Decoding every frame, the rest of a GOP after its last due frame is left undecoded (``tail``): only
        # where decode order is display order (``reordered``: a packet presented before one demuxed earlier,
        # B-frames; never so far on this connection) and the whole of a GOP was seen (``key_iv`` known).
        tail = reordered = False
        top_pts: int | None = None

        bad = 0  # decode errors in a row
        live = not self.is_file
        pause_s = self.read_pause_s
        gate = self.packet_gate
        sink = self.keyframe_sink
        admit = self.admit if live and sink is None else None
        src = stream.codec_context
        gop_bytes = gop_packets = 0  # this GOP's non-key packets
        motion = 0.0  # the largest GOP mean (bytes per P-frame) since the last decoded keyframe
        last_image: Any = None  # this connection's last decoded picture, for carried frames
        if key_iv is not None:  # a looping file's next pass already knows
            full = not keyframes_suffice(key_iv, self.min_detect_fps) or self.full_decode
        if sink is not None:
            full = False
        # our own decoder, never the stream's: a replaced one is then freed with its frame pool
        cc = self._decoder(stream, full)
        for pkt in container.demux(stream):
            if stopping():
                break
            pts = pkt.pts if pkt.pts is not None else pkt.dts
            if pts is None:  # the demuxer's flush packet
                continue
            self._last_data = now()
            if self._state is not SourceState.RUNNING:
                self._set_state(SourceState.RUNNING)
            self._index += 1
            last_t = t = pts * tb
            if first_t is None:
                first_t = t0 = t
                if carry is not None:  # a looping file carries on where its last pass ended
                    wall0, mono0 = carry.wall, carry.mono
                else:
                    wall0, mono0 = wall(), now()
                    if last_ts is not None and wall0 <= last_ts:
                        wall0 = last_ts + frame_iv
                    if live:
                        wall0 = clock.anchor(0.0, wall0)
            elif live:
                # Probing buffers the first packets (32 kB: ~0.5 s of a 512 kb/s sub-stream), so the first
                # one out arrived well before it was read: no packet may look captured after it was read. And
                # the camera's clock drifts from ours: the anchor is a minimum over a window, not for ever.
                wall0 = clock.anchor(t - t0, wall())
            key = pkt.is_keyframe
            if top_pts is not None and pts < top_pts:
                reordered = True
            top_pts = pts if top_pts is None else max(top_pts, pts)
            if key:
                tail = False
            elif tail:
                gop_bytes += pkt.size  # the packet gate's GOP sizes stay whole
                gop_packets += 1
                continue  # nothing due before the next keyframe: nothing after it refers to this
            if key and gop_packets:
                mean = gop_bytes / gop_packets
                motion = max(motion, mean)
                if gate is not None:
                    gate.gop(mean)
                gop_bytes = gop_packets = 0
            elif not key:
                gop_bytes += pkt.size
                gop_packets += 1
            if key:
                if last_key_t is not None and t > last_key_t:
                    iv = t - last_key_t
                    key_iv = iv if key_iv is None else 0.5 * key_iv + 0.5 * iv
                    want_full = (
                        not keyframes_suffice(key_iv, self.min_detect_fps) or self.full_decode
                    ) and sink is None
                    held = None  # never decoded: the frames they carried were not due
                    if want_full is not full:
                        full = want_full
                        cc = self._decoder(stream, full)  # at a keyframe: a fresh decoder loses nothing
                        log.debug("camera %s: %s decode", self.camera_id, "full" if full else "keyframe-only")
                    self._decode_mode(key_iv, full)
                last_key_t = t
                synced = True
                if held is not None:  # decoded below, and again if the GOP proves long: draining forgot it
                    held = [pkt]
            elif not synced:
                if t - first_t < _NO_KEYFRAME_S or sink is not None:
                    continue
                synced = full = True  # the demuxer does not flag keyframes: let the decoder sort it out
                cc = self._decoder(stream, True)
            if held is not None and not key and sink is None:
                # held until a frame is due and the next keyframe is late for keyframe-only decoding
                early = last_key_t is not None and keyframes_suffice(
                    t - last_key_t + 0.5 * frame_iv, self.min_detect_fps
                )
                if len(held) < _MAX_HELD and (
                    early or next_due is None or wall0 + (t - t0) < next_due - 0.5 * frame_iv
                ):
                    held.append(pkt)
                    continue
                # a frame between keyframes is due before the next keyframe came: decode everything from here
                for p in held:  # references of what is due; none of their own pictures was due
                    with contextlib.suppress(av.error.FFmpegError):
                        cc.decode(p)
                held = None
            if not full:
                if not key:
                    if live and pause_s > 0 and key_iv is not None and last_key_t is not None:
                        # nothing to decode before the next keyframe: let the socket gather packets
                        pause = _read_pause(
                            wall(),
                            wall0 + (t - t0),
                            wall0 + (last_key_t + key_iv - t0),
                            frame_iv,
                            pause_s,
                        )
                        if pause and self._wait(pause):
                            break
                    continue
                tsk = wall0 + (t - t0)
                slack = 0.5 * (key_iv or frame_iv)
                if sink is None and next_due is not None and tsk < next_due - slack:
                    continue  # a keyframe we do not need: not even decoded
                if live and sink is None and key_iv is not None and _stale(wall(), tsk, key_iv):
                    with self._lock:
                        self._dropped += 1  # shed, not decoded: the next one is fresher and already here
                    continue
                if admit is not None and not admit(wall() - tsk):
                    with self._lock:
                        self._dropped += 1  # not decoded: the detector is behind and has this camera's last
                    # The next keyframe is due, and the schedule restarts from the one taken: catching up
                    # (the one after it due a period after this one) would queue two of this camera's frames
                    # close together while the detector is behind, the second replacing the first.
                    next_due = None
                    continue
                next_due = _next_on_grid(tsk, period, slack, phase_s)
            if self.is_file and self.realtime:
                delay = mono0 + (t - t0) - now()
                if delay > 0 and self._wait(delay):
                    break
                self._last_data = now()
            if sink is not None:
                sink(Keyframe(bytes(pkt), tsk, src.name, src.extradata, src.width, src.height))
                self._count(tsk)
                self._session_frames += 1
                continue
            if not full and gate is not None and last_image is not None and gate.skip(motion, tsk):
                # nothing moved, says the packet gate: time advances on the last picture, undecoded
                ts = tsk if last_ts is None or tsk > last_ts else last_ts + frame_iv
                last_ts = ts
                qput(Frame(image=last_image, ts=ts, index=self._index, keyframe=True, carried=True))
                self._session_frames += 1
                continue
            try:
                decoded = cc.decode(pkt)
                if (not full or held is not None) and not decoded:  # held: only keyframes reach it
                    decoded = drain(cc)
                bad = 0
            except av.error.FFmpegError as err:  # a damaged packet: skip it, keep the connection
                log.debug("camera %s: decode error: %s", self.camera_id, getattr(err, "strerror", err))
                bad += 1
                if bad >= _MAX_BAD_PACKETS:  # not one decodable packet in a long row: reconnect
                    raise
                continue
            for f in decoded:
                ts = wall0 + ((f.pts * tb if f.pts is not None else t) - t0)
                if full:
                    slack = 0.5 * frame_iv
                    if next_due is not None and ts < next_due - slack:
                        continue  # decoded (it is a reference) but not converted
                    next_due = _advance(next_due, ts, period, slack)
                    if key_iv is not None and last_key_t is not None and not (reordered or self.full_decode):
                        # the next due frame is the next keyframe (or later): skip the GOP's tail. A keyframe
                        # later than its interval says leaves nothing decodable until it comes: that due
                        # frame is taken late, from the keyframe, as keyframe-only decoding would.
                        tail = next_due >= wall0 + (last_key_t + key_iv - t0) - slack
                if last_ts is not None and ts <= last_ts:  # the stream's clock went back: re-anchor
                    wall0 += last_ts + frame_iv - ts
                    ts = last_ts + frame_iv
                last_ts = ts
                image = last_image = to_bgr(f)
                qput(
                    Frame(
                        image=image,
                        ts=ts,
                        index=self._index,
                        keyframe=bool(f.key_frame),
                        motion=None if full else motion,
                    )
                )
                motion = 0.0
                self._session_frames += 1
        if self.is_file and self.loop and first_t is not None:
            end = last_t - t0 + frame_iv  # the next pass starts one frame after this one's last packet
            self._carry = _Carry(wall0 + end, mono0 + end, next_due, key_iv)
        return self._session_frames > 0

    def _decode_mode(self, key_iv: float, full: bool) -> None:
        """Publish the keyframe interval and the decoding it led to (``status()``); warn when a camera's
        keyframes come too seldom for keyframe-only decoding (it then costs ~4× as much): at the change, and
        no more than every ``_DECODE_WARN_EVERY_S`` for a camera whose keyframe interval wanders across
        the bound (a "smart" codec's dynamic GOP)."""
        mode = "every_frame" if full else "keyframes"
        with self._lock:
            self._key_iv = key_iv
            told, self._mode = self._mode, mode
        if told == mode or self.full_decode or not full:  # back to keyframes: the pump's debug line says so
            return
        t = time.monotonic()
        if self._warned_at is not None and t - self._warned_at < _DECODE_WARN_EVERY_S:
            return
        self._warned_at = t
        log.warning(
            "camera %s: a keyframe every %.1f s, too seldom for keyframe-only decoding (min_detect_fps "
            "%.2g): every frame is decoded; an I-frame interval of %.1f s or less on the camera would cost "
            "about a quarter of that",
            self.camera_id,
            key_iv,
            self.min_detect_fps,
            1.0 / self.min_detect_fps,
        )

    def _decoder(self, stream: Any, full: bool) -> Any:
        return make_decoder(stream, full, self.fast_keyframes)

    def _deliver(self, frame: Frame) -> None:
        if self.realtime:  # live: keep the newest frames, count the ones the consumer missed
            while True:
                try:
                    self._q.put_nowait(frame)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._q.get_nowait()
                        with self._lock:
                            self._dropped += 1
        else:  # a replay: wait for the consumer
            while not self._stopping():
                try:
                    self._q.put(frame, timeout=0.2)
                    break
                except queue.Full:
                    self._last_data = time.monotonic()  # waiting for the consumer is not a stall
            else:
                return
        self._count(frame.ts)

    def _count(self, ts: float) -> None:
        t = time.monotonic()
        with self._lock:
            self._frames += 1
            self._last_frame_ts = ts
            self._emitted.append(t)


def open_source(
    camera: Camera,
    stop: threading.Event,
    redactor: Redactor | None = None,
    packet_gate: PacketGate | None = None,
    keyframe_sink: Callable[[Keyframe], None] | None = None,
) -> Source:
    """The ``Source`` that feeds a configured camera's detector: its ``detect_source`` where it has one,
    else its ``source``. With ``keyframe_sink``: the camera's main ``source`` as an evidence stream (demuxed
    only, every keyframe handed to the sink undecoded). The URL's secrets go into ``redactor`` (or a private
    one)."""
    redactor = redactor or Redactor()
    src = camera.source if keyframe_sink is not None else camera.detect_source or camera.source
    common: dict[str, Any] = {
        "camera_id": camera.id if keyframe_sink is None else f"{camera.id} (main stream)",  # logs say which
        "detect_fps": camera.detect_fps,
        "min_detect_fps": camera.keyframe_floor_fps(),
        "stall_timeout_s": camera.stall_timeout_s,
        "open_timeout_s": camera.open_timeout_s,
        "backoff_max_s": camera.backoff_max_s,
        "stop": stop,
        "redactor": redactor,
        "packet_gate": packet_gate,
        "keyframe_sink": keyframe_sink,
    }
    if isinstance(src, RtspSource):
        redactor.add(*src.secrets())
        return Source(src.resolved(), is_file=False, transport=src.transport, **common)
    assert isinstance(src, FileSource)
    return Source(src.path, is_file=True, loop=src.loop, realtime=src.realtime, **common)
