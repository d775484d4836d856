"""Decode cost per camera (keyframe-only vs full), source fault timings, and the scene gate's cost.

    .venv/bin/python -m benchmarks.bench_decode [--clip vtest|synthetic|PATH] [--cameras 3] [--seconds 20]
        [--size 1280x720] [--fps 25] [--repeats 3] [--skip file,rtsp,faults,gate]

Parts (each one is written to the JSON result, with machine info, in benchmarks/results/):
- the clip: Debian's opencv-doc ``vtest.avi`` (real CCTV, 768×576, 10 fps) re-encoded to H.264 with GOP = fps
  (one keyframe a second), or a synthetic parking scene (compresses far better than real footage: cheaper).
- ``file``: PyAV decode of the clip: ms per frame for full decode with 1 and with
  2 threads (slice / frame), and ms per keyframe when only keyframes are handed to the decoder: FFmpeg's
  defaults (``keyframes_1thread``) and the readers' own decoder (``keyframes_pipeline_decoder``:
  ``pipeline.sources.make_decoder``, loop filter skipped), what a camera pays per detection.
- ``rtsp``: ``pipeline.sources.Source`` reading N cameras in real time from the local GStreamer RTSP server:
  process CPU (all threads) per camera as % of one core, for keyframe mode (detect_fps=1) and full decode
  (detect_fps=5, so every frame is decoded and 5 a second are converted to BGR).
- ``faults``: with stall_timeout_s=``--stall`` (3), backoff_max_s=2: seconds from SIGKILL of the server to an
  offline state, from the server's restart to the next frame, from SIGSTOP to an offline state, and from
  SIGCONT to the next frame (medians over ``--repeats``).
- ``gate``: ``SceneGate.changed`` ms per frame at 720p and 1080p (whole frame and one zone).
- ``convert``: a freshly decoded 1080p keyframe to BGR: PyAV's default (a swscale thread per core, started
  for every frame's own scaling context) against ``pipeline.sources.to_bgr`` (one thread): CPU and wall ms
  per frame, alternating rounds, medians.

The machine is shared (2 cores): figures are noisy; the load average is recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from pipeline.devtools.clips import make_clip, parking_scene
from pipeline.devtools.demo import VTEST, transcode_h264
from pipeline.devtools.rtsp import RtspServer, gst_rtsp_problem
from pipeline.gate import SceneGate
from pipeline.protocols import SourceState
from pipeline.sources import Source, drain, make_decoder, to_bgr

RESULTS = Path(__file__).resolve().parent / "results"
OFFLINE = (SourceState.STALLED, SourceState.BACKOFF, SourceState.CONNECTING)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "loadavg_start": os.getloadavg(),
    }


# ---- file decode -------------------------------------------------------------------------------------------


def bench_file(clip: Path) -> dict[str, Any]:
    def run(keyframes_only: bool, threads: int, thread_type: str) -> tuple[float, float, int]:
        with av.open(str(clip)) as c:
            st = c.streams.video[0]
            cc = st.codec_context
            cc.thread_count = threads
            cc.thread_type = thread_type
            if keyframes_only:
                cc.skip_frame = "NONKEY"
            cpu0, t0, n = time.process_time(), time.perf_counter(), 0
            for pkt in c.demux(st):
                if pkt.size == 0 or (keyframes_only and not pkt.is_keyframe):
                    continue
                n += len(cc.decode(pkt))
            n += len(cc.decode(None))
            return time.process_time() - cpu0, time.perf_counter() - t0, n

    out: dict[str, Any] = {}
    for name, kf, threads, ttype in (
        ("full_1thread", False, 1, "SLICE"),
        ("full_2threads_slice", False, 2, "SLICE"),
        ("full_2threads_frame", False, 2, "FRAME"),
        ("keyframes_1thread", True, 1, "SLICE"),
    ):
        runs = [run(kf, threads, ttype) for _ in range(3)]
        cpu, wall, n = min(runs, key=lambda r: r[0])
        out[name] = {
            "frames": n,
            "cpu_ms_per_frame": round(cpu / n * 1e3, 3),
            "wall_ms_per_frame": round(wall / n * 1e3, 3),
        }
    cpu, wall, n = min((run_pipeline_keyframes(clip) for _ in range(3)), key=lambda r: r[0])
    # what a camera's reader pays per detection at or below the keyframe rate (loop filter skipped)
    out["keyframes_pipeline_decoder"] = {
        "frames": n,
        "cpu_ms_per_frame": round(cpu / n * 1e3, 3),
        "wall_ms_per_frame": round(wall / n * 1e3, 3),
    }
    return out


def run_pipeline_keyframes(clip: Path) -> tuple[float, float, int]:
    """Keyframes only, through ``pipeline.sources.make_decoder`` as a reader decodes them (``drain``-ed when a
    keyframe gives nothing: B-frames); (CPU s, wall s, frames)."""
    with av.open(str(clip)) as c:
        st = c.streams.video[0]
        cc = make_decoder(st, full=False)
        cpu0, t0, n = time.process_time(), time.perf_counter(), 0
        for pkt in c.demux(st):
            if pkt.size == 0 or not pkt.is_keyframe:
                continue
            n += len(cc.decode(pkt) or drain(cc))
        return time.process_time() - cpu0, time.perf_counter() - t0, n


# ---- RTSP CPU per camera -----------------------------------------------------------------------------------


class Reader:
    def __init__(self, src: Source) -> None:
        self.src = src
        self.n = 0
        self.last = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        for _ in self.src.frames():
            self.n += 1
            self.last = time.monotonic()

    def close(self) -> None:
        self.src.close()
        self.thread.join(10)


def bench_rtsp(server: RtspServer, names: list[str], seconds: float, fps_clip: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, detect_fps in (("keyframes", 1.0), ("full", 5.0)):
        readers = [Reader(Source(server.url(n), camera_id=n, detect_fps=detect_fps)) for n in names]
        try:
            deadline = time.monotonic() + 15
            while any(r.n == 0 for r in readers) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.0)  # settle: keyframe interval learnt, mode chosen
            n0 = [r.n for r in readers]
            cpu0, t0 = time.process_time(), time.monotonic()
            time.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            got = [r.n - a for r, a in zip(readers, n0, strict=True)]
        finally:
            for r in readers:
                r.close()
        out[mode] = {
            "detect_fps": detect_fps,
            "cameras": len(names),
            "seconds": round(wall, 2),
            "cpu_percent_per_camera": round(100 * cpu / wall / len(names), 2),
            "cpu_s_per_camera_second": round(cpu / wall / len(names), 4),
            "frames_delivered_per_camera_second": round(statistics.mean(got) / wall, 2),
            "stream_fps": fps_clip,
        }
    return out


# ---- fault timings -----------------------------------------------------------------------------------------


def _until(pred: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def bench_faults(server: RtspServer, name: str, repeats: int, stall: float = 3.0) -> dict[str, Any]:
    src = Source(server.url(name), camera_id=name, detect_fps=2.0, stall_timeout_s=stall, backoff_max_s=2.0)
    r = Reader(src)
    rows: dict[str, list[float | None]] = {"kill_to_offline_s": [], "restart_to_frame_s": []}
    rows.update({"hang_to_offline_s": [], "resume_to_frame_s": []})
    try:
        _until(lambda: r.n > 0, 15)
        for _ in range(repeats):
            time.sleep(2.0)
            server.kill()
            rows["kill_to_offline_s"].append(_until(lambda: src.status().state in OFFLINE, stall + 5))
            time.sleep(2.0)
            n = r.n
            server.start()
            rows["restart_to_frame_s"].append(_until(lambda n=n: r.n > n, 15))  # type: ignore[misc]
            time.sleep(2.0)
            server.pause()
            rows["hang_to_offline_s"].append(_until(lambda: src.status().state in OFFLINE, stall + 5))
            time.sleep(1.0)
            n = r.n
            server.resume()
            rows["resume_to_frame_s"].append(_until(lambda n=n: r.n > n, 20))  # type: ignore[misc]
    finally:
        server.resume()
        r.close()
    out: dict[str, Any] = {"stall_timeout_s": stall, "backoff_max_s": 2.0, "repeats": repeats}
    for k, v in rows.items():
        ok = [x for x in v if x is not None]
        out[k] = {"median": round(statistics.median(ok), 3) if ok else None, "all": v}
    out["reconnects"] = src.status().reconnects
    return out


# ---- gate --------------------------------------------------------------------------------------------------


def bench_gate() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w, h in ((1280, 720), (1920, 1080)):
        img = parking_scene(0, 5.0, (w, h))
        zone = [(0.5 * w, 0.4 * h), (0.9 * w, 0.4 * h), (0.9 * w, 0.8 * h), (0.5 * w, 0.8 * h)]
        for label, zones in (("whole", []), ("zone", [zone])):
            g = SceneGate(zones, img.shape, refresh_s=1e9)
            g.changed(img, 0.0)
            t = time.perf_counter()
            for i in range(200):
                g.changed(img, 1.0 + i)
            out[f"{h}p_{label}_ms"] = round((time.perf_counter() - t) / 200 * 1e3, 3)
    return out


# ---- BGR conversion ----------------------------------------------------------------------------------------


def bench_convert(clip: Path, rounds: int = 7, frames: int = 48) -> dict[str, Any]:
    """CPU and wall ms to convert one freshly decoded keyframe (each frame converted once: a frame keeps its
    scaling context, so a second conversion of it would not pay what the pipeline pays)."""
    with av.open(str(clip)) as c:
        st = c.streams.video[0]
        keys = [p for p in c.demux(st) if p.is_keyframe and p.size]
        extradata = st.codec_context.extradata
        size = f"{st.width}x{st.height}"
    cc: Any = av.CodecContext.create("h264", "r")
    cc.extradata = extradata
    cc.thread_count = 1
    cc.skip_frame = "NONKEY"

    def fresh() -> list[Any]:
        out: list[Any] = []
        while len(out) < frames:
            for p in keys:
                out += cc.decode(p)
        return out[:frames]

    ways: dict[str, Callable[[Any], Any]] = {
        "pyav_default": lambda f: f.to_ndarray(format="bgr24"),
        "to_bgr_1_thread": to_bgr,
    }
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            batch = fresh()
            cpu0, t0 = time.process_time(), time.perf_counter()
            for f in batch:
                fn(f)
            got[name].append(((time.process_time() - cpu0) / frames, (time.perf_counter() - t0) / frames))
    out: dict[str, Any] = {"size": size, "frames_per_round": frames, "rounds": rounds}
    for name, runs in got.items():
        out[name] = {
            "cpu_ms_per_frame": round(statistics.median(r[0] for r in runs) * 1e3, 3),
            "wall_ms_per_frame": round(statistics.median(r[1] for r in runs) * 1e3, 3),
        }
    out["cpu_ratio_default_to_1_thread"] = round(
        out["pyav_default"]["cpu_ms_per_frame"] / max(out["to_bgr_1_thread"]["cpu_ms_per_frame"], 1e-9), 2
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clip", default=None, help="vtest (default when present) | synthetic | PATH")
    ap.add_argument("--size", default="1280x720", help="of the synthetic clip")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stall", type=float, default=3.0, help="stall_timeout_s for the fault timings")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: file,rtsp,faults,gate,convert")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    w, h = (int(x) for x in args.size.lower().split("x"))

    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result: dict[str, Any] = {"benchmark": "bench_decode", "at": at, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        clip_arg = args.clip or ("vtest" if VTEST.exists() else "synthetic")
        if clip_arg == "synthetic":
            clip = make_clip(Path(tmp) / "clip.mp4", seconds=10, fps=args.fps, size=(w, h), gop=args.fps)
        else:
            src = VTEST if clip_arg == "vtest" else Path(clip_arg)
            with av.open(str(src)) as c:
                rate = c.streams.video[0].average_rate
            clip = Path(tmp) / "clip.mp4"
            transcode_h264(src, clip, round(float(rate)) if rate else 25)
        with av.open(str(clip)) as c:
            st = c.streams.video[0]
            fps = round(float(st.average_rate or args.fps))
            result["clip"] = {
                "source": clip_arg,
                "size": f"{st.width}x{st.height}",
                "fps": fps,
                "gop_frames": fps,
                "seconds": round(float(c.duration or 0) / 1e6, 1),
                "codec": "libx264",
            }
        if "file" not in skip:
            result["file"] = bench_file(clip)
            print("file", json.dumps(result["file"]), flush=True)
        if "convert" not in skip:
            big = make_clip(Path(tmp) / "clip-1080p.mp4", seconds=4, fps=25, size=(1920, 1080), gop=25)
            result["convert"] = bench_convert(big)
            print("convert", json.dumps(result["convert"]), flush=True)
        if "gate" not in skip:
            result["gate"] = bench_gate()
            print("gate", json.dumps(result["gate"]), flush=True)
        need_server = not {"rtsp", "faults"} <= skip
        problem = gst_rtsp_problem() if need_server else None
        if need_server and problem:
            result["rtsp_error"] = problem
        elif need_server:
            names = [f"cam{i}" for i in range(max(1, args.cameras))]
            server = RtspServer(dict.fromkeys(names, clip), log_dir=Path(tmp)).start()
            try:
                if "rtsp" not in skip:
                    result["rtsp"] = bench_rtsp(server, names, args.seconds, fps)
                    print("rtsp", json.dumps(result["rtsp"]), flush=True)
                if "faults" not in skip:
                    result["faults"] = bench_faults(server, names[0], args.repeats, args.stall)
                    print("faults", json.dumps(result["faults"]), flush=True)
            finally:
                server.stop()
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out or RESULTS / f"bench_decode-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
