"""API throughput: events ingested per second, and ``GET /api/events`` latency over 1,000,000 stored events.

    pingan bench api [--quick] [--events 1000000] [--database-url postgresql+psycopg://…] [--out FILE]

1. Pre-fills a fresh database (SQLite file in ``var/bench/``; with ``--database-url``, a new database
   ``pingan_bench_<pid>`` created on that PostgreSQL server and dropped afterwards) with ``--events`` events
   **in bulk through the store's tables** (``api.store.events_t`` / ``messages_t``, SQLAlchemy Core
   ``INSERT … executemany`` in chunks) after the Alembic migration — not via HTTP; the JSON says so.
   Events spread over the past year on 50 cameras, 70 % illegal parking / 30 % bin overflow, each with its
   open message in ``event_messages`` (the de-duplication table that every ingest consults).
2. Starts the real app (``api.server.create_server``: uvicorn, one process) in a sub-process.
3. ``GET /api/events`` latency (sequential requests, as a dashboard or police client makes them): newest page,
   by camera, by type, by a one-day time range, and following ``next_cursor`` ten pages deep; p50/p95 ms.
4. Ingest, one event per request: ``--clients`` concurrent httpx clients POST new events
   (``POST /api/events``, worker key) for ``--ingest-s`` seconds; events/s, request p50/p95, errors, and the
   server process's CPU cores.
5. Ingest in batches, same run and server: ``--batch-clients`` clients POST ``--batch-size`` new events per
   request (``POST /api/events/batch``, as a worker's outbox sends a backlog) for ``--ingest-s`` seconds;
   the same figures, and the ratio of the two events/s.

Clients and server share this machine's cores; the machine's load is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE_DIR,
    ROOT,
    CpuWindow,
    loadavg,
    machine_info,
    note,
    now_iso,
    percentile,
    result_path,
    write_json,
)

CAMERAS = [f"cam-{i:03d}" for i in range(50)]
GRID = "fangshan/xilu/haiyi-bandao"
ADMIN = "bench-admin"


@dataclass
class Options:
    quick: bool = False
    events: int = 1_000_000
    chunk: int = 20_000
    clients: int = 8
    batch_clients: int = 4
    batch_size: int = 100
    ingest_s: float = 20.0
    get_requests: int = 50
    database_url: str | None = None
    keep_db: bool = False
    out: Path | None = None
    work_dir: Path | None = None


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def wire(started: datetime, camera: str, rng: random.Random, seq: int = 0) -> dict[str, Any]:
    """A valid v1 wire message (JSON-ready) for an event opened at ``started``."""
    from pipeline.ids import uuid7

    parking = rng.random() < 0.7
    n = int(camera[-3:])
    x1, y1 = rng.randrange(0, 1600), rng.randrange(0, 800)
    return {
        "id": str(uuid7(int(started.timestamp() * 1000))),
        "type": "illegal_parking" if parking else "bin_overflow",
        "state": "open",
        "camera_id": camera,
        "zone_id": "fire-lane-1" if parking else "station-1",
        "started_at": _iso(started),
        "updated_at": _iso(started + timedelta(seconds=65)),
        "dwell_s": 65.0,
        "object": {
            "label": "vehicle" if parking else "bin_overflow",
            "track_id": rng.randrange(1, 10_000),
            "confidence": round(rng.uniform(0.4, 0.99), 3),
            "box_xyxy": [x1, y1, x1 + rng.randrange(40, 300), y1 + rng.randrange(40, 250)],
        },
        "evidence": [],
        "grid": f"{GRID}/{n:04d}",
        "seq": seq,
    }


# ---- database ----------------------------------------------------------------------------------------------


def _pg_create(url: str) -> tuple[str, str]:
    """Create ``pingan_bench_<pid>`` on the server of ``url``; returns (its url, its name)."""
    from sqlalchemy import create_engine, make_url, text

    u = make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    name = f"pingan_bench_{os.getpid()}"
    admin = create_engine(u, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return u.set(database=name).render_as_string(hide_password=False), name


def _pg_drop(url: str, name: str) -> None:
    from sqlalchemy import create_engine, make_url, text

    u = make_url(url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    admin = create_engine(u, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fill(database_url: str, n: int, chunk: int, seed: int = 1) -> dict[str, Any]:
    """Migrate, then bulk-insert ``n`` events (and their open messages) through the store's tables."""
    from sqlalchemy import insert

    from api.db import make_engine, migrate
    from api.store import events_t, messages_t

    engine = make_engine(database_url)
    migrate(engine)
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    span_s = 365 * 86400
    t0 = time.perf_counter()
    done = 0
    try:
        first = now - timedelta(hours=1) - timedelta(seconds=span_s)
        step = span_s / max(1, n)
        while done < n:
            k = min(chunk, n - done)
            ev_rows, msg_rows = [], []
            for j in range(done, done + k):  # in time order, as a store fills: appends to the indexes
                started = first + timedelta(seconds=(j + rng.random()) * step)
                w = wire(started, rng.choice(CAMERAS), rng)
                ev_rows.append(
                    {
                        "id": w["id"],
                        "type": w["type"],
                        "state": "open",
                        "camera_id": w["camera_id"],
                        "zone_id": w["zone_id"],
                        "grid": w["grid"],
                        "started_at": started,
                        "updated_at": started + timedelta(seconds=65),
                        "ended_at": None,
                        "dwell_s": 65.0,
                        "seq": 0,
                        "payload": w,
                        "disposition": "new",
                        "disposition_at": None,
                        "created_at": now,
                        "received_at": now,
                    }
                )
                msg_rows.append(
                    {
                        "event_id": w["id"],
                        "seq": 0,
                        "state": "open",
                        "payload": w,
                        "received_at": now,
                        "worker": "bench-fill",
                    }
                )
            with engine.connect() as c:
                c = c.execution_options(pingan_write=True)
                with c.begin():
                    c.execute(insert(events_t), ev_rows)
                    c.execute(insert(messages_t), msg_rows)
            done += k
            if done % (chunk * 10) == 0 or done == n:
                note(f"filled {done:,} / {n:,} events ({done / (time.perf_counter() - t0):,.0f}/s)")
    finally:
        engine.dispose()
    secs = time.perf_counter() - t0
    return {
        "events": n,
        "messages": n,
        "seconds": secs,
        "events_per_s": n / max(secs, 1e-9),
        "method": "bulk SQLAlchemy Core INSERT (executemany, chunks of "
        f"{chunk:,}) into api.store's events/event_messages tables after the Alembic migration; not via HTTP",
        "distribution": "started_at spread evenly over the past 365 days, inserted in time order; "
        f"{len(CAMERAS)} cameras; 70 % illegal_parking / 30 % bin_overflow; state open",
    }


def _db_size_mib(database_url: str) -> float | None:
    if database_url.startswith("sqlite"):
        path = Path(database_url.split("///", 1)[1])
        files = [path, path.with_name(path.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 2**20
    with contextlib.suppress(Exception):
        from sqlalchemy import create_engine, text

        eng = create_engine(database_url)
        with eng.connect() as c:
            size = c.execute(text("SELECT pg_database_size(current_database())")).scalar()
        eng.dispose()
        return float(size or 0) / 2**20
    return None


# ---- the server --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(conf: dict[str, Any]) -> Any:
    from pydantic import SecretStr

    from api.settings import CameraInfo, Settings, WorkerKey

    return Settings.model_validate(
        {
            "database_url": conf["database_url"],
            "media_dir": Path(conf["media_dir"]),
            "secret": SecretStr(conf["secret"]),
            "worker_keys": [WorkerKey(name="bench-worker", key=SecretStr(conf["worker_key"]), cameras=None)],
            "cameras": [
                CameraInfo(id=c, name=c, grid=f"{GRID}/{i:04d}")
                for i, c in enumerate(conf.get("cameras", CAMERAS))
            ],
        }
    )


def serve_main(conf_path: str) -> int:
    from api.server import create_server

    conf = json.loads(Path(conf_path).read_text())
    server = create_server(
        _settings(conf), host="127.0.0.1", port=int(conf["port"]), log_level="warning", access_log=False
    )
    server.run()
    return 0


class ApiProcess:
    def __init__(self, conf: dict[str, Any], work: Path) -> None:
        self.conf, self.work = conf, work
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{conf['port']}"

    def start(self, timeout_s: float = 60.0) -> ApiProcess:
        import httpx

        conf_path = self.work / "server.json"
        conf_path.write_text(json.dumps(self.conf))
        os.chmod(conf_path, 0o600)
        with (self.work / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_api", "--serve", str(conf_path)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise SystemExit(
            f"API did not start: {(self.work / 'server.log').read_text(errors='replace')[-1500:]}"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# ---- measurements ------------------------------------------------------------------------------------------


def get_latency(base: str, token: str, requests: int) -> dict[str, Any]:
    import httpx

    now = datetime.now(UTC)
    day = now - timedelta(days=30)
    queries: dict[str, dict[str, Any]] = {
        "newest_page": {"limit": 50},
        "by_camera": {"camera_id": "cam-007", "limit": 50},
        "by_type": {"type": "bin_overflow", "limit": 50},
        "one_day_range": {"since": _iso(day), "until": _iso(day + timedelta(days=1)), "limit": 50},
    }
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        client.get("/api/events", params={"limit": 1}).raise_for_status()  # warm the connection and caches
        for name, params in queries.items():
            ms: list[float] = []
            items = 0
            for _ in range(requests):
                t0 = time.perf_counter()
                r = client.get("/api/events", params=params)
                ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                items = len(r.json()["items"])
            out[name] = {
                "params": params,
                "n": len(ms),
                "items": items,
                "p50_ms": percentile(ms, 50),
                "p95_ms": percentile(ms, 95),
            }
        ms = []
        pages = 0
        for _ in range(max(1, requests // 10)):
            cursor = None
            for _page in range(10):
                params2: dict[str, Any] = {"limit": 50} | ({"cursor": cursor} if cursor else {})
                t0 = time.perf_counter()
                r = client.get("/api/events", params=params2)
                ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                cursor = r.json()["next_cursor"]
                pages += 1
                if not cursor:
                    break
        out["cursor_10_pages"] = {
            "n": len(ms),
            "pages": pages,
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
        }
    return out


async def _ingest(base: str, key: str, clients: int, seconds: float, batch: int = 1) -> dict[str, Any]:
    """``batch`` 1: one event per ``POST /api/events``; more: that many per ``POST /api/events/batch``."""
    import httpx

    rng = random.Random(7)
    lat: list[float] = []
    status: dict[str, int] = {}
    items: dict[str, int] = {}
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    async def client_loop() -> None:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            while time.monotonic() < stop_at:
                started = datetime.now(UTC) - timedelta(seconds=70)
                bodies = [wire(started, rng.choice(CAMERAS), rng) for _ in range(batch)]
                t0 = time.perf_counter()
                try:
                    if batch == 1:
                        r = await c.post("/api/events", json=bodies[0])
                    else:
                        r = await c.post("/api/events/batch", json={"events": bodies})
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}: {err}"[:200])
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
                status[str(r.status_code)] = status.get(str(r.status_code), 0) + 1
                if batch == 1 and r.status_code == 201:
                    items["created"] = items.get("created", 0) + 1
                elif batch > 1 and r.status_code == 200:
                    for k, n in r.json()["counts"].items():
                        items[k] = items.get(k, 0) + n

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    wall = time.perf_counter() - t0
    created = items.get("created", 0)
    return {
        "route": "POST /api/events" if batch == 1 else "POST /api/events/batch",
        "clients": clients,
        "events_per_request": batch,
        "seconds": wall,
        "events_per_s": created / wall,
        "requests": sum(status.values()),
        "status_counts": status,
        "event_counts": items,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
    }


def launch(db_url: str, work: Path, cameras: list[str] | None = None) -> tuple[ApiProcess, str]:
    """Start the API on ``db_url`` (migrated here if new) with an admin user; (server, admin bearer token).
    The worker key is ``server.conf["worker_key"]`` (scoped to every camera)."""
    import httpx

    from api.auth import hash_password
    from api.db import make_engine, migrate
    from api.store import Store

    work.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    engine = make_engine(db_url)
    try:
        migrate(engine)
        Store(engine, work / "media").upsert_user(ADMIN, hash_password(password), "admin", None, None)
    finally:
        engine.dispose()
    conf: dict[str, Any] = {
        "database_url": db_url,
        "media_dir": str(work / "media"),
        "secret": secrets.token_urlsafe(48),
        "worker_key": secrets.token_urlsafe(32),
        "port": _free_port(),
        "cameras": cameras or CAMERAS,
    }
    api = ApiProcess(conf, work).start()
    try:
        r = httpx.post(api.base + "/api/token", json={"username": ADMIN, "password": password}, timeout=30)
        r.raise_for_status()
    except BaseException:
        api.stop()
        raise
    return api, str(r.json()["access_token"])


def run(opts: Options) -> dict[str, Any]:
    if opts.quick:
        opts.events = min(opts.events, 5_000)
        opts.chunk = min(opts.chunk, 2_500)
        opts.ingest_s = min(opts.ingest_s, 3.0)
        opts.get_requests = min(opts.get_requests, 10)
        opts.clients = min(opts.clients, 4)
        opts.batch_clients = min(opts.batch_clients, 2)
    started = now_iso()
    info = machine_info()
    work = (opts.work_dir or CACHE_DIR) / f"api-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    pg_name = None
    if opts.database_url:
        db_url, pg_name = _pg_create(opts.database_url)
        backend = "postgresql"
    else:
        db_url, backend = f"sqlite:///{work / 'api.db'}", "sqlite"
    try:
        note(f"filling {opts.events:,} events into {backend} …")
        filled = fill(db_url, opts.events, opts.chunk)
        api, token = launch(db_url, work)
        conf = api.conf
        try:
            note("GET /api/events latency …")
            gets = get_latency(api.base, token, opts.get_requests)
            note(f"ingest: {opts.clients} clients for {opts.ingest_s:g} s …")
            cpu = CpuWindow(api.pid).start()
            ingest = asyncio.run(_ingest(api.base, conf["worker_key"], opts.clients, opts.ingest_s))
            ingest["server_cpu_cores"] = cpu.cores()
            note(
                f"batch ingest: {opts.batch_clients} clients × {opts.batch_size} events, {opts.ingest_s:g} s"
            )
            cpu = CpuWindow(api.pid).start()
            batched = asyncio.run(
                _ingest(api.base, conf["worker_key"], opts.batch_clients, opts.ingest_s, opts.batch_size)
            )
            batched["server_cpu_cores"] = cpu.cores()
        finally:
            api.stop()
        note("API stopped")
        size = _db_size_mib(db_url)
    finally:
        if pg_name and not opts.keep_db and opts.database_url:
            _pg_drop(opts.database_url, pg_name)
        if not opts.keep_db:
            shutil.rmtree(work, ignore_errors=True)
    ratio = batched["events_per_s"] / max(ingest["events_per_s"], 1e-9)
    note(
        f"ingest {ingest['events_per_s']:.0f} events/s single, {batched['events_per_s']:.0f} events/s in "
        f"batches of {opts.batch_size} ({ratio:.1f}×); GET newest p95 {gets['newest_page']['p95_ms']:.1f} ms"
    )
    return {
        "bench": "api",
        "started": started,
        "finished": now_iso(),
        "command": "pingan bench api"
        + (" --quick" if opts.quick else "")
        + (" --database-url …" if opts.database_url else ""),
        "quick": opts.quick,
        "machine": info,
        "loadavg_at_end": loadavg(),
        "database": {"backend": backend, "size_mib_after": size, "kept": opts.keep_db},
        "server": "api.server.create_server (uvicorn, 1 process, no access log), a sub-process on 127.0.0.1",
        "fill": filled,
        "get_events": gets,
        "ingest": ingest,
        "ingest_batch": batched,
        "ingest_batch_over_single": ratio,
        "notes": "clients (httpx, asyncio) and server share the machine's cores; GETs are sequential "
        "requests by one admin client (bearer token); ingest posts new open events with the worker key, "
        "one per request (ingest) and in batches (ingest_batch), one after the other on the same server",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="pingan bench api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Options()
    ap.add_argument("--quick", action="store_true", help="5,000 events, 3 s of ingest")
    ap.add_argument("--events", type=int, default=d.events, help="events to pre-fill")
    ap.add_argument("--chunk", type=int, default=d.chunk, help="rows per bulk INSERT")
    ap.add_argument("--clients", type=int, default=d.clients, help="concurrent ingest clients")
    ap.add_argument("--batch-clients", type=int, default=d.batch_clients, help="concurrent batch clients")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="events per batch request (≤ 500)")
    ap.add_argument("--ingest-s", type=float, default=d.ingest_s)
    ap.add_argument("--get-requests", type=int, default=d.get_requests, help="requests per GET query kind")
    ap.add_argument("--database-url", help="PostgreSQL server: a fresh database is created there and dropped")
    ap.add_argument("--keep-db", action="store_true", help="keep the filled database")
    ap.add_argument("--work-dir", type=Path, default=None, help="for the SQLite file (default var/bench/)")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON file or folder (default benchmarks/results/)"
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve_main(args.serve)
    opts = Options(**{k: v for k, v in vars(args).items() if k != "serve"})
    payload = run(opts)
    payload["command"] = " ".join(["pingan bench api", *(sys.argv[1:] if argv is None else argv)])
    path = write_json(result_path("api", opts.out, quick=opts.quick), payload)
    note(f"wrote {path}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
