"""The `pingan` command's model commands, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BUS = Path("/usr/share/doc/opencv-doc/opencv4/html/pexels_double_decker_bus.jpg")


def pingan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=240
    )


def test_models_list_and_verify() -> None:
    listed = pingan("models", "list")
    assert listed.returncode == 0, listed.stderr
    assert "vehicles:" in listed.stdout and "bins:" in listed.stdout and "licence=" in listed.stdout
    verified = pingan("models", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "vehicles: ok" in verified.stdout and "bins: ok" in verified.stdout


def test_detect_prints_json_lines_with_the_bus() -> None:
    if not BUS.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{BUS} missing (Debian opencv-doc)")
        pytest.skip(f"{BUS} missing")
    out = pingan("detect", "--model", "vehicles", str(BUS))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1
    vehicles = [d for d in rows[0]["detections"] if d["label"] == "vehicle"]
    assert vehicles and max(d["confidence"] for d in vehicles) > 0.6


def test_detect_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-media.txt"
    bad.write_text("hello", encoding="utf-8")
    out = pingan("detect", str(bad))
    assert out.returncode == 1
    assert "cannot read as image or video" in out.stderr and "Traceback" not in out.stderr


def test_models_eval_on_a_tiny_labelled_set(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from models.binsynth import write_dataset

    write_dataset(tmp_path / "ds", n_train=0, n_val=6, seed=123)
    out = pingan("models", "eval", "--model", "bins", "--data", str(tmp_path / "ds" / "data.yaml"))
    assert out.returncode == 0, out.stderr
    assert '"mAP50"' in out.stdout


def test_users_add_then_the_user_can_sign_in(tmp_path: Path) -> None:
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(
        f"storage: {{data_dir: {tmp_path / 'var'}}}\n"
        'cameras: [{id: c1, name: C1, source: {url: "rtsp://127.0.0.1/x"}}]\n',
        encoding="utf-8",
    )
    env = dict(os.environ, PINGAN_NEW_PASSWORD="a-long-enough-password")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "users",
            "add",
            "wang",
            "--role",
            "operator",
            "--scope",
            "c1",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "user wang (operator) added" in out.stdout

    from api.auth import verify_password
    from api.db import make_engine
    from api.settings import settings_from_config
    from api.store import Store
    from pipeline.config import load_config

    settings = settings_from_config(load_config(cfg))
    engine = make_engine(settings.database_url)
    try:
        user = Store(engine, settings.media_dir).user("wang")
        assert user is not None and user["role"] == "operator"
        assert verify_password(user["password_hash"], "a-long-enough-password")
    finally:
        engine.dispose()

    weak = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "users",
            "add",
            "li",
            "--role",
            "operator",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PINGAN_NEW_PASSWORD="short"),
    )
    assert weak.returncode != 0 and "Traceback" not in weak.stderr


def test_run_with_the_api_port_taken_exits_with_a_clear_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "cameras.yaml"
        cfg.write_text(
            f"api: {{host: 127.0.0.1, port: {port}}}\nstorage: {{data_dir: {tmp_path / 'var'}}}\n"
            'cameras: [{id: c1, name: C1, source: {url: "rtsp://127.0.0.1:9/x"}}]\n',
            encoding="utf-8",
        )
        env = dict(os.environ, PINGAN_ADMIN_PASSWORD="admin-password-123")
        out = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


SIGNAL_TO_A_WORKER_THREAD = """
import signal, threading, time
from pipeline.cli import _stop_on_signals, _wait_for_stop

stop = threading.Event()
_stop_on_signals(stop)

def camera_thread():
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the kernel gave SIGTERM to this thread

threading.Thread(target=camera_thread, daemon=True).start()
_wait_for_stop(stop)
print("stopped", flush=True)
"""


def test_sigterm_taken_by_another_thread_still_stops_the_main_one() -> None:
    # a plain stop.wait() in the main thread slept through it for ever (`pingan run` ignored SIGTERM in CI)
    out = subprocess.run(
        [sys.executable, "-c", SIGNAL_TO_A_WORKER_THREAD], capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr
