"""The looping RTSP server the tests, the demo and the benchmarks stand cameras in with
(pipeline/devtools/rtsp_server.py): what a client receives must look like a live camera's stream."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest


def _nal_types(data: bytes) -> list[int]:
    return [data[m.end()] & 0x1F for m in re.finditer(b"\x00\x00\x01", data) if m.end() < len(data)]


@pytest.mark.rtsp
def test_loops_like_a_live_camera(rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path]) -> None:
    # A 2 s clip read for three passes: timestamps run on across each loop (a pushed-again buffer once kept
    # its first pass's timestamp, so every pass restarted at 0), frames come in real time, and each
    # keyframe carries its parameter sets once, as a camera sends them.
    clip = clip_factory("loop_2s_25fps", seconds=2, fps=25, size=(320, 180), gop=25)
    srv = rtsp_server({"a": clip, "b": clip})
    got: list[tuple[float, float, bool, list[int]]] = []
    with av.open(srv.url("b"), options={"rtsp_transport": "tcp", "timeout": "5000000"}, timeout=10) as c:
        stream = c.streams.video[0]
        tb = float(stream.time_base)
        for pkt in c.demux(stream):
            if pkt.pts is None:
                continue
            got.append((time.monotonic(), pkt.pts * tb, pkt.is_keyframe, _nal_types(bytes(pkt))))
            if len(got) >= 150:
                break
    first_key = next(i for i, g in enumerate(got) if g[2])
    got = got[first_key:]
    steps = [round(b[1] - a[1], 3) for a, b in itertools.pairwise(got)]
    assert all(0.03 <= s <= 0.05 for s in steps), steps
    keys = [i for i, g in enumerate(got) if g[2]]
    assert len(keys) >= 4 and all(b - a == 25 for a, b in itertools.pairwise(keys)), keys
    for i in keys:
        nals = got[i][3]
        assert nals.count(7) == 1 and nals.count(8) == 1 and nals.index(8) < nals.index(5), nals
    wall = got[-1][0] - got[0][0]
    media = got[-1][1] - got[0][1]
    assert abs(wall - media) < 0.5, (wall, media)  # paced in real time, not sent as fast as read


@pytest.mark.rtsp
def test_random_phase_starts_each_path_at_its_own_point(
    rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path]
) -> None:
    # The benchmarks open dozens of cameras at once. Served from the clip's start, every one of them
    # keyframed in the same instant every second (one decode burst for the whole box); independent cameras
    # do not. With random_phase each path starts at its own point (repeatable per name): a client may join
    # mid-GOP, as with a real camera, and decodes from the next keyframe.
    clip = clip_factory("loop_2s_25fps", seconds=2, fps=25, size=(320, 180), gop=25)
    names = [f"p{i}" for i in range(6)]
    srv = rtsp_server(dict.fromkeys(names, clip), random_phase=True)
    leads: dict[str, int] = {}
    for name in names:
        with av.open(srv.url(name), options={"rtsp_transport": "tcp", "timeout": "5000000"}, timeout=10) as c:
            stream = c.streams.video[0]
            lead = 0
            for pkt in c.demux(stream):
                if pkt.pts is None or not pkt.size:
                    continue
                if pkt.is_keyframe:
                    assert stream.codec_context.decode(pkt), f"{name}: its first keyframe did not decode"
                    break
                lead += 1
        leads[name] = lead
    assert max(leads.values()) > 0, leads  # somebody joined mid-GOP
    assert len(set(leads.values())) >= 3, leads  # at different points of the GOP


@pytest.mark.rtsp
def test_b_frames_are_sent_in_decode_order_stamped_with_their_presentation_time(
    rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path]
) -> None:
    # An encoder with B-frames sends each reference before the B-frames that refer to it, each stamped with
    # its own presentation time. Sent in presentation order (as this server once did), a client got B-frames
    # before their references: keyframes decoded, the frames between them did not.
    clip = clip_factory("bframes_3s_10fps", seconds=3, fps=10, size=(320, 180), gop=10, bframes=2)
    got: list[tuple[float, float]] = []
    frames: list[float] = []
    srv = rtsp_server({"b": clip})
    with av.open(srv.url("b"), options={"rtsp_transport": "tcp", "timeout": "5000000"}, timeout=10) as c:
        stream = c.streams.video[0]
        tb = float(stream.time_base)
        for pkt in c.demux(stream):
            if pkt.pts is None or not pkt.size or (not got and not pkt.is_keyframe):
                continue
            got.append((time.monotonic(), pkt.pts * tb))
            frames += [f.pts * tb for f in stream.codec_context.decode(pkt)]
            if len(got) >= 40:
                break
    pts = [p for _, p in got]
    assert pts != sorted(pts), pts  # decode order: B-frames after the reference they follow in time
    assert len(frames) >= 30 and all(abs(b - a - 0.1) < 0.01 for a, b in itertools.pairwise(frames)), frames
    # every unit leaves once its picture was "captured", and no later than the clip's reordering delay after
    # (3 frames here); the first ones came in a burst, buffered while the stream was probed
    lags = [t - p for t, p in got[-20:]]
    assert max(lags) - min(lags) < 0.45, [round(x - min(lags), 2) for x in lags]


# Run by Debian's python3 (gi). A Feed's first push into an appsrc that has a clock but no base time yet — the
# moment, while a media's pipeline starts, that made some stand-in cameras send RTCP but never video — and
# what reaches the sink once the pipeline plays: the first buffer's timestamp, in seconds.
_FIRST_PUSH = """
import runpy, sys, time
mod = runpy.run_path(sys.argv[1], run_name="rtsp_server")
Gst, GLib, Feed = mod["Gst"], mod["GLib"], mod["Feed"]
Gst.init(None)


class Clip:
    units = [bytes([0, 0, 0, 1, 0x65 if i == 0 else 0x41, i]) for i in range(25)]
    payloads = [(i / 25, 0.0, GLib.Bytes.new(u), i == 0) for i, u in enumerate(units)]
    duration = 1.0


pipe = Gst.parse_launch(
    "appsrc name=src is-live=true format=time do-timestamp=true ! fakesink name=sink sync=false"
)
src, sink = pipe.get_by_name("src"), pipe.get_by_name("sink")
seen = []
def keep(_pad, info):
    seen.append(info.get_buffer().pts)
    return Gst.PadProbeReturn.OK


sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, keep)
clock = Gst.SystemClock.obtain()
while clock.get_time() < 10 * Gst.SECOND:  # an absolute clock time must stand out from a running time
    time.sleep(0.1)
pipe.set_state(Gst.State.PAUSED)  # live: no preroll, no clock yet
src.set_clock(clock)  # the element has the clock, its base time is still 0
feed = Feed(Clip(), src)
assert feed.push(), "a media that has not started must be retried, not given up"
pipe.set_state(Gst.State.PLAYING)
deadline = time.monotonic() + 5
while not feed.started and time.monotonic() < deadline:
    feed.push()
    time.sleep(0.01)
feed.push()
feed.push()
while len(seen) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
pipe.set_state(Gst.State.NULL)
print(" ".join(f"{pts / Gst.SECOND:.3f}" for pts in seen))
"""


@pytest.mark.rtsp
def test_first_access_unit_waits_for_the_media_to_play() -> None:
    # appsrc stamps a buffer with clock time minus base time, and a media's pipeline gets its clock before its
    # base time. A first access unit pushed in between was stamped with the clock's absolute time, the RTP
    # sink waited for that moment, and the camera sent RTCP reports but no video (in bursts of 60 opens, one
    # or two media every other run). The first push now waits for the element to play.
    from pipeline.devtools.rtsp import SERVER_SCRIPT, SYSTEM_PYTHON

    r = subprocess.run(
        [SYSTEM_PYTHON, "-c", _FIRST_PUSH, str(SERVER_SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
    stamps = [float(v) for v in r.stdout.split()]
    assert len(stamps) >= 3, (r.stdout, r.stderr[-1000:])
    assert all(0 <= t < 2 for t in stamps), stamps  # running times, not the clock's absolute time
