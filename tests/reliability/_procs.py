"""Child processes for the no-event-lost tests: ``python -m tests.reliability._procs api|worker ...``.

- ``api DIR PORT``: the API (uvicorn, SQLite in DIR) with the test settings of tests/fixtures/api.py.
- ``run-faulty ARGS...``: ``pingan ARGS...`` with faults injected (for the secrets test): every 5th decode
  raises FFmpeg's InvalidDataError naming the camera URL (env ``PINGAN_T_URL``, password included), and
  every 4th parking-rule update raises an exception whose message carries that URL.
- ``worker DIR CAMERA COUNT RATE API_URL MAX_ITEMS``: COUNT event messages for CAMERA (open → update →
  closed, an evidence still with open) at RATE a second, through the real ``Outbox`` (spool DIR/CAMERA.db,
  MAX_ITEMS, alarm at 80 %) and ``HttpSink``; appends ``try <id> <seq>`` before and ``ok <id> <seq> <stored>``
  after each ``put`` (fsync'd) to DIR/CAMERA.log, alarm transitions to DIR/CAMERA.alarm, ``emitted`` at
  the end;
  then flushes, and exits 0 once the spool is empty. A restarted worker resumes the spool, counts the
  messages its log says were put, and goes on with new events up to COUNT.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# The no-event-lost test's API outage: the 10 minutes under CI; workers must outwait it.
OUTAGE_S = float(os.environ.get("PINGAN_OUTAGE_S", "600" if os.environ.get("CI") == "true" else "0"))


def run_api(folder: Path, port: int) -> None:
    from api.server import create_server
    from tests.fixtures.api import make_settings

    create_server(make_settings(folder), "127.0.0.1", port, log_level="warning").run()


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_worker(folder: Path, camera: str, count: int, rate: float, url: str, max_items: int) -> int:
    from pipeline.events import Event
    from pipeline.ids import uuid7
    from pipeline.outbox import Outbox
    from pipeline.sinks import HttpSink
    from tests.fixtures.api import WORKER_KEY, iso, make_event

    log = folder / f"{camera}.log"
    alarm = folder / f"{camera}.alarm"
    stop = threading.Event()

    def on_alarm(on: bool, depth: int, max_items: int) -> None:
        _append(alarm, f"{'on' if on else 'off'} {depth} {max_items} {time.time():.3f}")

    sink = HttpSink(url, WORKER_KEY, timeout_s=2.0)
    outbox = Outbox(
        folder / f"{camera}.db",
        sink,
        stop,
        max_items=max_items,
        alarm_fraction=0.8,
        on_alarm=on_alarm,
        backoff_cap_s=2.0,
    )
    zone = {"gate-east": "fire-lane-3", "lot-north": "no-park-1", "bins-west": "station-1"}[camera]
    kind = "bin_overflow" if camera == "bins-west" else "illegal_parking"
    t0 = time.monotonic()
    done = sum(1 for line in log.read_text().splitlines() if line.startswith("ok ")) if log.exists() else 0
    n = 0
    while done + n < count:
        start = datetime.now(UTC) - timedelta(seconds=30)
        eid = str(uuid7())
        still = f"{camera}-{eid}".encode() * 8
        for seq, state in enumerate(("open", "update", "closed")):
            if done + n >= count:
                break
            ev = make_event(
                id=eid, type=kind, camera_id=camera, zone_id=zone, seq=seq, state=state, start=start
            )
            ev["updated_at"] = iso(start + timedelta(seconds=20 + seq))
            if state == "closed":
                ev["ended_at"] = ev["updated_at"]
            files = {}
            if seq == 0:
                ev["evidence"] = [
                    {
                        "name": "scene-1.jpg",
                        "taken_at": ev["started_at"],
                        "sha256": hashlib.sha256(still).hexdigest(),
                        "kind": "scene",
                    }
                ]
                files = {"scene-1.jpg": still}
            if kind == "bin_overflow":
                ev["object"] = dict(ev["object"], label="bin_overflow", plate=None)
            event = Event.model_validate(ev)
            _append(log, f"try {eid} {seq}")
            stored = outbox.put(event, files)
            _append(log, f"ok {eid} {seq} {int(stored)}")
            n += 1
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    _append(log, "emitted")
    ok = outbox.flush(240 + OUTAGE_S)
    depth = outbox.depth()
    stop.set()
    outbox.close()
    sink.close()
    print(f"worker {camera}: {n} messages, flushed={ok}, depth={depth}", flush=True)
    return 0 if ok and depth == 0 else 3


def run_faulty(args: list[str]) -> None:
    import av.error
    import av.video.codeccontext as vcc

    from pipeline import cli
    from pipeline.rules.parking import ParkingRule

    url = os.environ["PINGAN_T_URL"]
    calls = {"decode": 0, "rule": 0}
    real_decode = vcc.VideoCodecContext.decode
    real_update = ParkingRule.update

    def decode(self: object, packet: object = None) -> object:
        calls["decode"] += 1
        if calls["decode"] % 5 == 0:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input", url)
        return real_decode(self, packet)  # type: ignore[arg-type]

    def update(self: ParkingRule, dets: object, ts: float) -> object:
        calls["rule"] += 1
        if calls["rule"] % 4 == 0:
            raise RuntimeError(f"rule failed on a frame of {url}")
        return real_update(self, dets, ts)  # type: ignore[arg-type]

    vcc.VideoCodecContext.decode = decode  # type: ignore[method-assign]
    ParkingRule.update = update  # type: ignore[method-assign,assignment]
    sys.argv = ["pingan", *args]
    cli.main()


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "run-faulty":
        run_faulty(sys.argv[2:])
    elif what == "api":
        run_api(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        a = sys.argv
        sys.exit(run_worker(Path(a[2]), a[3], int(a[4]), float(a[5]), a[6], int(a[7])))
