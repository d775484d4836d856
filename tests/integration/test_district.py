"""A district in miniature: 3 worker-like publishers (NatsSink behind an Outbox), 2 `pingan api` replicas on
one PostgreSQL schema, `bus.kind: nats`. While events flow, the NATS connections of the publishers and of
replica A are cut (twice), replica A is killed and started again, and one publisher is killed and restarted on
its spool. Afterwards every event is stored exactly once, with both its messages and its evidence, and every
stored event appeared on the live feed (SSE) of replica B, the one that stayed up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.fixtures.services import require_service

pytestmark = [pytest.mark.slow, pytest.mark.nats, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
NATS = ("127.0.0.1", 4222)
WORKER_KEY = "district-worker-key-0123456789abcdef"
PASSWORD = "correct-horse-battery-staple"
CAMERAS = [f"cam-{i}" for i in range(3)]
RATE = 6.0  # events per second per publisher; each event is two messages (open, closed)
DURATION_S = 14.0

PUBLISHER = textwrap.dedent(
    '''
    """A worker stand-in: generated events → Outbox (SQLite spool) → NatsSink. Appends P <id> before it
    spools an event and D <id> once both its messages are spooled: a kill in between leaves a known doubt."""
    import hashlib, os, random, sys, threading, time
    from datetime import UTC, datetime, timedelta

    from pipeline.events import Event, Evidence
    from pipeline.ids import uuid7
    from pipeline.outbox import Outbox
    from pipeline.sinks_nats import NatsSink

    index, url, stream, prefix, spool, ids_path = sys.argv[1:7]
    stop_file, rate = sys.argv[7], float(sys.argv[8])
    cameras = sys.argv[9].split(",")
    stop = threading.Event()
    sink = NatsSink(url, stream, prefix, f"compound-{index}", timeout_s=2.0)
    outbox = Outbox(spool, sink, stop, backoff_base_s=0.2, backoff_cap_s=1.0)
    fd = os.open(ids_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random()
    n = 0
    while not os.path.exists(stop_file):
        start = datetime.now(UTC) - timedelta(seconds=90)
        eid = str(uuid7())
        files = {}
        evidence = []
        if n % 3 == 0:
            data = b"\\xff\\xd8" + rng.randbytes(20_000) + b"\\xff\\xd9"
            files["scene-1.jpg"] = data
            evidence = [Evidence(name="scene-1.jpg", taken_at=start, sha256=hashlib.sha256(data).hexdigest(),
                                 kind="scene")]
        cam = cameras[n % len(cameras)]
        opened = Event(id=eid, type="illegal_parking", state="open", camera_id=cam, zone_id="z1",
                       started_at=start, updated_at=start + timedelta(seconds=60), dwell_s=60.0,
                       evidence=evidence, seq=0)
        end = start + timedelta(seconds=80)
        closed = Event.model_validate({**opened.model_dump(), "state": "closed", "seq": 1, "ended_at": end,
                                       "updated_at": end, "dwell_s": 80.0})
        os.write(fd, f"P {eid}\\n".encode())
        outbox.put(opened, files)
        outbox.put(closed, {})
        os.write(fd, f"D {eid}\\n".encode())
        n += 1
        time.sleep(max(0.0, 1.0 / rate))
    ok = outbox.flush(90.0)
    stop.set()
    outbox.close(5.0)
    sink.close()
    os.close(fd)
    print(f"publisher {index}: {n} events, flushed={ok}", flush=True)
    sys.exit(0 if ok else 3)
    '''
)


class Proxy:
    """A TCP relay in front of NATS whose connections the test can cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def count(self) -> int:
        with self._lock:
            return len(self._conns) // 2

    def drop_all(self) -> int:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(2)
        self._threads = [t for t in self._threads if t.is_alive()]
        for s in conns:
            s.close()
        return len(conns) // 2

    def close(self) -> None:
        self._closed = True
        self._accept.join(2)
        self._listener.close()
        self.drop_all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PINGAN_WORKER_KEY", None)
    return env


class Replica:
    def __init__(self, name: str, config: Path, port: int, log: Path) -> None:
        self.name, self.config, self.port, self.log = name, config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "api", "-c", str(self.config)],
                cwd=ROOT,
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.tail()
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(self.url + "/healthz").status_code == 200:
                        return
                time.sleep(0.2)
        pytest.fail(f"replica {self.name} did not become healthy\n{self.tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class SseReader(threading.Thread):
    def __init__(self, url: str, token: str) -> None:
        super().__init__(name="sse-reader", daemon=True)
        self.url, self.token = url, token
        self.ids: set[str] = set()
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        kind = None
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) as c,
                c.stream(
                    "GET", self.url + "/api/events/stream", headers={"Authorization": f"Bearer {self.token}"}
                ) as resp,
            ):
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    self.connected.set()
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "event":
                        self.ids.add(json.loads(line[6:])["id"])
                    elif line.startswith("data: ") and kind == "bye":
                        return
        except BaseException as e:  # reported by the test
            self.error = e


@pytest.fixture
def district(tmp_path: Path) -> Iterator[dict[str, Any]]:
    require_service("NATS", *NATS)
    require_service("PostgreSQL", "127.0.0.1", 5432)
    tag = uuid.uuid4().hex[:10]
    base = os.environ.get("PINGAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"t_district_{tag}"
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    proxy = Proxy(NATS)
    ctx: dict[str, Any] = {
        "tag": tag,
        "stream": f"D{tag}",
        "prefix": f"d{tag}",
        "proxy": proxy,
        "db_url": f"{base}?options=-csearch_path%3D{schema}",
        "tmp": tmp_path,
        "procs": [],
    }
    try:
        yield ctx
    finally:
        for p in ctx["procs"]:
            if isinstance(p, Replica):
                p.stop()
            elif p.poll() is None:
                p.kill()
                p.wait(10)
        proxy.close()
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        _delete_streams(ctx["stream"], ctx["prefix"])


def _delete_streams(stream: str, prefix: str) -> None:
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
        js = nc.jetstream()
        for name in (stream, f"OBJ_{prefix}-evidence"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()

    asyncio.run(main())


def _config(ctx: dict[str, Any], name: str, port: int, nats_url: str) -> Path:
    cams = "\n".join(f"  - {{id: {c}, name: {c}, source: {{path: none.mp4}}}}" for c in CAMERAS)
    text = (
        textwrap.dedent(
            f"""
        site: {{id: district, name: district-test}}
        api: {{host: 127.0.0.1, port: {port}, worker_key: {WORKER_KEY}}}
        storage: {{data_dir: {ctx["tmp"] / "api-data"}, database_url: "{ctx["db_url"]}"}}
        bus: {{kind: nats, nats_url: "{nats_url}", stream: {ctx["stream"]}, subject_prefix: {ctx["prefix"]}}}
        cameras:
        """
        )
        + cams
        + "\n"
    )
    path = ctx["tmp"] / f"{name}.yaml"
    path.write_text(text)
    return path


def _read_ids(paths: list[Path]) -> tuple[set[str], set[str]]:
    done: set[str] = set()
    intended: set[str] = set()
    for p in paths:
        for line in p.read_text().splitlines():
            kind, _, eid = line.partition(" ")
            (done if kind == "D" else intended).add(eid)
    return done, intended - done


def test_district_stores_every_event_once_and_shows_it_live(district: dict[str, Any]) -> None:
    from api.settings import settings_from_config
    from api.users import add_user
    from pipeline.config import load_config

    ctx = district
    tmp: Path = ctx["tmp"]
    proxy: Proxy = ctx["proxy"]
    nats_direct = f"nats://{NATS[0]}:{NATS[1]}"
    a_cfg = _config(ctx, "replica-a", _free_port(), proxy.url)
    b_cfg = _config(ctx, "replica-b", _free_port(), nats_direct)
    add_user(settings_from_config(load_config(b_cfg)), "op", PASSWORD, "operator")  # migrates the schema

    a = Replica("a", a_cfg, load_config(a_cfg).api.port, tmp / "replica-a.log")
    b = Replica("b", b_cfg, load_config(b_cfg).api.port, tmp / "replica-b.log")
    ctx["procs"] += [a, b]
    a.start()
    b.start()
    a.wait_healthy()
    b.wait_healthy()
    with httpx.Client(timeout=10) as c:
        r = c.post(b.url + "/api/token", json={"username": "op", "password": PASSWORD})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
    sse = SseReader(b.url, token)
    sse.start()
    assert sse.connected.wait(10), sse.error

    script = tmp / "publisher.py"
    script.write_text(PUBLISHER)
    stop_file = tmp / "stop-publishing"
    id_files = [tmp / f"ids-{i}.txt" for i in range(3)]

    def publisher(i: int) -> subprocess.Popen[bytes]:
        args = [
            str(i),
            proxy.url,
            ctx["stream"],
            ctx["prefix"],
            str(tmp / f"outbox-{i}.db"),
            str(id_files[i]),
            str(stop_file),
            str(RATE),
            ",".join(CAMERAS),
        ]
        out = open(tmp / f"publisher-{i}.log", "ab")  # noqa: SIM115 - closed after the process ends
        p = subprocess.Popen(
            [sys.executable, str(script), *args], cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        ctx["procs"].append(p)
        return p

    pubs = [publisher(i) for i in range(3)]
    deadline = time.monotonic() + 60
    while proxy.count() < 4:  # 3 publishers and replica A are connected through the proxy
        assert time.monotonic() < deadline, f"only {proxy.count()} connections through the proxy"
        time.sleep(0.1)
    t0 = time.monotonic()

    def at(t: float) -> None:
        time.sleep(max(0.0, t0 + t - time.monotonic()))

    at(3.0)
    assert proxy.drop_all() >= 3  # the publishers' and replica A's NATS connections
    at(5.0)
    a.kill()
    at(7.0)
    pubs[1].kill()
    pubs[1].wait(10)
    pubs[1] = publisher(1)  # resumes its spool
    at(9.0)
    a.start()
    at(11.0)
    proxy.drop_all()
    a.wait_healthy()
    at(DURATION_S)
    stop_file.touch()

    for i, p in enumerate(pubs):
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"publisher {i} did not finish\n{(tmp / f'publisher-{i}.log').read_text()[-2000:]}")
        assert rc == 0, (tmp / f"publisher-{i}.log").read_text()[-2000:]

    done, uncertain = _read_ids(id_files)
    assert len(done) > 100
    engine = sa.create_engine(ctx["db_url"])
    try:
        deadline = time.monotonic() + 45
        while True:
            with engine.connect() as c:
                stored = [r[0] for r in c.execute(sa.text("SELECT id FROM events"))]
                msgs = list(c.execute(sa.text("SELECT event_id, seq FROM event_messages")))
                evidence = list(c.execute(sa.text("SELECT event_id, stored_at FROM evidence")))
            per_event: dict[str, list[int]] = {}
            for eid, seq in msgs:
                per_event.setdefault(eid, []).append(seq)
            # every spooled event with both its messages; counting all messages let the wait end while the
            # ones of events a publisher was unsure of stood in for a spooled event's second, still in flight
            partial = {
                e: sorted(per_event.get(e, [])) for e in done if sorted(per_event.get(e, [])) != [0, 1]
            }
            if done <= set(stored) and not partial:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{len(done - set(stored))} of {len(done)} events never stored; "
                    f"{len(partial)} without both messages: {dict(list(partial.items())[:5])}\n"
                    f"A:\n{a.tail()}\nB:\n{b.tail()}"
                )
            time.sleep(0.5)
    finally:
        engine.dispose()
    assert len(stored) == len(set(stored))  # exactly once
    assert set(stored) - done <= uncertain  # nothing that no publisher spooled
    assert evidence and all(stored_at is not None for _, stored_at in evidence)

    deadline = time.monotonic() + 20
    while not set(stored) <= sse.ids and time.monotonic() < deadline:
        time.sleep(0.2)
    missing = set(stored) - sse.ids
    assert not missing, f"{len(missing)} stored events not on replica B's live feed; SSE error: {sse.error}"
    b.stop()
    sse.join(10)
