"""Run the looping RTSP server (``rtsp_server.py``, Debian's /usr/bin/python3 + GstRtspServer) as a process.

``RtspServer(files, port=None, auth=None)``: ``.start()`` (waits for READY; again later: same port),
``.url(name, user=None, password=None)`` (credentials percent-encoded when given), ``.port``, ``.kill()``
(SIGKILL: the socket closes), ``.pause()`` (SIGSTOP: the socket stays open, nothing is sent — a hung camera) /
``.resume()`` (SIGCONT), ``.stop()`` (SIGTERM, then SIGKILL), ``.alive``. ``gst_rtsp_problem()`` says why the
server cannot run here (None when it can). Used by tests/fixtures/rtsp.py, the benchmarks and the demo.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"


@functools.cache
def gst_rtsp_problem() -> str | None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        apt = "apt: gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
        return f"{SYSTEM_PYTHON} lacks GstRtspServer ({apt}): {r.stderr[-300:]}"
    return None


class RtspServer:
    """One server process (its own session, so signals reach only it). Not thread-safe."""

    def __init__(
        self,
        files: Mapping[str, str | Path],
        port: int | None = None,
        auth: tuple[str, str] | None = None,
        log_dir: Path | None = None,
        host: str = "127.0.0.1",
        random_phase: bool = False,
    ) -> None:
        self.files = {name: Path(p) for name, p in files.items()}
        self.random_phase = random_phase  # each path starts at its own (repeatable) point of its clip
        self.host = host
        self.port = port or 0
        self.auth = auth
        self.log_dir = log_dir or Path(tempfile.gettempdir())
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    # ---- addresses
    def url(self, name: str, user: str | None = None, password: str | None = None) -> str:
        if name not in self.files:
            raise KeyError(name)
        cred = ""
        if user is not None:
            cred = (
                quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
            )
        return f"rtsp://{cred}{self.host}:{self.port}/{name}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- life cycle
    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start (or start again, on the same port once one was bound) and wait for READY."""
        if self.alive:
            return self
        self._reap()
        self._starts += 1
        out = self.log_dir / f"rtsp-{os.getpid()}-{id(self)}-{self._starts}.out"
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--host", self.host, "--port", str(self.port)]
        if self.random_phase:
            cmd.append("--random-phase")
        if self.auth:
            cmd += ["--user", self.auth[0], "--password", self.auth[1]]
        cmd += [f"{n}={p}" for n, p in self.files.items()]
        deadline = time.monotonic() + timeout
        while True:
            with out.open("wb") as fh:
                self._proc = subprocess.Popen(
                    cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                )
            while time.monotonic() < deadline:
                text = out.read_text(errors="replace")
                for line in text.splitlines():
                    if line.startswith("READY "):
                        self.port = int(line.rsplit(":", 1)[1])
                        return self
                if self._proc.poll() is not None:
                    break
                time.sleep(0.05)
            text = out.read_text(errors="replace")
            self._reap()
            # the old port may linger for a moment after a kill: retry until the deadline
            if time.monotonic() >= deadline or "cannot listen" not in text:
                raise RuntimeError(f"RTSP server did not start: {text[-2000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the process dies and its sockets close (a camera that goes away)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is sent or answered (a hung camera)."""
        assert self._proc is not None and self._proc.poll() is None, "server is not running"
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def mute(self) -> None:
        """SIGUSR1: sessions stay up and RTCP reports go on, but no video is sent (an encoder that hung)."""
        assert self._proc is not None and self._proc.poll() is None, "server is not running"
        os.kill(self._proc.pid, signal.SIGUSR1)

    def unmute(self) -> None:
        """SIGUSR2: video again, from where the clip would be by now."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGUSR2)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it was paused), then SIGKILL after 3 s."""
        p = self._proc
        if p is not None and p.poll() is None:
            p.terminate()
            os.kill(p.pid, signal.SIGCONT)
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
