"""`make run`'s demo: prepare media offline and serve it over a local GStreamer RTSP server.

Media are real CCTV footage from Debian's opencv-doc (vtest.avi: vehicles parked by a building, pedestrians)
and a synthetic bin station rendered by the project's scene generator. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import Config, RtspSource

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SERVER = ROOT / "pipeline" / "devtools" / "rtsp_server.py"
DEMO_PORT = 8554


def transcode_h264(src: Path, dst: Path, gop: int) -> None:
    """H.264 with a fixed GOP so keyframe-only decoding yields a frame per GOP."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is missing: run `make system` (or apt-get install ffmpeg)")
    tmp = dst.with_suffix(".tmp.mp4")
    subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(gop),
            "-keyint_min",
            str(gop),
            "-sc_threshold",
            "0",
            "-movflags",
            "+faststart",
            str(tmp),
        ],
        check=True,
        timeout=300,
    )
    tmp.replace(dst)


def courtyard_clip(dst: Path) -> None:
    if not VTEST.exists():
        raise RuntimeError(f"{VTEST} is missing: run `make system` (Debian package opencv-doc)")
    transcode_h264(VTEST, dst, gop=10)  # vtest.avi is 10 fps: one keyframe a second


def bins_clip(dst: Path) -> None:
    spec = importlib.util.spec_from_file_location("pingan_binsynth", ROOT / "models" / "binsynth.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("models/binsynth.py is missing")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    mod.write_station_clip(dst, seed=7)


BUILDERS: dict[str, Callable[[Path], None]] = {"courtyard": courtyard_clip, "bins-north": bins_clip}


def prepare_media(names: list[str], media_dir: Path) -> dict[str, Path]:
    media_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in names:
        path = media_dir / f"{name}.mp4"
        if not path.exists():
            log.info("demo: preparing %s", path)
            try:
                BUILDERS[name](path)
            except Exception as err:  # one missing demo clip must not stop the other cameras
                log.warning("demo: cannot prepare %s: %s", name, err)
                continue
        out[name] = path
    return out


def _demo_streams(cfg: Config) -> list[str]:
    names = []
    for cam in cfg.cameras:
        if isinstance(cam.source, RtspSource):
            parts = urlsplit(cam.source.url.replace("${", "").replace("}", ""))
            if parts.hostname == "127.0.0.1" and parts.port == DEMO_PORT:
                name = parts.path.strip("/")
                if name in BUILDERS:
                    names.append(name)
    return names


def demo_credentials() -> None:
    """The demo cameras' RTSP credentials (cameras.yaml reads them from the environment like real ones)."""
    os.environ.setdefault("PINGAN_DEMO_USER", "demo")
    os.environ.setdefault("PINGAN_DEMO_PASSWORD", secrets.token_urlsafe(12))


@contextlib.contextmanager
def prepare_and_serve(cfg: Config) -> Iterator[None]:
    demo_credentials()
    media = prepare_media(_demo_streams(cfg), cfg.storage.data_dir / "demo")
    if not media:
        yield
        return
    python = "/usr/bin/python3"  # Debian's, which has GStreamer's RTSP server bindings
    args = [
        python,
        str(SERVER),
        "--host",
        "127.0.0.1",
        "--port",
        str(DEMO_PORT),
        "--user",
        os.environ["PINGAN_DEMO_USER"],
        "--password",
        os.environ["PINGAN_DEMO_PASSWORD"],
    ]
    args += [f"{name}={path}" for name, path in media.items()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.startswith("READY"):
                break
        if not line.startswith("READY"):
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"demo RTSP server did not start: {err.strip()[-500:]}")
        log.info("demo: RTSP server on 127.0.0.1:%d serving %s", DEMO_PORT, ", ".join(media))
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()
