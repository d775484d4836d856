"""``pingan probe``: what each configured camera sends, and what that will cost, before the box runs it.

An installer adding forty cameras wants to know, camera by camera, whether keyframes alone will serve its
``detect_fps`` (cheap) or every frame must be decoded (~4× the CPU: README, "Long keyframe intervals"), and
which credentials or paths are wrong. A probe opens each stream as the readers do (``open_rtsp``), demuxes
for a few keyframes without decoding anything, and reports codec, size, frame rate, bitrate, keyframe
interval, B-frames, and the decoding and detection rate the camera's settings will get. URLs are masked.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any

import av

from pipeline.config import Camera, FileSource, RtspSource
from pipeline.redact import Redactor, mask_url
from pipeline.sources import describe_fault, keyframes_suffice, open_rtsp


@dataclass(frozen=True, slots=True)
class StreamProbe:
    camera: str
    stream: str  # "source" | "detect_source"
    url: str  # credential-masked
    ok: bool
    error: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    bitrate_kbps: float | None = None
    keyframe_interval_s: float | None = None  # None: fewer than two keyframes in the probe
    b_frames: bool | None = None
    # what the camera's settings get on this stream (the detected one; a main stream beside a sub-stream is
    # only demuxed): "keyframes" | "every_frame" | "evidence_only"
    decode: str | None = None
    detections_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def plan(camera: Camera, key_iv_s: float | None) -> tuple[str | None, float | None]:
    """(decoding, detections per second) the camera's ``detect_fps`` and ``min_detect_fps`` get from
    keyframes every ``key_iv_s`` (``pipeline.sources`` decides the same way)."""
    if key_iv_s is None or key_iv_s <= 0:
        return None, None
    key_rate = 1.0 / key_iv_s
    if key_rate >= camera.detect_fps:
        return "keyframes", camera.detect_fps
    if keyframes_suffice(key_iv_s, camera.keyframe_floor_fps()):
        return "keyframes", round(key_rate, 3)
    return "every_frame", camera.detect_fps


def probe_stream(
    camera: Camera,
    which: str,
    redactor: Redactor,
    seconds: float = 8.0,
    keyframes: int = 3,
) -> StreamProbe:
    """Demux one of ``camera``'s streams for up to ``keyframes`` keyframe intervals or ``seconds`` (stream
    time, and wall time for a live stream), decoding nothing."""
    src = camera.source if which == "source" else camera.detect_source
    assert src is not None
    is_file = isinstance(src, FileSource)
    if isinstance(src, RtspSource):
        redactor.add(*src.secrets())
        target, shown = src.resolved(), mask_url(src.resolved())
    else:
        assert isinstance(src, FileSource)
        target = shown = str(src.path)
    read_s = max(0.5, camera.stall_timeout_s / 2)
    phase = "open"
    try:
        if isinstance(src, RtspSource):
            container = open_rtsp(target, src.transport, camera.open_timeout_s, read_s)
        else:
            container = av.open(target)
        phase = "read"
        with container:
            stream = container.streams.video[0]
            cc = stream.codec_context
            tb = float(stream.time_base)
            keys: list[float] = []
            first: float | None = None
            last = 0.0
            size = 0
            b_frames = False
            prev_pts: int | None = None
            deadline = time.monotonic() + seconds + camera.open_timeout_s
            for pkt in container.demux(stream):
                pts = pkt.pts if pkt.pts is not None else pkt.dts
                if pts is None:
                    continue
                t = pts * tb
                first = t if first is None else first
                last = max(last, t)
                size += pkt.size
                if prev_pts is not None and pts < prev_pts:
                    b_frames = True  # presented before a packet demuxed earlier: reordered
                prev_pts = pts
                if pkt.is_keyframe:
                    keys.append(t)
                if len(keys) > keyframes or t - first >= seconds or time.monotonic() > deadline:
                    break
            rate = stream.average_rate or stream.guessed_rate
            span = last - first if first is not None else 0.0
            ivs = [b - a for a, b in itertools.pairwise(keys)]
            key_iv = round(sum(ivs) / len(ivs), 3) if ivs else None
            name, width, height = cc.name, cc.width, cc.height
    except Exception as err:  # the probe reports every stream; one failing says why and the rest go on
        why = describe_fault(err, phase, is_file, camera.open_timeout_s, read_s)
        return StreamProbe(camera.id, which, shown, ok=False, error=redactor.redact(why))
    decode: str | None = "evidence_only"
    per_s: float | None = None
    if which == "detect_source" or camera.detect_source is None:
        decode, per_s = plan(camera, key_iv)
    return StreamProbe(
        camera.id,
        which,
        shown,
        ok=True,
        codec=name,
        width=width,
        height=height,
        fps=round(float(rate), 3) if rate else None,
        bitrate_kbps=round(size * 8 / span / 1000, 1) if span > 0 else None,
        keyframe_interval_s=key_iv,
        b_frames=b_frames,
        decode=decode,
        detections_per_s=per_s,
    )


def probe_camera(camera: Camera, redactor: Redactor, seconds: float = 8.0) -> list[StreamProbe]:
    """Every stream of ``camera``: the main one, then its detection sub-stream where it has one."""
    names = ["source"] + (["detect_source"] if camera.detect_source is not None else [])
    return [probe_stream(camera, n, redactor, seconds) for n in names]
