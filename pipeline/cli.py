"""The `pingan` command."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError, PinganError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="pingan: parking and bin analytics.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect and verify shipped models.")
users_app = typer.Typer(no_args_is_help=True, help="Manage dashboard users.")
app.add_typer(models_app, name="models")
app.add_typer(users_app, name="users")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: JSON results in benchmarks/results/.")
app.add_typer(bench_app, name="bench")

log = logging.getLogger("pingan")
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="cameras.yaml")]
ModelsOpt = Annotated[Path, typer.Option("--models-dir", help="folder with manifest.yaml")]
DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        for m in err.messages:
            typer.echo(m, err=True)
        raise typer.Exit(2) from None


def _logging(cfg: Config | None, verbose: bool = False) -> object:
    from pipeline.redact import Redactor

    secrets_: list[str] = []
    if cfg is not None:
        from pipeline.config import RtspSource

        for cam in cfg.cameras:
            for src in cam.streams():
                if isinstance(src, RtspSource):
                    secrets_ += src.secrets()
        if cfg.api.worker_key:
            secrets_.append(cfg.api.worker_key)
        secrets_ += [h.secret.get_secret_value() for h in cfg.webhooks]
    redactor = Redactor(secrets_)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor.filter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "httpcore", "libav", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor


def _ensure_worker_key(cfg: Config) -> None:
    """Worker and API share one key: env, config, or (embedded) one generated once in the data dir."""
    from api.settings import worker_key_for

    cfg.api.worker_key = worker_key_for(cfg)


def _ensure_admin(cfg: Config) -> None:
    """The embedded default has one admin: PINGAN_ADMIN_PASSWORD, or a generated password printed once."""
    from api.settings import settings_from_config
    from api.users import admin_exists, ensure_admin

    settings = settings_from_config(cfg)
    password = os.environ.get("PINGAN_ADMIN_PASSWORD")
    if password:
        ensure_admin(settings, password)
    elif not admin_exists(settings):
        password = secrets.token_urlsafe(12)
        ensure_admin(settings, password)
        typer.echo(f"dashboard user 'admin' created with password: {password}  (shown once)", err=True)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait_for_stop(stop: threading.Event) -> None:
    """Block the main thread until ``stop`` is set, waking now and then. Python runs signal handlers in the
    main thread only, and a signal the kernel hands to another thread (any thread may take a process's
    SIGTERM) does not interrupt a plain ``stop.wait()``: the handler would never run. CI caught that hang:
    ``pingan run`` with 4 cameras ignored SIGTERM for 30 s."""
    while not stop.wait(0.5):
        pass


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="cameras.yaml")] = Path("cameras.yaml")) -> None:
    """Validate a cameras.yaml; exit 2 with field path and line for each problem."""
    cfg = _load(path)
    zones = sum(len(c.zones) for c in cfg.cameras)
    typer.echo(f"{path}: ok ({len(cfg.cameras)} cameras, {zones} zones)")


@app.command()
def probe(
    config: ConfigOpt = Path("cameras.yaml"),
    camera: Annotated[list[str] | None, typer.Option("--camera", help="only these camera ids")] = None,
    seconds: Annotated[float, typer.Option(help="longest look at each stream")] = 8.0,
) -> None:
    """Demux each camera's streams for a few keyframes (nothing decoded) and print, as JSON lines, codec,
    size, frame rate, bitrate, keyframe interval, B-frames, and the decoding and detection rate its settings
    get there; exit 1 when a stream cannot be read."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.probe import probe_camera
    from pipeline.redact import Redactor

    cfg = _load(config)
    cams = [c for c in cfg.cameras if c.enabled and (not camera or c.id in camera)]
    unknown = sorted(set(camera or []) - {c.id for c in cfg.cameras})
    if unknown:
        typer.echo(f"unknown camera id(s): {', '.join(unknown)}", err=True)
        raise typer.Exit(2)
    failed = False
    # demuxing is I/O-bound: 8 cameras at a time keeps forty cameras' probe under a minute, in their order
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe") as pool:
        for rows in pool.map(lambda c: probe_camera(c, Redactor(), seconds), cams):
            for row in rows:
                failed |= not row.ok
                typer.echo(json.dumps(row.as_dict(), ensure_ascii=False))
    if failed:
        raise typer.Exit(1)


@app.command("config-schema")
def config_schema_cmd() -> None:
    """Print the JSON schema of cameras.yaml."""
    from pipeline.config import config_schema

    typer.echo(json.dumps(config_schema(), indent=2, ensure_ascii=False))


@app.command("verify-pack")
def verify_pack_cmd(
    files: Annotated[list[Path], typer.Argument(help="evidence pack(s): violation-<id>.zip")],
) -> None:
    """Check evidence packs (hashes, chain hash, ≥3 stills over the dwell, plate crop); exit 1 on failure."""
    from pipeline.evidence_pack import verify_pack

    failed = False
    for path in files:
        try:
            problems = verify_pack(path.read_bytes())
        except OSError as err:
            problems = [f"cannot read: {err.strerror or err}"]
        failed = failed or bool(problems)
        typer.echo(f"{path}: ok" if not problems else f"{path}: FAILED")
        for p in problems:
            typer.echo(f"  - {p}")
    if failed:
        raise typer.Exit(1)


def _uvicorn_server(cfg: Config):  # type: ignore[no-untyped-def]
    # api.server's Server ends open live (SSE) streams on exit; plain uvicorn would wait on them forever
    from api.server import create_server
    from api.settings import settings_from_config

    return create_server(settings_from_config(cfg), cfg.api.host, cfg.api.port, log_level="warning")


def _supervise(cfg: Config, camera_ids: list[str] | None, redactor: object, stop: threading.Event):  # type: ignore[no-untyped-def]
    from pipeline.supervisor import Supervisor

    cams = [c for c in cfg.cameras if c.enabled and (not camera_ids or c.id in camera_ids)]
    unknown = set(camera_ids or []) - {c.id for c in cfg.cameras}
    if unknown:
        typer.echo(f"unknown camera id(s): {', '.join(sorted(unknown))}", err=True)
        raise typer.Exit(2)
    sup = Supervisor(cfg, cams, stop, redactor, models_dir=DEFAULT_MODELS)  # type: ignore[arg-type]
    sup.start()
    return sup


def _wait_listening(server: object, thread: threading.Thread, cfg: Config, timeout_s: float = 60.0) -> None:
    """uvicorn reports a port it cannot bind by ending its thread: say so and stop, not run headless."""
    import time

    deadline = time.monotonic() + timeout_s
    while not getattr(server, "started", False):
        if not thread.is_alive():
            log.error("the API cannot listen on %s:%d (is the port in use?)", cfg.api.host, cfg.api.port)
            raise typer.Exit(1)
        if time.monotonic() > deadline:
            log.error("the API did not start within %.0f s", timeout_s)
            raise typer.Exit(1)
        time.sleep(0.05)


@app.command()
def run(config: ConfigOpt = Path("cameras.yaml"), verbose: bool = False) -> None:
    """Embedded default: the API and one worker per camera in this process."""
    cfg = _load(config)
    _ensure_worker_key(cfg)
    redactor = _logging(cfg, verbose)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        _ensure_admin(cfg)
        server = _uvicorn_server(cfg)
        api_thread = threading.Thread(target=server.run, name="api", daemon=True)
        api_thread.start()
        _wait_listening(server, api_thread, cfg)
        sup = _supervise(cfg, None, redactor, stop)
    except PinganError as err:
        log.error("%s", err)
        raise typer.Exit(1) from None
    log.info("dashboard: http://%s:%d/", cfg.api.host, cfg.api.port)
    _wait_for_stop(stop)
    sup.shutdown(timeout_s=8.0)  # workers first, so the outbox can still reach the API
    server.should_exit = True
    api_thread.join(5.0)
    log.info("stopped")


@app.command()
def api(config: ConfigOpt = Path("cameras.yaml"), verbose: bool = False) -> None:
    """Run only the API (several replicas may share one PostgreSQL)."""
    cfg = _load(config)
    _logging(cfg, verbose)
    if not (os.environ.get("PINGAN_WORKER_KEY") or cfg.api.worker_key):
        typer.echo("api: set api.worker_key or PINGAN_WORKER_KEY so workers can post events", err=True)
        raise typer.Exit(2)
    _ensure_worker_key(cfg)
    _uvicorn_server(cfg).run()


@app.command()
def worker(
    config: ConfigOpt = Path("cameras.yaml"),
    camera: Annotated[list[str] | None, typer.Option("--camera", help="camera id (repeatable)")] = None,
    verbose: bool = False,
) -> None:
    """Run camera workers only, posting to the API at api.url (or to NATS when bus.kind is nats)."""
    cfg = _load(config)
    if cfg.bus.kind == "http" and not (os.environ.get("PINGAN_WORKER_KEY") or cfg.api.worker_key):
        typer.echo("worker: set api.worker_key or PINGAN_WORKER_KEY", err=True)
        raise typer.Exit(2)
    _ensure_worker_key(cfg)
    redactor = _logging(cfg, verbose)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        sup = _supervise(cfg, camera, redactor, stop)
    except PinganError as err:
        log.error("%s", err)
        raise typer.Exit(1) from None
    _wait_for_stop(stop)
    sup.shutdown(timeout_s=8.0)


@app.command()
def detect(
    path: Annotated[Path, typer.Argument(help="image or video file")],
    model: Annotated[str, typer.Option("--model", help="model name in models/manifest.yaml")] = "vehicles",
    models_dir: ModelsOpt = DEFAULT_MODELS,
    every: Annotated[int, typer.Option(help="video: every n-th frame")] = 10,
    max_frames: Annotated[int, typer.Option(help="video: stop after this many frames")] = 100,
) -> None:
    """Print detections of an image or video as JSON lines."""
    import cv2

    from pipeline.detection import load_detector
    from pipeline.detections import LABELS

    try:
        det = load_detector(model, models_dir)
    except PinganError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None

    def emit(index: int, image: object) -> None:
        d = det.detect([image])[0]  # type: ignore[list-item]
        items = [
            {
                "label": LABELS[int(c)],
                "confidence": round(float(s), 3),
                "box_xyxy": [round(float(v), 1) for v in b],
            }
            for b, s, c in zip(d.xyxy, d.confidence, d.class_id, strict=True)
        ]
        typer.echo(json.dumps({"file": str(path), "frame": index, "detections": items}, ensure_ascii=False))

    image = cv2.imread(str(path))
    if image is not None:
        emit(0, image)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        typer.echo(f"{path}: cannot read as image or video", err=True)
        raise typer.Exit(1)
    try:
        i = 0
        while i < max_frames * every:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                emit(i, frame)
            i += 1
    finally:
        cap.release()


@app.command()
def demo(config: ConfigOpt = Path("cameras.yaml"), verbose: bool = False) -> None:
    """Prepare demo media offline, serve it over a local RTSP server, and run everything."""
    from pipeline.devtools.demo import demo_credentials, prepare_and_serve

    demo_credentials()
    cfg = _load(config)
    with prepare_and_serve(cfg):
        run(config=config, verbose=verbose)


@models_app.command("list")
def models_list(models_dir: ModelsOpt = DEFAULT_MODELS) -> None:
    """List shipped models with their classes, input size and licence."""
    from pipeline.manifest import load_manifest

    for name, entry in load_manifest(models_dir).models.items():
        typer.echo(
            f"{name}: {entry.file} {entry.input.width}x{entry.input.height} adapter={entry.adapter} "
            f"licence={entry.licence} classes={len(entry.classes)}"
        )


@models_app.command("verify")
def models_verify(models_dir: ModelsOpt = DEFAULT_MODELS) -> None:
    """Check every model file against its manifest sha256 and contract."""
    from pipeline.manifest import load_manifest, verify_model

    ok = True
    for name in load_manifest(models_dir).models:
        try:
            verify_model(name, models_dir)
            typer.echo(f"{name}: ok")
        except PinganError as err:
            ok = False
            typer.echo(f"{name}: {err}", err=True)
    if not ok:
        raise typer.Exit(1)


PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
ROOT = DEFAULT_MODELS.parent


def _train_python() -> str:
    """Training runs where ultralytics is (the `train` extra), never in the runtime's process."""
    venv_train = ROOT / ".venv-train" / "bin" / "python"
    return str(venv_train) if venv_train.exists() else sys.executable


def _run_module(python: str, module: str, args: list[str]) -> None:
    import subprocess

    code = subprocess.call([python, "-m", module, *args], cwd=ROOT)
    if code:
        raise typer.Exit(code)


@models_app.command("eval", context_settings=PASSTHROUGH)
def models_eval(ctx: typer.Context) -> None:
    """mAP50 / mAP50-95 per class on YOLO-format labels: --model NAME --data data.yaml [--split val]."""
    from pipeline.evaluate import main as evaluate_main

    evaluate_main(list(ctx.args))


@models_app.command("train", context_settings=PASSTHROUGH)
def models_train(ctx: typer.Context) -> None:
    """Train the bin model on your labelled data: --data data.yaml [--hours 0.8] (needs the `train` extra)."""
    _run_module(_train_python(), "models.train_bins", ["train", *ctx.args])


@models_app.command("export", context_settings=PASSTHROUGH)
def models_export(ctx: typer.Context) -> None:
    """Export YOLO weights to ONNX offline: --weights best.pt [--out models/x.onnx] (`train` extra)."""
    _run_module(_train_python(), "models.train_bins", ["export", *ctx.args])


@models_app.command("quantize", context_settings=PASSTHROUGH)
def models_quantize(ctx: typer.Context) -> None:
    """Static INT8 (QDQ, per-channel): `bins [--data data.yaml]` or `vehicles` (calibrated on real frames)."""
    args = list(ctx.args)
    if args and args[0] == "bins":
        _run_module(sys.executable, "models.train_bins", ["quantize", *args[1:]])
    else:
        _run_module(sys.executable, "models.quantize", args)


@users_app.command("add")
def users_add(
    username: str,
    role: Annotated[str, typer.Option(help="operator | police | admin")],
    config: ConfigOpt = Path("cameras.yaml"),
    scope: Annotated[list[str] | None, typer.Option(help="camera id or grid prefix (repeatable)")] = None,
) -> None:
    """Create a dashboard user; the password is read from the terminal (or PINGAN_NEW_PASSWORD)."""
    from api.settings import settings_from_config
    from api.users import add_user

    cfg = _load(config)
    _ensure_worker_key(cfg)
    password = os.environ.get("PINGAN_NEW_PASSWORD") or typer.prompt(
        "password", hide_input=True, confirmation_prompt=True
    )
    try:
        created = add_user(settings_from_config(cfg), username, password, role, scope or [])
    except ValueError as err:  # bad name, short password, unknown role or scope
        typer.echo(f"users add: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"user {username} ({role}) {'added' if created else 'updated'}")


# The benchmarks live in benchmarks/ (not on the runtime import path); their own argparse reads the options.
_PASS_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _bench(module: str, args: list[str]) -> None:
    import importlib

    bench = importlib.import_module(f"benchmarks.{module}")
    raise typer.Exit(bench.main(list(args)))


@bench_app.command("cameras", context_settings=_PASS_ARGS)
def bench_cameras(ctx: typer.Context) -> None:
    """Cameras per box at 1 detection/s: pingan vs a naive baseline over RTSP (--help for options)."""
    _bench("bench_cameras", ctx.args)


@bench_app.command("demux", context_settings=_PASS_ARGS)
def bench_demux(ctx: typer.Context) -> None:
    """What reading N RTSP cameras costs before decoding, by read-timeout mode and transport."""
    _bench("bench_demux", ctx.args)


@bench_app.command("detector", context_settings=_PASS_ARGS)
def bench_detector(ctx: typer.Context) -> None:
    """Detector throughput by batch size and execution provider (--help for options)."""
    _bench("bench_detector", ctx.args)


@bench_app.command("api", context_settings=_PASS_ARGS)
def bench_api(ctx: typer.Context) -> None:
    """API ingest rate and GET /api/events latency over 1,000,000 stored events (--help for options)."""
    _bench("bench_api", ctx.args)


@bench_app.command("all")
def bench_all() -> None:
    """Detector, API and cameras benchmarks with their default settings (tens of minutes)."""
    import importlib

    for module, args in (("bench_detector", []), ("bench_api", []), ("bench_cameras", ["--levers"])):
        code = importlib.import_module(f"benchmarks.{module}").main(args)
        if code:
            raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
