from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.errors import OutboxError
from pipeline.events import Event, EventState, EventType
from pipeline.ids import uuid7
from pipeline.outbox import NEVER_DROP, Outbox, drop_rank
from tests.fakes import MemorySink, RecordingApi

FAST = {"backoff_base_s": 0.005, "backoff_cap_s": 0.02, "poll_s": 0.01}
ROOT = Path(__file__).resolve().parents[2]


def ev(eid: str, seq: int, state: EventState, typ: EventType = EventType.ILLEGAL_PARKING) -> Event:
    now = datetime.now(UTC)
    return Event(
        id=eid,
        type=typ,
        state=state,
        camera_id="cam-1",
        zone_id="fire-lane-3",
        started_at=now,
        updated_at=now,
        ended_at=now if state is EventState.CLOSED else None,
        seq=seq,
    )


def lifecycle(eid: str, updates: int = 2, typ: EventType = EventType.ILLEGAL_PARKING) -> list[Event]:
    msgs = [ev(eid, 0, EventState.OPEN, typ)]
    msgs += [ev(eid, i, EventState.UPDATE, typ) for i in range(1, updates + 1)]
    msgs.append(ev(eid, updates + 1, EventState.CLOSED, typ))
    return msgs


def interleaved(n_ids: int, updates: int = 2) -> list[Event]:
    per = [lifecycle(str(uuid7()), updates) for _ in range(n_ids)]
    out: list[Event] = []
    for i in range(updates + 2):
        out += [msgs[i] for msgs in per]
    return out


@pytest.fixture(autouse=True)
def no_sender_left() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(t.name == "outbox-sender" for t in threading.enumerate()):
        time.sleep(0.02)
    assert not [t for t in threading.enumerate() if t.name == "outbox-sender"], "a sender thread was left"


def test_put_delivers_message_with_files_and_empties_the_spool(tmp_path: Path) -> None:
    sink = MemorySink()
    box = Outbox(tmp_path / "outbox.db", sink, threading.Event(), **FAST)  # type: ignore[arg-type]
    e = ev(str(uuid7()), 0, EventState.OPEN)
    files = {"scene-1.jpg": b"\xff\xd8jpeg-1", "plate-1.jpg": b"\xff\xd8jpeg-2"}
    assert box.put(e, files)
    assert box.flush(5.0)
    assert box.depth() == 0
    t0 = time.monotonic()
    box.close(2.0)
    assert time.monotonic() - t0 < 2.0
    assert [(d.event, d.files) for d in sink.deliveries] == [(e, files)]
    assert list(sink.deliveries[0].files) == ["scene-1.jpg", "plate-1.jpg"]  # order kept


def test_order_per_id_and_nothing_lost_or_duplicated_under_transient_failures(tmp_path: Path) -> None:
    sink = MemorySink(fail_rate=0.4, seed=7)
    msgs = interleaved(12, updates=3)
    with Outbox(tmp_path / "o.db", sink, threading.Event(), **FAST) as box:  # type: ignore[arg-type]
        for m in msgs:
            box.put(m)
        assert box.flush(20.0), box.stats()
    keys = sink.acked()
    assert sorted(keys) == sorted((m.id, m.seq) for m in msgs)  # exactly once each
    by_id: dict[str, list[int]] = {}
    for eid, seq in keys:
        by_id.setdefault(eid, []).append(seq)
    assert all(seqs == sorted(seqs) for seqs in by_id.values())
    assert sink.calls > len(msgs)  # failures did happen


def test_resumes_after_restart_without_loss_or_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    down = MemorySink(fail_rate=1.0)
    msgs = interleaved(5)
    box = Outbox(path, down, threading.Event(), **FAST)  # type: ignore[arg-type]
    for m in msgs:
        box.put(m, {"scene-1.jpg": m.id.encode()})
    assert not box.flush(0.2)
    box.close(2.0)
    assert down.deliveries == []

    up = MemorySink(fail_rate=0.3, seed=3)
    with Outbox(path, up, threading.Event(), **FAST) as again:  # type: ignore[arg-type]
        assert again.depth() == len(msgs)
        assert again.flush(10.0)
        assert again.pending() == []
    assert sorted(up.acked()) == sorted((m.id, m.seq) for m in msgs)
    assert all(d.files == {"scene-1.jpg": d.event.id.encode()} for d in up.deliveries)


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from pipeline.events import Event
    from pipeline.outbox import Outbox
    from pipeline.sinks import HttpSink

    path, url, events = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_text().splitlines()
    box = Outbox(Path(path), HttpSink(url, "k", timeout_s=2), threading.Event(),
                 backoff_base_s=0.005, backoff_cap_s=0.02)
    for line in events:
        box.put(Event.model_validate_json(line), {"scene-1.jpg": b"jpeg"})
    print("READY", flush=True)
    time.sleep(60)
    """
)


def test_survives_kill_mid_delivery(tmp_path: Path) -> None:
    msgs = interleaved(10)
    (tmp_path / "events.jsonl").write_text("\n".join(m.model_dump_json() for m in msgs) + "\n")
    path = tmp_path / "o.db"
    with RecordingApi(delay_s=0.03, script=[503, 500, 503]) as api:  # a few 5xx first
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), api.url, str(tmp_path / "events.jsonl")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "READY"
            deadline = time.monotonic() + 20
            while len(api.created) < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(api.created) >= 8
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
        before = list(api.created)
    assert len(before) < len(msgs), "the child delivered everything before the kill; slow the server"

    sink = MemorySink(fail_rate=0.3, seed=1)
    with Outbox(path, sink, threading.Event(), **FAST) as box:  # type: ignore[arg-type]
        assert box.flush(10.0)
    after = sink.acked()
    everything = {(m.id, m.seq) for m in msgs}
    assert set(before) | set(after) == everything  # nothing lost
    assert len(after) == len(set(after))
    assert len(set(before) & set(after)) <= 1  # at most the one in flight at the kill went twice
    # order per id holds across the crash
    seqs: dict[str, list[int]] = {}
    for eid, seq in before + [k for k in after if k not in set(before)]:
        seqs.setdefault(eid, []).append(seq)
    assert all(s == sorted(s) for s in seqs.values())


def test_permanent_rejection_goes_to_dead_letters_and_can_be_requeued(tmp_path: Path) -> None:
    bad = str(uuid7())
    sink = MemorySink(reject=lambda e: e.id == bad and e.seq == 1)
    msgs = lifecycle(bad, updates=2) + lifecycle(str(uuid7()), updates=1)
    with Outbox(tmp_path / "o.db", sink, threading.Event(), **FAST) as box:  # type: ignore[arg-type]
        for m in msgs:
            box.put(m, {"scene-1.jpg": b"x"} if m.seq == 1 else None)
        assert box.flush(5.0)
        dead = box.dead_letters()
        assert [(d.event_id, d.seq, d.state) for d in dead] == [(bad, 1, "update")]
        assert "rejected" in dead[0].error and dead[0].attempts == 1
        assert dead[0].file_names == ("scene-1.jpg",)
        assert Event.model_validate_json(dead[0].body) == msgs[1]
        assert box.dead_files(bad, 1) == {"scene-1.jpg": b"x"}
        assert box.stats()["dead"] == 1
        # the dead update does not block its successors
        assert (bad, 2) in sink.acked() and (bad, 3) in sink.acked()
        sink.reject = None
        assert box.requeue_dead(bad) == 1
        assert box.flush(5.0)
        assert box.dead_letters() == []
    assert sorted(sink.acked()) == sorted((m.id, m.seq) for m in msgs)


def test_bound_drops_non_violation_updates_first_never_violation_open_closed(tmp_path: Path) -> None:
    alarms: list[tuple[bool, int, int]] = []
    sink = MemorySink()
    box = Outbox(
        tmp_path / "o.db",
        sink,
        threading.Event(),
        max_items=6,
        alarm_fraction=0.5,
        on_alarm=lambda *a: alarms.append(a),
        start=False,
        **FAST,  # type: ignore[arg-type]
    )
    park, bin_ = str(uuid7()), str(uuid7())
    P, B = EventType.ILLEGAL_PARKING, EventType.BIN_OVERFLOW
    box.put(ev(park, 0, EventState.OPEN, P))
    box.put(ev(bin_, 0, EventState.OPEN, B))
    assert alarms == [] and not box.is_alarming()
    box.put(ev(bin_, 1, EventState.UPDATE, B))
    assert alarms == [(True, 3, 6)] and box.is_alarming()
    box.put(ev(park, 1, EventState.UPDATE, P))
    box.put(ev(bin_, 2, EventState.UPDATE, B))
    box.put(ev(park, 2, EventState.UPDATE, P))
    assert box.depth() == 6
    # full: the oldest non-violation update (bin seq 1) goes first
    assert box.put(ev(park, 3, EventState.UPDATE, P))
    assert (bin_, 1) not in [(p.event_id, p.seq) for p in box.pending()]
    # then the next bin update
    assert box.put(ev(park, 4, EventState.UPDATE, P))
    assert [(p.event_id, p.seq) for p in box.pending()] == [
        (park, 0),
        (bin_, 0),
        (park, 1),
        (park, 2),
        (park, 3),
        (park, 4),
    ]
    # then violation updates, oldest first
    closed = ev(park, 5, EventState.CLOSED, P)
    assert box.put(closed)
    assert (park, 1) not in [(p.event_id, p.seq) for p in box.pending()]
    # a new bin update is itself the lowest class: dropped on arrival
    assert not box.put(ev(bin_, 3, EventState.UPDATE, B))
    # violation open/closed are never dropped: fill with them beyond the bound
    others = [str(uuid7()) for _ in range(8)]
    for o in others:
        assert box.put(ev(o, 0, EventState.OPEN, P))
    left = [(p.event_id, p.seq) for p in box.pending(100)]
    assert (park, 0) in left and (park, 5) in left and all((o, 0) in left for o in others)
    assert box.depth() == 2 + len(others) > box.max_items
    # bin 1, bin 2, park 1, bin 3 (on arrival), park 2, 3, 4, then bin 0 (a non-violation open)
    assert box.stats()["dropped"] == 8
    box.start()
    assert box.flush(5.0)
    assert alarms[-1][0] is False and not box.is_alarming()
    assert [a[0] for a in alarms] == [True, False]
    box.close(2.0)
    # what was kept went out in order per id
    got = [k for k in sink.acked() if k[0] == park]
    assert got == [(park, 0), (park, 5)]


def test_drop_rank_classes() -> None:
    i = str(uuid7())
    assert drop_rank(ev(i, 1, EventState.UPDATE, EventType.BIN_OVERFLOW)) == 0
    assert drop_rank(ev(i, 1, EventState.UPDATE, EventType.CAMERA_OFFLINE)) == 0
    assert drop_rank(ev(i, 1, EventState.UPDATE)) == 1
    assert drop_rank(ev(i, 0, EventState.OPEN, EventType.BIN_OVERFLOW)) == 2
    assert drop_rank(ev(i, 0, EventState.OPEN)) == NEVER_DROP
    assert drop_rank(ev(i, 2, EventState.CLOSED)) == NEVER_DROP


def test_same_id_seq_is_spooled_once(tmp_path: Path) -> None:
    sink = MemorySink()
    with Outbox(tmp_path / "o.db", sink, threading.Event(), start=False, **FAST) as box:  # type: ignore[arg-type]
        e = ev(str(uuid7()), 0, EventState.OPEN)
        assert box.put(e) and box.put(e)
        assert box.depth() == 1
        box.start()
        assert box.flush(5.0)
    assert sink.acked() == [(e.id, 0)]


def test_one_outbox_per_spool(tmp_path: Path) -> None:
    with (
        Outbox(tmp_path / "o.db", MemorySink(), threading.Event(), **FAST),  # type: ignore[arg-type]
        pytest.raises(OutboxError, match="in use"),
    ):
        Outbox(tmp_path / "o.db", MemorySink(), threading.Event(), **FAST)  # type: ignore[arg-type]
    box = Outbox(tmp_path / "o.db", MemorySink(), threading.Event(), **FAST)  # type: ignore[arg-type]
    box.close(1.0)
    with pytest.raises(OutboxError, match="closed"):
        box.put(ev(str(uuid7()), 0, EventState.OPEN))


def test_flush_and_close_honour_timeouts_with_a_hung_sink(tmp_path: Path) -> None:
    gate = threading.Event()
    sink = MemorySink(gate=gate)
    box = Outbox(tmp_path / "o.db", sink, threading.Event(), **FAST)  # type: ignore[arg-type]
    box.put(ev(str(uuid7()), 0, EventState.OPEN))
    t0 = time.monotonic()
    assert not box.flush(0.3)
    box.close(0.3)
    assert time.monotonic() - t0 < 1.5
    gate.set()  # the hung send returns; the sender then exits and closes the spool itself
    deadline = time.monotonic() + 3
    while any(t.name == "outbox-sender" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(OutboxError):
        box.put(ev(str(uuid7()), 0, EventState.OPEN))
    # the message acknowledged after close is delivered; a reopened spool may resend it (idempotent)
    with Outbox(tmp_path / "o.db", sink, threading.Event(), **FAST) as again:  # type: ignore[arg-type]
        assert again.flush(3.0)
    assert len(set(sink.acked())) == 1


def test_shared_stop_event_stops_the_sender(tmp_path: Path) -> None:
    stop = threading.Event()
    box = Outbox(tmp_path / "o.db", MemorySink(fail_rate=1.0), stop, **FAST)  # type: ignore[arg-type]
    box.put(ev(str(uuid7()), 0, EventState.OPEN))
    stop.set()
    t0 = time.monotonic()
    box.close(2.0)
    assert time.monotonic() - t0 < 1.0


def test_backs_off_while_the_sink_is_down(tmp_path: Path) -> None:
    sink = MemorySink(fail_rate=1.0)
    with Outbox(
        tmp_path / "o.db", sink, threading.Event(), backoff_base_s=0.05, backoff_cap_s=0.2, poll_s=0.01
    ) as box:
        for m in interleaved(20, updates=0):
            box.put(m)
        time.sleep(1.0)
        assert box.stats()["failing"] > 0 and box.stats()["last_error"]
        assert box.pending(1)[0].attempts >= 1
    # capped exponential backoff: ~0.05, 0.1, 0.2, 0.2 … s (jitter ×0.5–1) → well under 40 tries in 1 s
    assert 3 <= sink.calls <= 40


def test_byte_bound_drops_updates_with_big_files(tmp_path: Path) -> None:
    alarms: list[tuple[bool, int, int]] = []
    box = Outbox(
        tmp_path / "o.db",
        MemorySink(),
        threading.Event(),
        max_bytes=30_000,
        on_alarm=lambda *a: alarms.append(a),
        start=False,
        **FAST,  # type: ignore[arg-type]
    )
    eid = str(uuid7())
    box.put(ev(eid, 0, EventState.OPEN), {"scene-1.jpg": b"x" * 12_500})
    box.put(ev(eid, 1, EventState.UPDATE), {"scene-2.jpg": b"x" * 12_500})
    assert alarms == [(True, 2, 50_000)]  # 80 % of the bytes
    box.put(ev(eid, 2, EventState.CLOSED), {"scene-3.jpg": b"x" * 12_500})
    assert [p.seq for p in box.pending()] == [0, 2]
    assert box.size_bytes() <= 30_000 and box.stats()["dropped"] == 1
    box.close(1.0)
