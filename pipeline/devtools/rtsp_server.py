#!/usr/bin/python3
"""A small looping RTSP server for tests and the demo: GStreamer's RTSP server, run by Debian's python3.

    /usr/bin/python3 pipeline/devtools/rtsp_server.py [--host 127.0.0.1] [--port 0] [--user U --password P]
                                                      [--random-phase] NAME=FILE.mp4 [NAME=FILE.mp4 ...]

Serves each MP4 (H.264 or H.265) at ``rtsp://HOST:PORT/NAME`` forever, looping, without re-encoding: the
file's access units are read once (``filesrc ! qtdemux ! h264parse``, parameter sets before every keyframe,
whole access units) and pushed in real time into ``appsrc ! rtph264pay config-interval=1`` (``h265`` for
H.265); timestamps keep increasing across loops
like a live camera. Media are shared (one pipeline per path for all clients). ``--user/--password`` require
HTTP basic auth. When listening it prints one line ``READY rtsp://HOST:PORT`` to stdout (``--port 0`` picks a
free port). SIGTERM/SIGINT stop it. SIGUSR1 mutes every media (sessions and RTCP reports go on, no video: a
camera whose encoder hung), SIGUSR2 unmutes them (the clips carry on where they would be by then).

One thread paces every media (a heap of due times), not one Python thread per media: the benchmarks serve
100+ streams from this process on the same cores as the pipeline they measure, and a hundred threads
waking 25 times a second each, all taking the GIL, cost the box more than the pushes themselves. The access
units already are what the payloader takes, so the served pipeline has no second parser. Access units are
sent in decode order, as an encoder sends them: a clip with B-frames goes out each unit at its decode time
plus the clip's reordering delay, stamped with its own presentation time (its RTP timestamp), so a client
receives P-frames before the B-frames that refer to them, and every picture after it was "captured".

Only the standard library and ``gi`` are imported: this file must not import the ``pipeline`` package.
"""

from __future__ import annotations

import argparse
import heapq
import random
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402

_CODECS = ("h264", "h265")  # GStreamer's names: h264parse/rtph264pay, h265parse/rtph265pay


class _NotThisCodec(Exception):
    pass


class Clip:
    """All access units of one file in memory, with their offsets (s) and the loop duration."""

    def __init__(self, path: str) -> None:
        error = None
        for codec in _CODECS:  # the one qtdemux links to; the other fails at once (not linked)
            try:
                self._read(path, codec)
                self.codec = codec
                return
            except _NotThisCodec as err:
                error = error or err.args[0]  # the first codec's error: a missing file, not "not linked"
        raise SystemExit(f"cannot read {path}: {error or 'no H.264 or H.265 access units'}")

    def _read(self, path: str, codec: str) -> None:
        pipe = Gst.parse_launch(
            f'filesrc location="{path}" ! qtdemux ! {codec}parse config-interval=-1 '
            f"! video/x-{codec},stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
        )
        sink = pipe.get_by_name("sink")
        bus = pipe.get_bus()
        pipe.set_state(Gst.State.PLAYING)
        units: list[tuple[float, float, bytes, bool]] = []  # (pts, dts, data, keyframe) in decode order
        self.caps: str | None = None
        error: str | None = None
        while True:
            sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
            if sample is None:
                if sink.get_property("eos"):
                    break
                msg = bus.pop_filtered(Gst.MessageType.ERROR)
                if msg is not None:
                    error = msg.parse_error()[0].message
                    break
                continue
            buf = sample.get_buffer()
            if self.caps is None:
                self.caps = sample.get_caps().to_string()
            ok, info = buf.map(Gst.MapFlags.READ)
            if ok:
                data = bytes(info.data)
                buf.unmap(info)
                n = len(units) / 25.0
                pts = buf.pts / Gst.SECOND if buf.pts != Gst.CLOCK_TIME_NONE else n
                dts = buf.dts / Gst.SECOND if buf.dts != Gst.CLOCK_TIME_NONE else pts
                key = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
                units.append((pts, dts, data, key))
        pipe.set_state(Gst.State.NULL)
        if not units:
            raise _NotThisCodec(error)
        if error is not None:
            raise SystemExit(f"cannot read {path}: {error}")
        units.sort(key=lambda u: u[1])  # the parser's order already: decode order
        t0 = units[0][1]
        # An encoder with B-frames sends a unit once the pictures before it are encoded: at its decode time
        # plus the clip's reordering delay. Pushed then, a unit was presented (captured) `lead` seconds ago.
        delay = max(p - d for p, d, _, _ in units)
        # (offset, lead, data, keyframe): GLib.Bytes, so that every push wraps the same memory without copying
        self.payloads = [(d - t0, round(delay - (p - d), 6), GLib.Bytes.new(b), k) for p, d, b, k in units]
        step = self.payloads[1][0] - self.payloads[0][0] if len(self.payloads) > 1 else 0.04
        self.duration = self.payloads[-1][0] + (step if step > 0 else 0.04)


class Feed:
    """One media's place in its clip: the next access unit and when it is due (monotonic seconds)."""

    def __init__(self, clip: Clip, appsrc: GstApp.AppSrc, first: int = 0) -> None:
        self.clip, self.appsrc = clip, appsrc
        self.gone = threading.Event()  # the media was unprepared: stop pushing into it
        self.started = False  # a push was accepted (before that, appsrc may still be flushing)
        self.start = time.monotonic()
        self.first = self.index = first  # the unit it starts at; then units pushed, across loops
        self.give_up = self.start + _START_WAIT_S

    def _at(self, index: int) -> float:
        loop, k = divmod(index, len(self.clip.payloads))
        return loop * self.clip.duration + self.clip.payloads[k][0]

    def due(self) -> float:
        return self.start + self._at(self.index) - self._at(self.first)

    def skip(self) -> bool:
        """Let the next access unit's time pass unsent (muted)."""
        self.index += 1
        return True

    def push(self) -> bool:
        """Push the next access unit; False when this media is finished."""
        if not self.started and self.appsrc.current_state != Gst.State.PLAYING:
            # appsrc's do-timestamp stamps a buffer with clock time minus base time, and a media's pipeline
            # gets its clock before its base time: a first buffer pushed in between was stamped with the
            # clock's absolute time (the machine's uptime), the RTP sink waited until the clock got there,
            # and the media sent RTCP but never video. An element that plays has its base time.
            return self._retry_start()
        # a fresh buffer on every push, its memory shared (not copied): appsrc stamps the buffer it is given,
        # and one pushed again would keep its first loop's timestamp
        _t, lead, payload, key = self.clip.payloads[self.index % len(self.clip.payloads)]
        buf = Gst.Buffer.new_wrapped_bytes(payload)
        if lead > 0:  # presented before now (B-frames: reordered); do-timestamp stamps the decode time only
            clock = self.appsrc.get_clock()
            if clock is not None:
                now = clock.get_time() - self.appsrc.get_base_time()
                buf.pts = max(0, now - int(lead * Gst.SECOND))
        if not key:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        ret = self.appsrc.push_buffer(buf)
        if ret == Gst.FlowReturn.OK:
            self.started = True
            self.index += 1
            return True
        if ret == Gst.FlowReturn.FLUSHING and not self.started:
            return self._retry_start()  # configured but not started yet
        return False

    def _retry_start(self) -> bool:
        """The first unit again shortly, its clock restarted with it; False once the media is given up."""
        now = time.monotonic()
        if now >= self.give_up:
            return False
        self.start = now + _START_RETRY_S
        return True


_START_RETRY_S = 0.01
_START_WAIT_S = 30.0  # a media that never starts is dropped after this


class Pacer:
    """Pushes every media's access units at their due times, from one thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Feed]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = False
        self.muted = False  # set from the main loop's signal handlers
        self._thread = threading.Thread(target=self._run, name="pacer", daemon=True)

    def start(self) -> Pacer:
        self._thread.start()
        return self

    def add(self, feed: Feed) -> None:
        with self._cond:
            self._push(feed)
            self._cond.notify()

    def close(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _push(self, feed: Feed) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (feed.due(), self._seq, feed))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stop:
                    return
                now = time.monotonic()
                due: list[Feed] = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
            # pushed outside the lock: a push may wait on the pipeline, and add() must not
            send = Feed.skip if self.muted else Feed.push
            again = [feed for feed in due if not feed.gone.is_set() and send(feed)]
            with self._cond:
                for feed in again:
                    self._push(feed)


class Factory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, clip: Clip, pacer: Pacer, phase_seed: str | None = None) -> None:
        super().__init__()
        self.clip, self.pacer = clip, pacer
        # where each new media of this path starts in the clip: 0, or random but repeatable per path name
        self.phases = random.Random(phase_seed) if phase_seed is not None else None
        self.set_shared(True)
        self.set_launch(
            f'( appsrc name=src is-live=true format=time do-timestamp=true caps="{clip.caps}" '
            f"! rtp{clip.codec}pay name=pay0 pt=96 config-interval=1 )"
        )
        self.connect("media-configure", self._configure)

    def _configure(self, _factory: Factory, media: GstRtspServer.RTSPMedia) -> None:
        first = self.phases.randrange(len(self.clip.payloads)) if self.phases is not None else 0
        feed = Feed(self.clip, media.get_element().get_by_name_recurse_up("src"), first)
        media.connect("unprepared", lambda *_: feed.gone.set())
        self.pacer.add(feed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument(
        "--random-phase",
        action="store_true",
        help="start each media at a random access unit of its clip: independent keyframe phases, as real "
        "cameras have, however many clients connect at once (the benchmarks)",
    )
    ap.add_argument("media", nargs="+", metavar="NAME=FILE")
    args = ap.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    pacer = Pacer().start()
    permissions = None
    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
    for spec in args.media:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"expected NAME=FILE, got {spec!r}")
        factory = Factory(Clip(path), pacer, name if args.random_phase else None)
        if permissions is not None:
            factory.set_permissions(permissions)
        mounts.add_factory("/" + name.strip("/"), factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        pacer.close()
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)

    def mute(on: bool) -> bool:
        pacer.muted = on
        return GLib.SOURCE_CONTINUE

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, mute, True)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR2, mute, False)
    print(f"READY rtsp://{args.host}:{server.get_bound_port()}", flush=True)
    try:
        loop.run()
    finally:
        pacer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
