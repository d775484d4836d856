#!/usr/bin/python3
"""A small looping RTSP server for tests and the demo: GStreamer's RTSP server, run by Debian's python3.

    /usr/bin/python3 pipeline/devtools/rtsp_server.py [--host 127.0.0.1] [--port 0] [--user U --password P]
                                                      NAME=FILE.mp4 [NAME=FILE.mp4 ...]

Serves each MP4 (H.264) at ``rtsp://HOST:PORT/NAME`` forever, looping, without re-encoding: the file's access
units are read once (``filesrc ! qtdemux ! h264parse``) and pushed in real time into ``appsrc ! h264parse !
rtph264pay config-interval=1``; timestamps keep increasing across loops like a live camera. Media are shared
(one pipeline per path for all clients). ``--user/--password`` require HTTP basic auth. When listening it
prints one line ``READY rtsp://HOST:PORT`` to stdout (``--port 0`` picks a free port). SIGTERM/SIGINT stop it.

Only the standard library and ``gi`` are imported: this file must not import the ``pipeline`` package.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


class Clip:
    """All access units of one file in memory, with their offsets (s) and the loop duration."""

    def __init__(self, path: str) -> None:
        pipe = Gst.parse_launch(
            f'filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 '
            "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
        )
        sink = pipe.get_by_name("sink")
        bus = pipe.get_bus()
        pipe.set_state(Gst.State.PLAYING)
        self.units: list[tuple[float, bytes, bool]] = []
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
                pts = buf.pts / Gst.SECOND if buf.pts != Gst.CLOCK_TIME_NONE else None
                key = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
                self.units.append((pts if pts is not None else len(self.units) / 25.0, data, key))
        pipe.set_state(Gst.State.NULL)
        if error is not None or not self.units:
            raise SystemExit(f"cannot read {path}: {error or 'no H.264 access units'}")
        self.units.sort(key=lambda u: u[0])
        t0 = self.units[0][0]
        self.units = [(t - t0, d, k) for t, d, k in self.units]
        step = self.units[1][0] - self.units[0][0] if len(self.units) > 1 else 0.04
        self.duration = self.units[-1][0] + (step if step > 0 else 0.04)


class Feeder:
    """Pushes one clip into one media's appsrc in real time, looping, until the media goes away."""

    def __init__(self, clip: Clip, appsrc: Gst.Element) -> None:
        self.clip, self.appsrc = clip, appsrc
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        start = time.monotonic()
        loop = 0
        while not self.stop.is_set():
            for t, data, key in self.clip.units:
                due = start + loop * self.clip.duration + t
                delay = due - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    return
                buf = Gst.Buffer.new_wrapped(data)
                if not key:
                    buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
                if self.appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                    return
            loop += 1


class Factory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, clip: Clip) -> None:
        super().__init__()
        self.clip = clip
        self.set_shared(True)
        self.set_launch(
            f'( appsrc name=src is-live=true format=time do-timestamp=true caps="{clip.caps}" '
            "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.connect("media-configure", self._configure)

    def _configure(self, _factory: Factory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        feeder = Feeder(self.clip, appsrc)
        media.connect("unprepared", lambda *_: feeder.stop.set())
        feeder.thread.start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("media", nargs="+", metavar="NAME=FILE")
    args = ap.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
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
        factory = Factory(Clip(path))
        if permissions is not None:
            factory.set_permissions(permissions)
        mounts.add_factory("/" + name.strip("/"), factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://{args.host}:{server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
