"""`pingan run` as a subprocess (own session, all output captured), with an admin client for its API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.api import _free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "admin-password-for-tests-1"
FIRE_LANE = (
    "{id: fire-lane-east, type: fire_lane, dwell_s: 6,"
    " polygon: [[622, 64], [738, 64], [738, 124], [622, 124]]}"
)


def camera_yaml(cam_id: str, url: str, zones: bool = True, **extra: Any) -> str:
    opts = {"detect_fps": 2, "stall_timeout_s": 3, "open_timeout_s": 3, "backoff_max_s": 2, **extra}
    lines = [f"  - id: {cam_id}", f"    name: {cam_id}", f'    source: {{url: "{url}"}}']
    lines += [f"    {k}: {v}" for k, v in opts.items()]
    if zones:
        lines.append(f"    zones: [{FIRE_LANE}]")
    return "\n".join(lines) + "\n"


class PinganRun:
    def __init__(
        self,
        tmp: Path,
        cameras: str,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        run_opts: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.data = tmp / "var"
        self.config = tmp / "cameras.yaml"
        self.config.write_text(
            "site: {id: rel, timezone: Asia/Shanghai, grid: fangshan/xilu/test}\n"
            f"api: {{host: 127.0.0.1, port: {self.port}}}\n"
            f"storage: {{data_dir: {self.data}}}\n"
            "cameras:\n" + cameras,
            encoding="utf-8",
        )
        self.log = tmp / "pingan.log"
        full_env = {
            **os.environ,
            "PINGAN_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        full_env.pop("PINGAN_WORKER_KEY", None)
        cmd = [
            sys.executable,
            "-m",
            *(args or ["pipeline.cli"]),
            "run",
            "--config",
            str(self.config),
            *run_opts,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"pingan exited ({self.proc.returncode}) waiting for {what}:\n{self.text()[-4000:]}"
                )
            try:
                value = fn()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{self.text()[-4000:]}")

    def start(self) -> PinganRun:
        self.wait_for("the API", lambda: self.client.get("/healthz").status_code == 200, 90)
        r = self.client.post("/api/token", json={"username": "admin", "password": ADMIN_PASSWORD})
        r.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        return self

    def get(self, path: str, **params: Any) -> Any:
        r = self.client.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def session_pids(self) -> set[int]:
        """Processes in pingan's session (it was started as a session leader), itself included."""
        out = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # session id; zombies are reaped
                out.add(int(d.name))
        return out

    def terminate(self, timeout_s: float = 30.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            rc = -999
        return rc, time.monotonic() - t0

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
