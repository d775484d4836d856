"""District bus throughput: events/s end to end through NATS JetStream and PostgreSQL with API replicas.

Starts ``--replicas`` ``pingan api`` processes (``bus.kind: nats``, one fresh PostgreSQL schema, one fresh
JetStream stream), then ``--publishers`` threads, each with its own ``NatsSink`` (a compound's worker box),
send ``--events`` events between them, each as two messages (open, closed; every ``--evidence-every``-th
open message carries a 20 kB still). Measures from the first publish until PostgreSQL holds every message:

    .venv/bin/python -m benchmarks.bench_bus --events 2000 --replicas 2

writes ``benchmarks/results/bus-<host>-<date>.json`` (messages/s and events/s end to end, PubAck'd
publishes/s, CPU seconds of the replicas per 1000 messages, machine info). Needs NATS (JetStream) on
127.0.0.1:4222 and PostgreSQL on 127.0.0.1:5432; it cleans up its schema and streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from benchmarks.common import ROOT, machine_info, note, now_iso, result_path, tree_cpu_seconds, write_json
from pipeline.events import Event, EventState, EventType, Evidence
from pipeline.ids import uuid7
from pipeline.sinks_nats import NatsSink

NATS_URL = "nats://127.0.0.1:4222"
PG_URL = os.environ.get("PINGAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CAMERAS = [f"cam-{i}" for i in range(8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _messages(n_events: int, evidence_every: int, rng: random.Random) -> list[tuple[Event, dict[str, bytes]]]:
    out: list[tuple[Event, dict[str, bytes]]] = []
    for i in range(n_events):
        start = datetime.now(UTC) - timedelta(minutes=3)
        files: dict[str, bytes] = {}
        evidence: list[Evidence] = []
        if evidence_every and i % evidence_every == 0:
            data = b"\xff\xd8" + rng.randbytes(20_000) + b"\xff\xd9"
            files["scene-1.jpg"] = data
            evidence = [
                Evidence(
                    name="scene-1.jpg", taken_at=start, sha256=hashlib.sha256(data).hexdigest(), kind="scene"
                )
            ]
        opened = Event(
            id=str(uuid7()),
            type=EventType.ILLEGAL_PARKING,
            state=EventState.OPEN,
            camera_id=CAMERAS[i % len(CAMERAS)],
            zone_id="z1",
            started_at=start,
            updated_at=start + timedelta(seconds=60),
            dwell_s=60.0,
            evidence=evidence,
        )
        end = start + timedelta(seconds=120)
        closed = Event.model_validate(
            {
                **opened.model_dump(),
                "state": "closed",
                "seq": 1,
                "ended_at": end,
                "updated_at": end,
                "dwell_s": 120.0,
            }
        )
        out += [(opened, files), (closed, {})]
    return out


def _config(tmp: Path, port: int, db_url: str, stream: str, prefix: str) -> Path:
    cams = "\n".join(f"  - {{id: {c}, name: {c}, source: {{path: none.mp4}}}}" for c in CAMERAS)
    path = tmp / f"api-{port}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        site: {{id: bench, name: bench}}
        api: {{host: 127.0.0.1, port: {port}, worker_key: bench-worker-key-0123456789abcdef}}
        storage: {{data_dir: {tmp / "api-data"}, database_url: "{db_url}"}}
        bus: {{kind: nats, nats_url: "{NATS_URL}", stream: {stream}, subject_prefix: {prefix}}}
        cameras:
        """)
        + cams
        + "\n"
    )
    return path


def _start_replicas(
    tmp: Path, n: int, db_url: str, stream: str, prefix: str
) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs, ports = [], []
    for i in range(n):
        port = _free_port()
        cfg = _config(tmp, port, db_url, stream, prefix)
        log = open(tmp / f"api-{i}.log", "wb")  # noqa: SIM115 - the child keeps it
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "api", "-c", str(cfg)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        ports.append(port)
        if i == 0:  # the first replica migrates the schema; the others then start on it
            _wait_healthy(procs[0], port)
    for p, port in zip(procs, ports, strict=True):
        _wait_healthy(p, port)
    return procs


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"API replica on port {port} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if c.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"API replica on port {port} did not become healthy")


def _cleanup_nats(stream: str, prefix: str) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        for name in (stream, f"OBJ_{prefix}-evidence"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()

    asyncio.run(main())


def _server_versions(db_url: str) -> dict[str, Any]:
    import nats

    async def nats_version() -> str:
        nc = await nats.connect(NATS_URL)
        try:
            return str(nc.connected_server_version).strip("<>").removeprefix("nats server v")
        finally:
            await nc.close()

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as c:
            pg = c.execute(sa.text("SHOW server_version")).scalar()
    finally:
        engine.dispose()
    return {"nats_server": asyncio.run(nats_version()), "postgresql": pg}


def run(events: int, publishers: int, replicas: int, evidence_every: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    stream, prefix, schema = f"B{tag}", f"b{tag}", f"bench_{tag}"
    db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    procs: list[subprocess.Popen[bytes]] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="bench-bus-")
    try:
        tmp = Path(tmpdir.name)
        note(f"starting {replicas} API replica(s)")
        procs = _start_replicas(tmp, replicas, db_url, stream, prefix)
        rng = random.Random(1)
        warm, *_ = _messages(1, 0, rng)
        msgs = _messages(events, evidence_every, rng)
        shares: list[list[tuple[Event, dict[str, bytes]]]] = [[] for _ in range(publishers)]
        for k in range(0, len(msgs), 2):  # an event's open and closed go through one publisher, in order
            shares[(k // 2) % publishers] += msgs[k : k + 2]
        sinks = [NatsSink(NATS_URL, stream, prefix, f"compound-{i}") for i in range(publishers)]
        for s in sinks:  # connect (and create the stream); not timed
            s.put_status("warm-up", {"state": "running"})
        sinks[0].send(*warm)
        total = len(msgs)
        engine = sa.create_engine(db_url)
        with engine.connect() as c:
            while c.execute(sa.text("SELECT count(*) FROM event_messages")).scalar() != 1:
                time.sleep(0.05)
                c.rollback()
        publish_s: list[float] = [0.0] * publishers
        cpu0 = sum(tree_cpu_seconds(p.pid) for p in procs)
        t0 = time.perf_counter()

        def publish(i: int) -> None:
            for ev, files in shares[i]:
                sinks[i].send(ev, files)
            publish_s[i] = time.perf_counter() - t0

        note(f"publishing {total} messages from {publishers} publisher(s)")
        threads = [threading.Thread(target=publish, args=(i,)) for i in range(publishers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stored = 0
        with engine.connect() as c:
            deadline = time.monotonic() + 600
            while stored < total + 1 and time.monotonic() < deadline:
                stored = int(c.execute(sa.text("SELECT count(*) FROM event_messages")).scalar_one())
                c.rollback()
                if stored < total + 1:
                    time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu = sum(tree_cpu_seconds(p.pid) for p in procs) - cpu0
        with engine.connect() as c:
            n_events = int(c.execute(sa.text("SELECT count(*) FROM events")).scalar_one())
            n_evidence = int(
                c.execute(sa.text("SELECT count(*) FROM evidence WHERE stored_at IS NOT NULL")).scalar_one()
            )
        engine.dispose()
        for s in sinks:
            s.close()
        if stored < total + 1:
            raise RuntimeError(f"only {stored} of {total + 1} messages stored")
        return {
            "messages": total,
            "events": events,
            "evidence_files": n_evidence,
            "events_stored": n_events,
            "seconds": elapsed,
            "messages_per_s": total / elapsed,
            "events_per_s": total / 2 / elapsed,
            "publish_messages_per_s": total / max(publish_s),
            "replica_cpu_s_per_1000_messages": cpu / total * 1000,
            "servers": _server_versions(db_url),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        tmpdir.cleanup()
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        _cleanup_nats(stream, prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--publishers", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--evidence-every", type=int, default=10, help="0: no evidence files")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    info = machine_info()
    started = now_iso()
    result = run(args.events, args.publishers, args.replicas, args.evidence_every)
    payload = {
        "benchmark": "bus",
        "started_at": started,
        "command": " ".join(["python -m benchmarks.bench_bus", *sys.argv[1:]]),
        "params": {
            "events": args.events,
            "publishers": args.publishers,
            "replicas": args.replicas,
            "evidence_every": args.evidence_every,
        },
        "result": result,
        "machine": info,
    }
    path = write_json(result_path("bus", args.out), payload)
    note(
        f"{result['messages_per_s']:.0f} messages/s ({result['events_per_s']:.0f} events/s) end to end "
        f"with {args.replicas} replica(s); wrote {path}"
    )


if __name__ == "__main__":
    main()
