"""pipeline/sources.py against generated files and a real RTSP server (see tests/fixtures/rtsp.py)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Camera
from pipeline.devtools.clips import parking_scene
from pipeline.protocols import Frame, FrameSource, SourceState, SourceStatus
from pipeline.redact import Redactor
from pipeline.sources import Source, _next_on_grid, camera_phase, keyframes_suffice, open_source, to_bgr

OFFLINE = (SourceState.STALLED, SourceState.BACKOFF, SourceState.CONNECTING)
STALL_S = 2.0


class Collector:
    """Iterates a source's frames() in a thread, keeping (monotonic time, frame)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.got: list[tuple[float, Frame]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for f in self.source.frames():
                self.got.append((time.monotonic(), f))
        except BaseException as err:  # the test asserts there is none
            self.error = err

    def count(self) -> int:
        return len(self.got)

    def wait_frames(self, n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        target = self.count() + n
        while time.monotonic() < end:
            if self.count() >= target:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.source.close()
        self.thread.join(10)
        assert not self.thread.is_alive()
        assert self.error is None


def wait_state(source: Source, states: tuple[SourceState, ...], timeout: float) -> tuple[SourceStatus, float]:
    t0 = time.monotonic()
    while True:
        st = source.status()
        if st.state in states:
            return st, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(
                f"state {st.state} (reason {st.reason!r}) after {timeout} s, wanted {states}"
            )
        time.sleep(0.05)


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    end = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not extra or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


def receive(src: Source, n: int, timeout_s: float) -> list[tuple[float, Frame]]:
    """(arrival wall time, frame) for the first ``n`` frames (fewer after ``timeout_s``); closes ``src``."""
    received: list[tuple[float, Frame]] = []

    def run() -> None:
        for f in src.frames():
            received.append((time.time(), f))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    end = time.monotonic() + timeout_s
    while len(received) < n and time.monotonic() < end:
        time.sleep(0.05)
    src.close()
    t.join(5)
    return received


def rtsp_camera(url: str, **kw: Any) -> Camera:
    base: dict[str, Any] = {
        "id": "cam",
        "name": "cam",
        "source": {"url": url},
        "detect_fps": 1.0,
        "stall_timeout_s": STALL_S,
        "open_timeout_s": 3.0,
        "backoff_max_s": 1.0,
    }
    base.update(kw)
    return Camera.model_validate(base)


# ---- files -------------------------------------------------------------------------------------------------


def test_file_keyframe_mode_yields_about_detect_fps(parking_clip: Path, no_thread_leak: None) -> None:
    src = Source(parking_clip, detect_fps=1.0, loop=False, realtime=False)
    assert isinstance(src, FrameSource)
    frames = list(src.frames())
    src.close()
    assert 9 <= len(frames) <= 11  # 10 s at 1 fps
    assert all(f.keyframe for f in frames)  # keyframe mode (GOP = 1 s)
    ts = [f.ts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(ts))
    assert all(abs((b - a) - 1.0) < 0.05 for a, b in itertools.pairwise(ts))
    assert frames[0].image.shape == (360, 640, 3) and frames[0].image.dtype.name == "uint8"
    st = src.status()
    assert st.state is SourceState.STOPPED and st.frames == len(frames) and st.reason == "end of file"


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every packet handed to a video decoder from now on: whether it was a keyframe."""
    import av.video.codeccontext as vcc

    seen: list[bool] = []
    real = vcc.VideoCodecContext.decode

    def counting(self: Any, packet: Any = None) -> Any:
        if packet is not None:
            seen.append(bool(packet.is_keyframe))
        return real(self, packet)

    monkeypatch.setattr(vcc.VideoCodecContext, "decode", counting)
    return seen


def test_file_keyframe_mode_decodes_only_keyframes(parking_clip: Path, decoded: list[bool]) -> None:
    with Source(parking_clip, detect_fps=0.5, loop=False, realtime=False) as src:
        frames = list(src.frames())
    assert 4 <= len(frames) <= 6  # every 2nd keyframe
    # Only the keyframes that are taken reach the decoder (skipped keyframes are not decoded either), from
    # the first GOP on: while the keyframe interval is learnt, the packets between keyframes are only held.
    # (Decoding the first GOP in full, as before, was ~10 s of a 2-core box started with 80 cameras.)
    assert all(decoded) and len(decoded) == len(frames)


def test_full_decode_decodes_every_frame_and_converts_the_sampled_ones(
    parking_clip: Path, decoded: list[bool]
) -> None:
    with Source(parking_clip, detect_fps=1.0, loop=False, realtime=False, full_decode=True) as src:
        frames = list(src.frames())
    assert 9 <= len(frames) <= 11  # the same sampling as keyframe-only decoding
    assert len(decoded) == 100 and decoded.count(True) == 10  # but every packet of the 10 s was decoded


def test_fast_keyframes_skip_deblocking_and_stay_faithful(
    clip_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyframe-only decoders skip the loop filter; full decoders never do (P-frames would drift)."""
    import cv2

    made: list[tuple[bool, bool, dict[str, str]]] = []
    real = Source._decoder

    def spy(self: Source, stream: Any, full: bool) -> Any:
        cc = real(self, stream, full)
        made.append((self.fast_keyframes, full, dict(cc.options)))
        return cc

    monkeypatch.setattr(Source, "_decoder", spy)

    def grainy(i: int, t: float, size: tuple[int, int]) -> Any:  # sensor grain: real edges for the filter
        img = parking_scene(i, t, size).astype(np.int16)
        img += np.random.default_rng(i).normal(0, 8, img.shape).astype(np.int16)
        return np.clip(img, 0, 255).astype(np.uint8)

    clip = clip_factory("deblocked_10s", seconds=10, size=(640, 360), gop=10, scene_fn=grainy, deblock=True)
    with Source(clip, detect_fps=1.0, loop=False, realtime=False) as src:
        fast = list(src.frames())
    with Source(clip, detect_fps=1.0, loop=False, realtime=False, fast_keyframes=False) as src:
        exact = list(src.frames())
    assert {(True, False), (False, False)} <= {(fast_, full) for fast_, full, _ in made}
    for fast_, full, options in made:
        assert (options.get("skip_loop_filter") == "all") is (fast_ and not full)
    keyed = [(a, b) for a, b in zip(fast, exact, strict=True) if a.keyframe and b.keyframe]
    assert len(keyed) >= 8
    # the same pictures, within what a viewer could tell apart (measured ~44 dB on 1080p CCTV)
    assert min(cv2.PSNR(a.image, b.image) for a, b in keyed[1:]) > 35.0
    assert any(not (a.image == b.image).all() for a, b in keyed[1:])  # the option took effect


def test_pictures_convert_on_the_decoding_thread_alone(clip_factory: Callable[..., Path]) -> None:
    """PyAV's default converts a frame with a swscale thread per core, a pool started for every frame; the
    readers convert on their own thread (one per camera already), so the calling thread does all the work."""
    import av

    clip = clip_factory("keyframes_1080p_4s", seconds=4, fps=25, size=(1920, 1080), gop=25)
    shares: list[float] = []
    with av.open(str(clip)) as c:
        st = c.streams.video[0]
        keys = [p for p in c.demux(st) if p.is_keyframe and p.size]
        cc = st.codec_context
        for _ in range(3):  # the best of three: another test's thread winding down may take CPU meanwhile
            # fresh frames: each keeps the scaling context of its first conversion, a repeat would pay less
            frames = [f for _ in range(6) for p in keys for f in cc.decode(p)]
            assert len(frames) >= 18
            assert np.array_equal(to_bgr(frames[0]), frames[0].to_ndarray(format="bgr24"))
            cpu0, own0 = time.process_time(), time.thread_time()
            for f in frames[1:]:
                image = to_bgr(f)
            shares.append((time.thread_time() - own0) / max(time.process_time() - cpu0, 1e-9))
            assert image.shape == (1080, 1920, 3)
    assert max(shares) >= 0.8, f"this thread did {max(shares):.0%} of the conversions' CPU at best"


def test_long_gop_file_is_not_starved_before_its_second_keyframe(tmp_path: Path) -> None:
    """A 12 s GOP at detect_fps 2: keyframe-only would give one frame in 12 s; decoding in full until the
    interval is known gives the requested rate from the start (vtest.avi has 25 s between keyframes)."""
    from pipeline.devtools.clips import make_clip

    clip = make_clip(tmp_path / "long_gop.mp4", seconds=8, fps=10, size=(320, 180), gop=120)
    with Source(clip, detect_fps=2, loop=False, realtime=False) as src:
        frames = list(src.frames())
    assert len(frames) >= 14, [round(f.ts - frames[0].ts, 2) for f in frames]
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(frames)]
    assert max(gaps) < 1.0


def test_keyframes_slower_than_detect_fps_but_above_the_floor_are_decoded_alone(
    clip_factory: Callable[..., Path], decoded: list[bool]
) -> None:
    """A camera's 2 s I-frame interval (the common default) at detect_fps 1, min_detect_fps 0.5: every
    keyframe is detected, nothing between them is decoded, from the first GOP on; the status says so."""
    clip = clip_factory("gop2s_12s", seconds=12, fps=10, size=(320, 180), gop=20)
    with Source(clip, detect_fps=1.0, min_detect_fps=0.5, loop=False, realtime=False) as src:
        frames = list(src.frames())
        st = src.status()
    assert len(frames) == 6 and all(f.keyframe for f in frames)
    assert all(abs((b.ts - a.ts) - 2.0) < 0.05 for a, b in itertools.pairwise(frames))
    assert decoded == [True] * 6  # the 114 packets between them never reached a decoder
    assert st.decode == "keyframes" and st.keyframe_interval_s == pytest.approx(2.0)


def test_cameras_started_together_take_different_keyframes_below_the_keyframe_rate(
    parking_clip: Path,
) -> None:
    """At 0.5 det/s on a 1 s GOP a camera takes every other keyframe; which ones is its own (the phase its id
    gives), not when it connected. Both readers here start at the same instant: before, both took the even
    seconds (38 cameras started together submitted 26 and 12 frames in alternate seconds)."""
    assert camera_phase("lot-b") < 0.25 < 0.5 < camera_phase("lot-a") < 0.75  # half a period apart
    seconds = {}
    for cid in ("lot-b", "lot-a"):
        with Source(
            parking_clip, camera_id=cid, detect_fps=0.5, loop=False, realtime=False, wall_time=lambda: 1000.0
        ) as src:
            frames = list(src.frames())
        assert all(f.keyframe for f in frames) and 5 <= len(frames) <= 6  # the rate holds
        # the first two: taken before the keyframe interval is known, at the connection's own pace
        seconds[cid] = [round(f.ts - 1000.0) for f in frames[2:]]
    assert {s % 2 for s in seconds["lot-b"]} == {0} and {s % 2 for s in seconds["lot-a"]} == {1}, seconds


@given(
    ts=st.floats(1e9, 2e9),
    period=st.floats(0.1, 10.0),
    key_share=st.floats(0.1, 1.0),
    phase=st.floats(0.0, 0.999),
    off=st.floats(-0.999, 0.999),
)
def test_sampling_grid_is_kept_and_regained_without_catching_up(
    ts: float, period: float, key_share: float, phase: float, off: float
) -> None:
    slack = 0.5 * key_share * period  # half a keyframe interval, the keyframe at most a period apart
    phase_s = phase * period
    nxt = _next_on_grid(ts, period, slack, phase_s)
    k = (nxt - phase_s) / period
    tol = 1e-6 * ts
    assert abs(k - round(k)) < tol / period  # on the grid
    # the next keyframe taken (at or after nxt - slack) is a period or more after this one, under two later
    assert period - slack - tol <= nxt - ts <= 2 * period - slack + tol
    grid = phase_s + round((ts - phase_s) / period) * period
    on = grid + off * slack  # taken on the grid, within its slack: the next one is the next grid point
    assert abs(_next_on_grid(on, period, slack, phase_s) - (grid + period)) < tol


def test_keyframes_slower_than_the_floor_have_every_frame_decoded(
    clip_factory: Callable[..., Path], decoded: list[bool], caplog: pytest.LogCaptureFixture
) -> None:
    """Without the floor (min_detect_fps = detect_fps) the same 2 s GOP is decoded in full for 1 det/s; a
    4 s GOP is below a 0.5 det/s floor too. Either way the status says so, and the log warns once."""
    clip = clip_factory("gop2s_12s", seconds=12, fps=10, size=(320, 180), gop=20)
    caplog.set_level(logging.WARNING, logger="pipeline.sources")
    with Source(clip, camera_id="c1", detect_fps=1.0, loop=False, realtime=False) as src:
        frames = list(src.frames())
        st = src.status()
    assert 11 <= len(frames) <= 12 and any(not f.keyframe for f in frames)
    # the first GOP whole (the interval was not known), then each GOP up to its frame due 1 s in: not the
    # 9 frames after it, which nothing due refers to (the next due frame is the next keyframe)
    assert 20 + 5 * 11 - 3 <= len(decoded) <= 20 + 5 * 11 + 3
    assert st.decode == "every_frame" and st.keyframe_interval_s == pytest.approx(2.0)
    warned = [r.getMessage() for r in caplog.records if "c1" in r.getMessage()]
    assert len(warned) == 1 and "a keyframe every 2.0 s" in warned[0] and "1.0 s or less" in warned[0]

    decoded.clear()
    long_gop = clip_factory("gop4s_12s", seconds=12, fps=10, size=(320, 180), gop=40)
    with Source(long_gop, detect_fps=1.0, min_detect_fps=0.5, loop=False, realtime=False) as src:
        frames = list(src.frames())
        st = src.status()
    assert len(frames) >= 11 and st.decode == "every_frame"
    assert len(decoded) >= 90  # due every second: only the last 0.9 s of each 4 s GOP is left undecoded


@pytest.mark.parametrize("bframes", [0, 2])
def test_decoding_every_frame_leaves_a_gops_tail_undecoded_and_the_due_frames_faithful(
    tmp_path: Path, decoded: list[bool], bframes: int
) -> None:
    """Every frame decoded for 1 det/s on a 2 s GOP: the frames after the one due 1 s into each GOP are not
    decoded (the next due frame is the next keyframe), and every due frame is the picture it should be. With
    B-frames decode order is not display order: every packet is decoded, as before."""
    from pipeline.devtools.clips import make_clip

    clip = make_clip(tmp_path / "gop2s.mp4", seconds=12, fps=10, size=(320, 180), gop=20, bframes=bframes)
    with av.open(str(clip)) as c:
        truth = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    decoded.clear()
    with Source(clip, detect_fps=1.0, loop=False, realtime=False) as src:
        frames = list(src.frames())
    assert 11 <= len(frames) <= 12
    assert all(abs((b.ts - a.ts) - 1.0) < 0.15 for a, b in itertools.pairwise(frames))
    t0 = frames[0].ts
    for f in frames:
        want = truth[round((f.ts - t0) * 10)]
        diff = np.abs(f.image.astype(np.int16) - want.astype(np.int16)).mean()
        assert diff < 2.0, (round(f.ts - t0, 2), diff)
    # (with B-frames the first keyframe reaches the decoder twice: held, then drained and decoded again)
    assert len(decoded) <= 80 if bframes == 0 else len(decoded) >= 120, len(decoded)


def test_a_keyframe_interval_wandering_across_the_bound_warns_once_a_while(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "smart" codec's dynamic GOP crosses the bound both ways every few keyframes: the status follows it
    every time, the warning comes at the first crossing and then no more often than every 10 minutes."""
    import pipeline.sources as sources

    caplog.set_level(logging.DEBUG, logger="pipeline.sources")
    src = Source("rtsp://127.0.0.1:1/x", camera_id="c1", detect_fps=1.0, min_detect_fps=0.5)
    for iv in (2.0, 3.0, 2.0, 3.5, 1.9, 3.0):
        src._decode_mode(iv, not keyframes_suffice(iv, src.min_detect_fps))
        assert src.status().decode == ("every_frame" if iv > 2.2 else "keyframes")
        assert src.status().keyframe_interval_s == iv
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "a keyframe every 3.0 s" in warnings[0].getMessage()
    monkeypatch.setattr(sources, "_DECODE_WARN_EVERY_S", 0.0)  # ten minutes later
    src._decode_mode(1.5, False)
    src._decode_mode(4.0, True)
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2


@pytest.mark.parametrize("bframes", [0, 2])
def test_frames_between_keyframes_of_a_long_gop_are_decoded_faithfully(tmp_path: Path, bframes: int) -> None:
    """While the keyframe interval is learnt the packets after a keyframe are held undecoded; when a frame
    between keyframes falls due they are decoded after all, from the keyframe (with B-frames the decoder was
    drained after it, and drained references decode nothing but grey)."""
    from pipeline.devtools.clips import make_clip

    clip = make_clip(tmp_path / "long_gop.mp4", seconds=4, fps=10, size=(320, 180), gop=40, bframes=bframes)
    with av.open(str(clip)) as c:  # every picture, decoded the plain way
        truth = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    with Source(clip, detect_fps=2, loop=False, realtime=False) as src:
        frames = list(src.frames())
    assert len(frames) >= 7
    t0 = frames[0].ts
    for f in frames:
        want = truth[round((f.ts - t0) * 10)]
        diff = np.abs(f.image.astype(np.int16) - want.astype(np.int16)).mean()
        assert diff < 2.0, (round(f.ts - t0, 2), diff)


def test_keyframes_of_a_b_frame_stream_come_out_when_they_are_read(clip_factory: Callable[..., Path]) -> None:
    """With B-frames the decoder holds pictures back to reorder them: fed keyframes alone, each came out two
    keyframes later (the demo's courtyard camera, x264's defaults: every result 2 s late, and a file's last
    two keyframes never came out at all)."""
    clip = clip_factory("parking_10s_bframes", seconds=10, fps=10, size=(640, 360), gop=10, bframes=2)
    with Source(clip, detect_fps=1.0, loop=False, realtime=False) as src:
        frames = list(src.frames())
    assert len(frames) == 10  # every keyframe of the 10 s, the last one included
    assert all(f.keyframe for f in frames[1:])
    ts = [f.ts for f in frames]
    assert all(abs((b - a) - 1.0) < 0.05 for a, b in itertools.pairwise(ts))
    # each keyframe comes out as its own packet is demuxed (Frame.index counts packets), not two GOPs on
    assert all(f.index <= 10 * i + 3 for i, f in enumerate(frames)), [f.index for f in frames]


def test_file_full_mode_above_keyframe_rate(parking_clip: Path) -> None:
    with Source(parking_clip, detect_fps=4.0, loop=False, realtime=False) as src:
        frames = list(src.frames())
    assert 36 <= len(frames) <= 41
    assert any(not f.keyframe for f in frames)
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(frames)]
    assert min(gaps) > 0 and abs(sum(gaps) / len(gaps) - 0.25) < 0.03


def test_file_loop_keeps_ts_increasing(parking_clip: Path, no_thread_leak: None) -> None:
    src = Source(parking_clip, detect_fps=1.0, loop=True, realtime=False)
    frames = []
    for f in src.frames():
        frames.append(f)
        if len(frames) == 25:  # 2.5 passes of a 10 s clip
            break
    src.close()
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(frames)]
    assert all(0.9 < g < 1.2 for g in gaps), gaps
    assert src.status().reconnects == 0  # looping is not reconnecting


def test_file_realtime_paces_to_stream_rate(parking_clip: Path) -> None:
    with Source(parking_clip, detect_fps=2.0, loop=False, realtime=True) as src:
        t0 = time.monotonic()
        it = src.frames()
        frames = [next(it) for _ in range(4)]  # stream time 0, 0.5, 1.0, 1.5 s
        elapsed = time.monotonic() - t0
        it.close()
    assert 1.2 < elapsed < 3.0
    assert frames[-1].ts - frames[0].ts == pytest.approx(1.5, abs=0.05)


def test_missing_file_backs_off_without_raising(tmp_path: Path) -> None:
    src = Source(tmp_path / "nope.mp4", detect_fps=1.0, backoff_max_s=0.5)
    c = Collector(src)
    st, _ = wait_state(src, (SourceState.BACKOFF,), 5)
    assert st.reason is not None and "file not found" in st.reason
    c.close()
    assert src.status().state is SourceState.STOPPED


def test_shared_stop_event_ends_frames(parking_clip: Path, no_thread_leak: None) -> None:
    stop = threading.Event()
    src = Source(parking_clip, detect_fps=1.0, loop=True, realtime=True, stop=stop)
    c = Collector(src)
    assert c.wait_frames(1, 5)
    stop.set()
    c.thread.join(3)
    assert not c.thread.is_alive()
    c.close()


# ---- RTSP --------------------------------------------------------------------------------------------------


@pytest.mark.rtsp
def test_rtsp_gets_frames(rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    src = open_source(rtsp_camera(srv.url("cam1")), threading.Event())
    c = Collector(src)
    assert c.wait_frames(3, 10)
    st = src.status()
    assert st.state is SourceState.RUNNING and st.frames >= 3 and st.last_frame_ts is not None
    ts = [f.ts for _, f in c.got]
    assert all(b > a for a, b in itertools.pairwise(ts))
    assert abs(ts[-1] - time.time()) < 3  # anchored to wall time
    c.close()


@pytest.mark.rtsp
def test_rtsp_low_bitrate_frames_are_not_stamped_after_they_arrive(
    rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path], no_thread_leak: None
) -> None:
    # A sub-stream-sized, mostly static clip: a few kB a second, so probing buffers seconds of packets and
    # hands them out late; stamping the connection's clock when the first one is read put every frame ahead
    # of the wall clock (a negative latency).
    clip = clip_factory("parking_12s_320", seconds=12, fps=10, size=(320, 180), gop=10)
    srv = rtsp_server({"sub": clip})
    src = open_source(rtsp_camera(srv.url("sub")), threading.Event())
    received = [(got, f.ts) for got, f in receive(src, 5, 15)]
    assert len(received) >= 5
    late = [round(ts - got, 3) for got, ts in received if ts > got]
    assert not late, f"frames stamped after they arrived, by (s): {late}"
    assert received[-1][0] - received[-1][1] < 1.5  # still close to the wall clock


@pytest.mark.rtsp
def test_rtsp_b_frame_stream_frames_are_not_held_back(
    rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path], no_thread_leak: None
) -> None:
    # Keyframe-only decoding of a stream with B-frames: the decoder's reorder buffer held each keyframe until
    # two more had been fed, so every frame reached the detector ~2 keyframe intervals after its capture.
    clip = clip_factory("parking_12s_bframes", seconds=12, fps=10, size=(640, 360), gop=10, bframes=2)
    srv = rtsp_server({"cam": clip})
    src = open_source(rtsp_camera(srv.url("cam")), threading.Event())
    received = [(got, f.ts) for got, f in receive(src, 5, 15)]
    assert len(received) >= 5
    ages = [round(got - ts, 2) for got, ts in received[1:]]
    assert max(ages) < 0.8, f"frames came out this long after capture (s): {ages}"


@pytest.mark.rtsp
@pytest.mark.parametrize(("detect_fps", "bframes"), [(1.0, 2), (4.0, 0)], ids=["keyframes", "full"])
def test_rtsp_h265_camera(
    rtsp_server: Callable[..., Any],
    clip_factory: Callable[..., Path],
    detect_fps: float,
    bframes: int,
    no_thread_leak: None,
) -> None:
    # Most CCTV cameras sold now send H.265 (x265 open GOPs here): keyframes only at the keyframe rate, every
    # frame decoded above it, and either way frames reach the rules right after capture (B-frames decoded in
    # full: test_rtsp_b_frame_stream_decoded_in_full_gives_every_due_frame_whole).
    clip = clip_factory(
        f"parking_12s_hevc_b{bframes}",
        seconds=12,
        fps=10,
        size=(640, 360),
        gop=10,
        codec="hevc",
        bframes=bframes,
    )
    srv = rtsp_server({"cam": clip})
    src = open_source(rtsp_camera(srv.url("cam"), detect_fps=detect_fps), threading.Event())
    n = round(4 * detect_fps)
    received = receive(src, n, 15)
    assert len(received) >= n
    frames = [f for _, f in received]
    assert frames[0].image.shape == (360, 640, 3)
    assert all(b.ts > a.ts for a, b in itertools.pairwise(frames))
    assert all(f.keyframe for f in frames[1:]) is (detect_fps == 1.0)
    ages = [round(got - f.ts, 2) for got, f in received[1:]]
    assert max(ages) < 0.8, f"frames came out this long after capture (s): {ages}"


@pytest.mark.rtsp
def test_rtsp_camera_with_a_2s_gop_is_detected_on_its_keyframes_alone(
    clip_factory: Callable[..., Path], rtsp_server: Callable[..., Any]
) -> None:
    """The common camera default (I-frame every 2 s) at detect_fps 1, the camera's default floor (half of
    it): each keyframe is decoded and comes out as it arrives, nothing between them; the status says so."""
    clip = clip_factory("gop2s_12s", seconds=12, fps=10, size=(320, 180), gop=20)
    srv = rtsp_server({"cam": clip})
    src = open_source(rtsp_camera(srv.url("cam")), threading.Event())
    assert src.min_detect_fps == 0.5
    received = receive(src, 4, 15)
    st = src.status()
    src.close()
    frames = [f for _, f in received]
    assert len(frames) >= 4 and all(f.keyframe for f in frames)
    assert all(abs((b.ts - a.ts) - 2.0) < 0.1 for a, b in itertools.pairwise(frames[1:]))
    assert max(round(got - f.ts, 2) for got, f in received[1:]) < 0.8
    assert st.decode == "keyframes" and st.keyframe_interval_s == pytest.approx(2.0, abs=0.05)


_BITS = 8  # frame index bits drawn by counter_scene


def counter_scene(i: int, _t: float, size: tuple[int, int]) -> np.ndarray:
    """Frame ``i`` says its own index: ``_BITS`` squares along the top, white for 1, over a bar that moves
    every frame (so that P- and B-frames predict real motion)."""
    w, h = size
    img = np.full((h, w, 3), 110, np.uint8)
    x = (i * 7) % (w - 24)
    img[h // 2 :, x : x + 24] = (30, 160, 220)
    side = w // (_BITS + 2)
    for b in range(_BITS):
        img[4 : 4 + side, (b + 1) * side : (b + 2) * side] = 255 if i >> b & 1 else 0
    return img


def counter_of(image: np.ndarray) -> int | None:
    """The index counter_scene drew, or None where a square is neither black nor white (a broken picture)."""
    side = image.shape[1] // (_BITS + 2)
    n = 0
    for b in range(_BITS):
        m = float(image[8 : side - 4, (b + 1) * side + 4 : (b + 2) * side - 4].mean())
        if 60 <= m <= 195:
            return None
        n |= (m > 195) << b
    return n


@pytest.mark.rtsp
@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_rtsp_b_frame_stream_decoded_in_full_gives_every_due_frame_whole(
    rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path], codec: str, no_thread_leak: None
) -> None:
    # Above the keyframe rate every frame is decoded. With B-frames a camera sends each P-frame before the
    # B-frames that refer to it and stamps every frame with its presentation time: the frames due must come
    # out whole (not concealed from missing references), in order, each one period after the last.
    clip = clip_factory(
        f"counter_4s_{codec}_b2",
        seconds=4,
        fps=10,
        size=(320, 180),
        gop=10,
        codec=codec,
        bframes=2,
        scene_fn=counter_scene,
    )
    srv = rtsp_server({"cam": clip})
    src = open_source(rtsp_camera(srv.url("cam"), detect_fps=5.0), threading.Event())
    received = receive(src, 16, 20)
    assert len(received) >= 16
    frames = [f for _, f in received]
    counters = [counter_of(f.image) for f in frames]
    assert None not in counters, counters
    assert all((b - a) % 40 == 2 for a, b in itertools.pairwise(counters)), counters  # type: ignore[operator]
    steps = [round(b.ts - a.ts, 2) for a, b in itertools.pairwise(frames)]
    assert all(abs(s - 0.2) < 0.03 for s in steps), steps
    ages = [round(got - f.ts, 2) for got, f in received[1:]]
    assert max(ages) < 0.8, f"frames came out this long after capture (s): {ages}"


def noise_scene(i: int, _t: float, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.rtsp
def test_rtsp_reads_keep_up_beside_a_thread_busy_in_python(
    rtsp_server: Callable[..., Any], clip_factory: Callable[..., Path], no_thread_leak: None
) -> None:
    # PyAV's read timeout runs an interrupt callback that takes the GIL on every FFmpeg socket read (several
    # per RTP packet). Beside a thread busy in Python each of those waited a switch interval (5 ms), so a
    # camera sending many RTP packets a frame fell seconds behind its stream (and with many cameras in one
    # process the GIL traffic costs CPU: pingan bench demux).
    clip = clip_factory("noise_4s_25fps", seconds=4, fps=25, size=(640, 360), gop=25, scene_fn=noise_scene)
    srv = rtsp_server({"cam1": clip})
    src = open_source(rtsp_camera(srv.url("cam1")), threading.Event())
    c = Collector(src)
    assert c.wait_frames(1, 10)
    done = threading.Event()

    def spin() -> None:
        n = 0
        while not done.is_set():
            n += 1

    busy = threading.Thread(target=spin, daemon=True)
    busy.start()
    try:
        t0, i0 = time.monotonic(), c.got[-1][1].index
        c.wait_frames(3, 6)  # keyframe-only at 1 a second; Frame.index counts the packets read
        t1, i1 = time.monotonic(), c.got[-1][1].index
    finally:
        done.set()
        busy.join(5)
        c.close()
    rate = (i1 - i0) / (t1 - t0)
    assert rate > 0.7 * 25, f"read {rate:.1f} packets/s of a 25 fps stream beside a busy thread"


@pytest.mark.rtsp
@pytest.mark.parametrize("pause_s", [0.0, 0.9])
def test_rtsp_read_pauses_end_before_the_next_keyframe(
    rtsp_server: Callable[..., Any], parking_clip_25: Path, pause_s: float, no_thread_leak: None
) -> None:
    # Keyframe-only reads pause between bursts (the socket gathers packets, the thread is not woken for each
    # RTP packet); even a pause far longer than a frame must end before the keyframe it would delay.
    srv = rtsp_server({"cam1": parking_clip_25})
    src = Source(srv.url("cam1"), camera_id="cam1", detect_fps=1.0, read_pause_s=pause_s, stall_timeout_s=4.0)
    received = receive(src, 6, 15)
    assert len(received) >= 6, src.status()
    lags = [round(got - f.ts, 3) for got, f in received[2:]]  # the first come out of the probe's buffer
    assert max(lags) < 0.3, f"keyframes delivered late (s): {lags}"
    packets = [f.index for _, f in received[2:]]
    assert all(20 <= b - a <= 30 for a, b in itertools.pairwise(packets)), packets  # every packet was read


@pytest.mark.rtsp
def test_rtsp_due_keyframes_the_detector_would_only_drop_are_not_decoded(
    rtsp_server: Callable[..., Any], parking_clip_25: Path, no_thread_leak: None
) -> None:
    # InferenceScheduler.admit says no while the detector is behind and still holds this camera's last frame:
    # the due keyframe is left undecoded (counted as dropped) and the next keyframe is due instead.
    srv = rtsp_server({"cam1": parking_clip_25})
    src = Source(srv.url("cam1"), camera_id="cam1", detect_fps=0.5, stall_timeout_s=4.0)
    answers = iter([True, False, False])
    asked: list[float] = []

    def admit(age_s: float) -> bool:
        assert 0 <= age_s < 2, age_s  # the keyframe's age: captured moments ago
        asked.append(time.monotonic())
        return next(answers, True)

    src.admit = admit
    received = receive(src, 6, 30)
    assert len(received) >= 6 and len(asked) >= 5, (len(received), len(asked), src.status())
    assert src.status().dropped >= 2
    gaps = [round(b.ts - a.ts, 2) for (_, a), (_, b) in itertools.pairwise(received)]
    # two keyframes were not decoded (the due one, then the next, due instead); on the camera's grid
    # (sources.camera_phase) the first of them lay 2 or 3 s after the frame before
    assert any(3.5 <= g <= 5.5 for g in gaps), gaps
    assert all(g <= 5.5 for g in gaps), gaps
    # the schedule restarts from the frame taken: no catching up with the one refused, which would queue
    # two of the camera's frames a keyframe apart while the detector is behind
    assert all(g >= 1.5 for g in gaps), gaps


@pytest.mark.rtsp
def test_rtsp_server_killed_then_back(
    rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None
) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    src = open_source(rtsp_camera(srv.url("cam1")), threading.Event())
    c = Collector(src)
    assert c.wait_frames(2, 10)
    srv.kill()
    st, detect_s = wait_state(src, (SourceState.STALLED, SourceState.BACKOFF), STALL_S + 2)
    assert st.reason
    time.sleep(1.5)  # a few failed reconnects (connection refused)
    assert src.status().state in OFFLINE
    t_back = time.monotonic()
    srv.start()
    assert c.wait_frames(1, 10), f"no frames within 10 s of the server's return: {src.status()}"
    back_s = time.monotonic() - t_back
    st = src.status()
    assert st.state is SourceState.RUNNING and st.reconnects >= 1
    c.close()
    logging.getLogger(__name__).info(
        "kill detected in %.2f s; frames again %.2f s after restart", detect_s, back_s
    )


@pytest.mark.rtsp
def test_rtsp_hung_server_detected(
    rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None
) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    src = open_source(rtsp_camera(srv.url("cam1")), threading.Event())
    c = Collector(src)
    assert c.wait_frames(2, 10)
    srv.pause()
    try:
        st, detect_s = wait_state(src, (SourceState.STALLED, SourceState.BACKOFF), STALL_S + 2)
        assert st.reason and "no data" in st.reason
        # the blocked read gives up too: the source goes on to reconnect
        wait_state(src, (SourceState.BACKOFF, SourceState.CONNECTING), STALL_S + 3)
    finally:
        srv.resume()
    assert c.wait_frames(1, 12), f"no frames after the server resumed: {src.status()}"
    c.close()
    logging.getLogger(__name__).info("hang detected in %.2f s", detect_s)


@pytest.mark.rtsp
def test_rtsp_wrong_password_is_reported_masked(
    rtsp_server: Callable[..., Any],
    parking_clip: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    no_thread_leak: None,
) -> None:
    good, bad = "s3cr:t@pw/%x", "wr0ng:p@ss/%y"
    srv = rtsp_server({"cam1": parking_clip}, auth=("viewer", good))
    monkeypatch.setenv("PINGAN_T_GOOD", good)
    monkeypatch.setenv("PINGAN_T_BAD", bad)
    base = f"rtsp://viewer:{{pw}}@127.0.0.1:{srv.port}/cam1"
    cam_ok = rtsp_camera(base.format(pw="${PINGAN_T_GOOD}"), id="ok")
    cam_bad = rtsp_camera(base.format(pw="${PINGAN_T_BAD}"), id="bad")
    caplog.set_level(logging.DEBUG)
    redactor = Redactor()
    stop = threading.Event()
    bad_src, ok_src = open_source(cam_bad, stop, redactor), open_source(cam_ok, stop, redactor)
    c_bad, c_ok = Collector(bad_src), Collector(ok_src)
    try:
        wait_state(bad_src, (SourceState.BACKOFF,), 10)
        assert c_ok.wait_frames(2, 10)  # the other camera is unaffected
        # it keeps retrying (connecting, then backoff again): read its reason between two tries
        st, _ = wait_state(bad_src, (SourceState.BACKOFF,), 10)
        assert st.reason is not None and "authentication failed" in st.reason
        assert ok_src.status().state is SourceState.RUNNING
    finally:
        c_bad.close()
        c_ok.close()
    texts = [s.reason or "" for s in (st, bad_src.status(), ok_src.status())] + [caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    for secret in (good, bad, quote(good, safe=""), quote(bad, safe="")):
        for text in texts:
            assert secret not in text
    assert set(redactor.secrets) >= {good, bad, quote(good, safe=""), quote(bad, safe="")}


def test_frames_after_the_end_returns_at_once(parking_clip: Path) -> None:
    with Source(parking_clip, detect_fps=1.0, loop=False, realtime=False) as src:
        assert len(list(src.frames())) >= 9
        t = time.monotonic()
        assert list(src.frames()) == []
        assert time.monotonic() - t < 2


@pytest.mark.rtsp
def test_rtsp_status_fps_and_full_mode(
    rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None
) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    src = open_source(rtsp_camera(srv.url("cam1"), detect_fps=4.0), threading.Event())
    c = Collector(src)
    assert c.wait_frames(12, 10)  # above the keyframe rate: full decode, 4 of 10 frames a second
    st = src.status()
    assert 2.5 < st.fps < 5.5, st
    assert any(not f.keyframe for _, f in c.got)
    c.close()


@pytest.mark.rtsp
def test_stop_event_ends_backoff_and_hung_reads_promptly(
    rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None
) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    stop = threading.Event()
    src = open_source(rtsp_camera(srv.url("cam1"), backoff_max_s=30.0), stop)
    c = Collector(src)
    assert c.wait_frames(1, 10)
    srv.pause()  # a hung read: blocks until FFmpeg's socket timeout
    t = time.monotonic()
    stop.set()
    c.thread.join(STALL_S + 2)
    assert not c.thread.is_alive() and time.monotonic() - t < STALL_S + 2
    srv.resume()
    c.close()
    assert src.status().state is SourceState.STOPPED


@pytest.mark.rtsp
def test_close_during_long_backoff_is_prompt(
    rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None
) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    src = open_source(rtsp_camera(srv.url("cam1"), backoff_max_s=30.0), threading.Event())
    c = Collector(src)
    assert c.wait_frames(1, 10)
    srv.kill()
    wait_state(src, (SourceState.BACKOFF,), 3)
    time.sleep(2.5)  # a few refused reconnects: the backoff grows
    t = time.monotonic()
    c.close()
    assert time.monotonic() - t < 1.0


def test_short_looping_file_sampled_slower_than_it_lasts(clip_factory: Callable[..., Path]) -> None:
    clip = clip_factory("short_0.5s", seconds=0.5, fps=10, gop=5)
    src = Source(clip, detect_fps=0.5, loop=True, realtime=False)
    frames = []
    for f in src.frames():
        frames.append(f)
        if len(frames) == 4:
            break
    st = src.status()
    src.close()
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(frames)]
    assert all(1.9 < g < 2.2 for g in gaps), gaps
    assert st.state is SourceState.RUNNING and st.reconnects == 0


def test_undecodable_stream_is_given_up(parking_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import av.error
    import av.video.codeccontext as vcc

    def broken(self: Any, packet: Any = None) -> Any:
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(vcc.VideoCodecContext, "decode", broken)
    src = Source(parking_clip, detect_fps=10.0, loop=False, realtime=False, backoff_max_s=5.0)
    c = Collector(src)
    st, _ = wait_state(src, (SourceState.BACKOFF,), 5)
    assert st.reason is not None and "InvalidDataError" in st.reason
    c.close()
    assert c.count() == 0


VTEST_AVI = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.mark.skipif(not VTEST_AVI.exists(), reason="needs Debian's opencv-doc (scripts/setup-system.sh)")
def test_mpeg4_part2_avi_decodes(no_thread_leak: None) -> None:
    """msmpeg4 in AVI takes its picture size from the container: a decoder made afresh from the codec name
    alone decoded nothing, so the source kept retrying (found by the real-footage parking test)."""
    frames: list[Frame] = []
    with Source(VTEST_AVI, detect_fps=2.0, loop=False, realtime=False) as src:
        taker = threading.Thread(target=lambda: frames.extend(itertools.islice(src.frames(), 6)), daemon=True)
        taker.start()
        taker.join(15)
        status = src.status()
    assert len(frames) == 6, status
    assert frames[0].image.shape == (576, 768, 3)
    assert all(b.ts > a.ts for a, b in itertools.pairwise(frames))


def test_read_pause_only_when_caught_up_and_ends_before_the_next_keyframe() -> None:
    from pipeline.sources import _PAUSE_MARGIN_S, _read_pause

    # caught up (packet read 10 ms after capture), next keyframe 0.8 s away: the full pause
    assert _read_pause(100.0, 99.99, 100.8, 0.04, 0.2) == 0.2
    # the next keyframe is near: the pause ends the margin before it
    assert _read_pause(100.0, 99.99, 100.1, 0.04, 0.2) == pytest.approx(0.1 - _PAUSE_MARGIN_S)
    # too near to be worth a pause, or already behind the stream: none
    assert _read_pause(100.0, 99.99, 100.05, 0.04, 0.2) == 0.0
    assert _read_pause(100.0, 99.9, 100.8, 0.04, 0.2) == 0.0


def test_a_keyframe_is_stale_once_the_next_one_has_surely_arrived() -> None:
    from pipeline.sources import _STALE_MARGIN_S, _stale

    assert not _stale(100.0, 99.5, 1.0)  # half a second behind: still the newest keyframe
    assert not _stale(100.0, 100.0 - 1.0 - _STALE_MARGIN_S + 0.01, 1.0)
    assert _stale(100.0, 100.0 - 1.0 - _STALE_MARGIN_S - 0.01, 1.0)
    assert not _stale(100.0, 97.0, 4.0)  # a long GOP: 3 s behind is still within one interval


class _SlowDecoder:
    """A decoder that takes ``delay_s`` per keyframe, as on a box with more cameras than cores."""

    def __init__(self, cc: Any, delay_s: float) -> None:
        self._cc, self._delay_s = cc, delay_s

    def decode(self, pkt: Any) -> Any:
        time.sleep(self._delay_s)
        return self._cc.decode(pkt)


@pytest.mark.rtsp
def test_rtsp_reader_behind_its_stream_sheds_stale_keyframes_and_catches_up(
    rtsp_server: Callable[..., Any], parking_clip_25: Path, no_thread_leak: None
) -> None:
    # Each keyframe takes 1.4 s to decode, one arrives every second. Decoding every due keyframe from the
    # socket's backlog, the reader fell 0.4 s further behind with each (11 s behind on an overloaded
    # 2-core box, every result too late); shedding the stale ones keeps it within an interval or two.
    class SlowSource(Source):
        def _decoder(self, stream: Any, full: bool) -> Any:
            cc = super()._decoder(stream, full)
            return cc if full else _SlowDecoder(cc, 1.4)  # (until the interval is known, all are decoded)

    srv = rtsp_server({"cam1": parking_clip_25})
    src = SlowSource(srv.url("cam1"), camera_id="cam1", detect_fps=1.0, stall_timeout_s=6.0)
    received = receive(src, 8, 25)
    assert len(received) >= 6, src.status()
    lags = [round(got - f.ts, 2) for got, f in received[2:]]
    assert max(lags) < 3.0, f"the reader fell further and further behind (s): {lags}"
    assert src.status().dropped > 0  # the stale keyframes were shed, and counted


@pytest.mark.rtsp
def test_rtsp_camera_clock_slower_than_ours_is_not_taken_for_a_backlog(
    rtsp_server: Callable[..., Any], parking_clip_25: Path, no_thread_leak: None
) -> None:
    # Our clock runs 25 % fast against the camera's (a slow camera clock, exaggerated so that minutes of
    # drift fit in seconds). Anchored once per connection, every frame looked 0.25 s later per second of
    # stream: after ~5 s every keyframe was shed as stale and frames stopped. The anchor is a minimum over a
    # window (2 s here), so lateness stays within window × drift and nothing is shed.
    base = time.time()

    def fast(real: float | None = None) -> float:
        return base + ((time.time() if real is None else real) - base) * 1.25

    srv = rtsp_server({"cam1": parking_clip_25})
    src = Source(
        srv.url("cam1"),
        camera_id="cam1",
        detect_fps=1.0,
        stall_timeout_s=6.0,
        clock_window_s=2.0,
        wall_time=fast,
    )
    received = receive(src, 12, 20)
    assert len(received) >= 12, src.status()
    assert src.status().dropped == 0
    lags = [round(fast(got) - f.ts, 2) for got, f in received]
    assert max(lags[2:]) < 1.0, f"frames stamped later and later behind their capture (s): {lags}"


@pytest.mark.rtsp
def test_rtsp_camera_sending_no_video_over_a_live_session_is_reconnected(
    rtsp_server: Callable[..., Any],
    parking_clip: Path,
    no_thread_leak: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An encoder that hung behind a live RTSP stack: the session stays up and RTCP reports (every ~5 s) keep
    # the socket busy, so FFmpeg's socket timeout (8 s here) never ends the read. The reader stayed blocked
    # for good: its camera reported stalled and was never retried, and close() could not stop it. The
    # watchdog now shuts the stream's socket down and the reader reconnects.
    srv = rtsp_server({"cam1": parking_clip})
    src = Source(srv.url("cam1"), camera_id="cam1", detect_fps=2.0, stall_timeout_s=16.0, open_timeout_s=3.0)
    c = Collector(src)
    assert c.wait_frames(2, 10)
    srv.mute()
    try:
        end = time.monotonic() + 16 + 4
        while src.status().reconnects == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert src.status().reconnects >= 1, f"still blocked in the read: {src.status()}"
        assert "stalled (no data for 1" in caplog.text
        assert "no video for 1" in caplog.text  # why it reconnected, not "the server closed the connection"
    finally:
        srv.unmute()
    assert c.wait_frames(2, 15), f"no frames after the video came back: {src.status()}"
    c.close()


@pytest.mark.rtsp
def test_close_ends_a_read_stuck_on_a_stream_without_video(
    rtsp_server: Callable[..., Any], parking_clip: Path, no_thread_leak: None
) -> None:
    srv = rtsp_server({"cam1": parking_clip})
    src = Source(srv.url("cam1"), camera_id="cam1", detect_fps=2.0, stall_timeout_s=30.0)
    c = Collector(src)
    assert c.wait_frames(2, 10)
    srv.mute()
    time.sleep(1.0)  # the reader is now blocked in FFmpeg, reading RTCP reports
    t0 = time.monotonic()
    c.close()  # joins the reader: without shutting its socket down, that took open + 2 reads + 2 s
    assert time.monotonic() - t0 < 2.0
