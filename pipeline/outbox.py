"""Durable delivery: a local SQLite spool between the event builder and the sink.

Guarantees
- ``put(event, files)`` returns only after the message and its evidence files are committed to the spool
  (SQLite WAL with ``synchronous=FULL``: the commit is fsync'd). Files are stored as blobs in the same
  transaction as their message, so a message never exists without its files or the other way round.
- A background sender delivers and deletes a message only after the sink acknowledged it. A process killed at
  any point loses nothing: a new ``Outbox`` on the same path resumes (at-least-once; the API de-duplicates by
  (id, seq), so a message in flight at the kill may reach the sink twice, never with a different content).
- Order: per event id, messages go out in ``seq`` order (an update never before its open): only the
  lowest pending ``seq`` of an id is eligible. Across ids, oldest first; an id that keeps failing does not
  hold up the others.
- Batches: when the sink has ``send_batch`` (:class:`~pipeline.protocols.BatchEventSink`, e.g. ``HttpSink``)
  and more than one message is eligible, up to ``batch_max`` of them (one per event id, so the order above
  holds) go out in one call; each is deleted, retried or dead-lettered by its own outcome, exactly as if
  sent alone. A message the sink reports acknowledged (stored or a duplicate) is delivered. A kill during
  a batch call may send that call's messages twice (the API de-duplicates them), never lose one.
- Transient failure (``SinkError``): that message waits a capped, jittered exponential backoff, and the whole
  sender also backs off while failures follow each other (the API or network is down), so a long outage costs
  one attempt per ``backoff_cap_s``. Any other exception from the sink counts as transient (and is logged).
- Permanent rejection (``PermanentSinkError``, i.e. 4xx other than 401/403/408/409/425/429) and messages
  that no longer parse move to the ``dead`` table with the error, inspectable with
  :meth:`Outbox.dead_letters` and movable back with :meth:`Outbox.requeue_dead`. A dead message does not
  block later messages of its id.

Bounding policy
- ``max_items`` pending messages (and optionally ``max_bytes`` of bodies + files). From ``alarm_fraction`` of
  either, the outbox is *alarming*: :meth:`is_alarming` is True, a warning is logged and
  ``on_alarm(True, depth, max_items)`` is called once; ``on_alarm(False, …)`` once it falls below again.
- When a ``put`` makes the spool exceed a bound, messages are dropped until it fits, in this order, oldest
  first within a class:
    0. ``update`` messages of non-violation events (bin_overflow, camera_offline),
    1. ``update`` messages of illegal_parking,
    2. ``open`` / ``closed`` messages of non-violation events.
  ``open`` / ``closed`` of illegal_parking (the police evidence) are never dropped: when only those are left
  the spool grows past ``max_items`` (logged as an error each time) rather than refuse or lose a violation.
  The new message itself may be the one dropped (``put`` then returns False). Drops are counted in
  ``stats()["dropped"]`` and logged. The API keeps the latest message per id, so a dropped update loses only
  intermediate state (and any evidence files attached only to it).

One process owns a spool at a time (an exclusive ``flock`` on ``<path>.lock``; a second opener gets
``OutboxError``). Threads: ``put`` may be called from any thread; one sender thread per outbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BatchUnsupported, OutboxError, PermanentSinkError, SinkError
from pipeline.events import Event, EventState, EventType
from pipeline.protocols import BatchEventSink, EventSink

log = logging.getLogger(__name__)

NEVER_DROP = 3
VACUUM_EVERY_S = 60.0
VACUUM_MIN_FREE_PAGES = 256
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    rank INTEGER NOT NULL,
    body TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (event_id, seq)
);
CREATE INDEX IF NOT EXISTS messages_rank ON messages (rank, id);
CREATE TABLE IF NOT EXISTS files (
    message INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (message, name)
);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_files (
    dead INTEGER NOT NULL REFERENCES dead (id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (dead, name)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_INSERT_MESSAGE = (
    "INSERT OR IGNORE INTO messages (event_id, seq, type, state, rank, body, nbytes, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
AlarmCallback = Callable[[bool, int, int], None]


def drop_rank(event: Event) -> int:
    """Eviction class of a message (lower goes first; ``NEVER_DROP`` never); see the module doc."""
    violation = event.type is EventType.ILLEGAL_PARKING
    if event.state is EventState.UPDATE:
        return 1 if violation else 0
    return NEVER_DROP if violation else 2


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: str
    seq: int
    type: str
    state: str
    error: str
    attempts: int
    created_at: float
    failed_at: float
    body: str  # the event message as JSON
    file_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pending:
    event_id: str
    seq: int
    type: str
    state: str
    attempts: int
    last_error: str | None
    created_at: float


class Outbox:
    """SQLite-spooled, ordered, retrying delivery of event messages to an ``EventSink`` (see module doc)."""

    def __init__(
        self,
        path: Path,
        sink: EventSink,
        stop: threading.Event,
        max_items: int = 50_000,
        alarm_fraction: float = 0.8,
        *,
        max_bytes: int | None = None,
        on_alarm: AlarmCallback | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        poll_s: float = 0.05,
        batch_max: int = 100,
        start: bool = True,
    ) -> None:
        if max_items < 1 or batch_max < 1 or not 0 < alarm_fraction <= 1:
            raise ValueError("max_items and batch_max must be >= 1 and 0 < alarm_fraction <= 1")
        self.path = Path(path)
        self.sink = sink
        self.stop = stop
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.alarm_fraction = alarm_fraction
        self.on_alarm = on_alarm
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.poll_s = poll_s
        self.batch_max = batch_max

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._rng = random.Random()
        self._retry_at: dict[int, tuple[float, int]] = {}  # message row → (monotonic due, failures here)
        self._fail_streak = 0
        self._alarming = False
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._vacuumed_at = time.monotonic()

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            self._db = self._open_db()
        except BaseException:
            self._release_lock()
            raise
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM messages").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])
        if self._depth:
            log.info("outbox %s: resuming with %d pending message(s)", self.path, self._depth)
        self._update_alarm()
        if start:
            self.start()

    # ---- set-up -----------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        lock_path = str(self.path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxError(f"outbox spool {self.path} is in use by another outbox") from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _open_db(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise OutboxError(f"cannot open outbox spool {self.path}: {e}") from e
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new spool only
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            db.close()
            raise OutboxError(f"cannot initialise outbox spool {self.path}: {e}") from e
        return db

    def start(self) -> None:
        """Start the sender thread (done by the constructor unless ``start=False``)."""
        with self._lock:
            if self._closed:
                raise OutboxError("outbox is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
                self._thread.start()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (caller holds ``_lock``)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    # ---- public API -------------------------------------------------------------------------------

    def put(self, event: Event, files: dict[str, bytes] | None = None) -> bool:
        """Spool one event message and its evidence files; durable when it returns.

        Returns True when stored (or already spooled: same (id, seq)), False when the bound dropped this very
        message (see the module doc). Raises OutboxError when the spool cannot store it or is closed.
        """
        files = files or {}
        body = event.model_dump_json()
        nbytes = len(body) + sum(len(d) for d in files.values())
        rank = drop_rank(event)
        dropped: list[tuple[str, int, str, str]] = []
        with self._lock:
            if self._closed:
                raise OutboxError("outbox is closed")
            try:
                with self._tx() as db:
                    cur = db.execute(
                        _INSERT_MESSAGE,
                        (
                            event.id,
                            event.seq,
                            event.type.value,
                            event.state.value,
                            rank,
                            body,
                            nbytes,
                            time.time(),
                        ),
                    )
                    if cur.rowcount == 0:
                        return True  # already spooled
                    row_id = cur.lastrowid
                    db.executemany(
                        "INSERT INTO files (message, ord, name, data) VALUES (?, ?, ?, ?)",
                        [
                            (row_id, i, name, sqlite3.Binary(data))
                            for i, (name, data) in enumerate(files.items())
                        ],
                    )
                    depth, size = self._depth + 1, self._bytes + nbytes
                    while self._over(depth, size):
                        victim = db.execute(
                            "SELECT id, event_id, seq, type, state, nbytes FROM messages WHERE rank < ?"
                            " ORDER BY rank, id LIMIT 1",
                            (NEVER_DROP,),
                        ).fetchone()
                        if victim is None:
                            log.error(
                                "outbox full (%d messages, %d bytes) with only illegal-parking open/closed "
                                "messages: keeping them all beyond the bound",
                                depth,
                                size,
                            )
                            break
                        db.execute("DELETE FROM messages WHERE id = ?", (victim[0],))
                        self._retry_at.pop(int(victim[0]), None)
                        depth, size = depth - 1, size - int(victim[5])
                        dropped.append((victim[1], int(victim[2]), victim[3], victim[4]))
                        if victim[0] == row_id:
                            row_id = None
                    if dropped:
                        db.execute(
                            "INSERT INTO counters (name, value) VALUES ('dropped', ?)"
                            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                            (len(dropped),),
                        )
            except sqlite3.Error as e:
                raise OutboxError(f"outbox could not store {event.id}#{event.seq}: {e}") from e
            self._depth, self._bytes = depth, size
            for d in dropped:
                log.warning("outbox full: dropped %s message %s#%d (%s)", d[3], d[0], d[1], d[2])
            transition = self._update_alarm()
            self._changed.notify_all()
        self._wake.set()
        self._fire_alarm(transition)
        return row_id is not None

    def depth(self) -> int:
        """Pending (not yet acknowledged, not dead) messages."""
        with self._lock:
            return self._depth

    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def is_alarming(self) -> bool:
        with self._lock:
            return self._alarming

    def stats(self) -> dict[str, Any]:
        with self._lock:
            dropped = dead = 0
            if not self._closed:
                r = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
                dropped = int(r[0]) if r else 0
                dead = int(self._db.execute("SELECT COUNT(*) FROM dead").fetchone()[0])
            return {
                "depth": self._depth,
                "bytes": self._bytes,
                "max_items": self.max_items,
                "max_bytes": self.max_bytes,
                "alarming": self._alarming,
                "dropped": dropped,
                "dead": dead,
                "failing": self._fail_streak,
                "last_error": self._last_error,
            }

    def pending(self, limit: int = 100) -> list[Pending]:
        """The oldest pending messages, for inspection."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT event_id, seq, type, state, attempts, last_error, created_at FROM messages"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Pending(r[0], int(r[1]), r[2], r[3], int(r[4]), r[5], float(r[6])) for r in rows]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages the sink rejected for good, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT d.id, d.event_id, d.seq, d.type, d.state, d.error, d.attempts, d.created_at,"
                " d.failed_at, d.body, (SELECT group_concat(name, char(10)) FROM"
                " (SELECT name FROM dead_files f WHERE f.dead = d.id ORDER BY ord))"
                " FROM dead d ORDER BY d.id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            DeadLetter(
                r[1],
                int(r[2]),
                r[3],
                r[4],
                r[5],
                int(r[6]),
                float(r[7]),
                float(r[8]),
                r[9],
                tuple(r[10].split("\n")) if r[10] else (),
            )
            for r in rows
        ]

    def dead_files(self, event_id: str, seq: int) -> dict[str, bytes]:
        """The evidence files of one dead letter."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT f.name, f.data FROM dead_files f JOIN dead d ON d.id = f.dead"
                " WHERE d.event_id = ? AND d.seq = ? ORDER BY f.ord",
                (event_id, seq),
            ).fetchall()
        return {r[0]: bytes(r[1]) for r in rows}

    def requeue_dead(self, event_id: str | None = None) -> int:
        """Move dead letters (all, or those of one event id) back to the queue; returns how many."""
        with self._lock:
            self._check_open()
            where, args = ("WHERE event_id = ?", (event_id,)) if event_id else ("", ())
            with self._tx() as db:
                rows = db.execute(
                    f"SELECT id, event_id, seq, type, state, body, created_at FROM dead {where} ORDER BY id",
                    args,
                ).fetchall()
                moved = 0
                for r in rows:
                    files = db.execute(
                        "SELECT ord, name, data FROM dead_files WHERE dead = ? ORDER BY ord", (r[0],)
                    ).fetchall()
                    try:
                        rank = drop_rank(Event.model_validate_json(r[5]))
                    except ValueError:
                        continue  # still unreadable: leave it dead
                    nbytes = len(r[5]) + sum(len(f[2]) for f in files)
                    cur = db.execute(
                        _INSERT_MESSAGE,
                        (r[1], r[2], r[3], r[4], rank, r[5], nbytes, r[6]),
                    )
                    if cur.rowcount:
                        db.executemany(
                            "INSERT INTO files (message, ord, name, data) VALUES (?, ?, ?, ?)",
                            [(cur.lastrowid, f[0], f[1], f[2]) for f in files],
                        )
                        self._depth += 1
                        self._bytes += nbytes
                    db.execute("DELETE FROM dead WHERE id = ?", (r[0],))
                    moved += 1
            transition = self._update_alarm()
        self._wake.set()
        self._fire_alarm(transition)
        return moved

    def flush(self, timeout_s: float) -> bool:
        """Wait until every pending message is acknowledged or dead; False on timeout (or with no sender)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._wake.set()
        with self._changed:
            while self._depth > 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._changed.wait(min(left, 0.1))
            return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the sender (it finishes or abandons the send in progress) and close the spool. Pending
        messages stay in the spool for the next ``Outbox`` on this path. Idempotent; never blocks longer
        than ``timeout_s``."""
        self._closing.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(max(0.0, timeout_s))
            if t.is_alive():
                log.warning(
                    "outbox sender still busy after %.1fs; it will close the spool when it returns", timeout_s
                )
                return  # the sender closes the database on its way out
        self._close_db()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError("outbox is closed")

    def _close_db(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._release_lock()
            self._changed.notify_all()

    def _over(self, depth: int, size: int) -> bool:
        return depth > self.max_items or (self.max_bytes is not None and size > self.max_bytes)

    def _update_alarm(self) -> bool | None:
        """Recompute the alarm (caller holds the lock); returns the new state on a transition, else None."""
        alarming = self._depth >= self.alarm_fraction * self.max_items or (
            self.max_bytes is not None and self._bytes >= self.alarm_fraction * self.max_bytes
        )
        if alarming == self._alarming:
            return None
        self._alarming = alarming
        if alarming:
            log.warning(
                "outbox alarm: %d/%d messages, %d bytes pending", self._depth, self.max_items, self._bytes
            )
        else:
            log.info("outbox alarm cleared: %d/%d messages pending", self._depth, self.max_items)
        return alarming

    def _fire_alarm(self, transition: bool | None) -> None:
        if transition is None or self.on_alarm is None:
            return
        try:
            self.on_alarm(transition, self.depth(), self.max_items)
        except Exception:
            log.exception("outbox alarm callback failed")

    def _stopping(self) -> bool:
        return self.stop.is_set() or self._closing.is_set()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when it slept the whole time."""
        end = time.monotonic() + seconds
        while not self._stopping():
            left = end - time.monotonic()
            if left <= 0:
                return True
            self._closing.wait(min(left, self.poll_s))
        return False

    def _backoff(self, failures: int) -> float:
        d = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(max(failures - 1, 0), 30))
        return d * self._rng.uniform(0.5, 1.0)

    def _maybe_vacuum(self) -> None:
        """When idle, return freed pages to the file system (at most once a minute; caller holds the lock)."""
        now = time.monotonic()
        if now - self._vacuumed_at < VACUUM_EVERY_S:
            return
        self._vacuumed_at = now
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        if free > VACUUM_MIN_FREE_PAGES:
            self._db.execute("PRAGMA incremental_vacuum")

    def _candidates(self, now: float) -> list[int]:
        """Rows eligible now: the lowest pending seq of each event id, oldest first, not backing off."""
        waiting = sum(1 for due, _ in self._retry_at.values() if due > now)
        rows = self._db.execute(
            "SELECT m.id FROM messages m WHERE NOT EXISTS"
            " (SELECT 1 FROM messages p WHERE p.event_id = m.event_id AND p.seq < m.seq)"
            " ORDER BY m.id LIMIT ?",
            (self.batch_max + waiting,),
        ).fetchall()
        out = []
        for (row_id,) in rows:
            due = self._retry_at.get(row_id)
            if due is None or due[0] <= now:
                out.append(int(row_id))
        return out[: self.batch_max]

    def _run(self) -> None:
        try:
            while not self._stopping():
                try:
                    self._wake.clear()
                    with self._lock:
                        if self._closed:
                            return
                        batch = self._candidates(time.monotonic())
                        if not batch:
                            self._maybe_vacuum()
                    if not batch:
                        self._wake.wait(self.poll_s)
                        continue
                    if len(batch) > 1 and isinstance(self.sink, BatchEventSink) and self.sink.batching:
                        done = self._deliver_many(batch)
                        if done is False and not self._sleep(self._backoff(self._fail_streak)):
                            return
                        if done is not None:
                            continue
                        # None: the sink cannot batch now; the same rows go one by one below
                    for row_id in batch:
                        if self._stopping():
                            return
                        if not self._deliver(row_id) and not self._sleep(self._backoff(self._fail_streak)):
                            return
                except sqlite3.ProgrammingError:
                    return  # the spool was closed under us (close() timed out earlier)
                except Exception:
                    log.exception("outbox sender error; retrying")
                    if not self._sleep(max(self.backoff_base_s, 0.5)):
                        return
        finally:
            if self._closing.is_set():
                self._close_db()

    def _deliver(self, row_id: int) -> bool:
        """Try one message; False after a transient failure (the caller backs off)."""
        todo = self._load([row_id])
        if not todo:
            return True
        _, _, event, files = todo[0]
        result: BaseException | None = None
        try:
            self.sink.send(event, files)
        except Exception as e:
            if not isinstance(e, SinkError):
                log.exception("sink raised an unexpected error for %s#%d; will retry", event.id, event.seq)
            result = e
        return self._settle(todo, [result])

    def _deliver_many(self, row_ids: list[int]) -> bool | None:
        """Try several messages in one ``send_batch``; False when none went through and some failed
        transiently (the caller backs off), None when the sink sent nothing because it cannot batch now
        (``BatchUnsupported``). Each outcome is settled as ``_deliver`` settles one."""
        todo = self._load(row_ids)
        if not todo:
            return True
        assert isinstance(self.sink, BatchEventSink)
        try:
            results: list[BaseException | None] = list(
                self.sink.send_batch([(event, files) for _, _, event, files in todo])
            )
            if len(results) != len(todo):
                raise RuntimeError(f"send_batch answered {len(results)} outcomes for {len(todo)} messages")
        except BatchUnsupported:
            return None
        except Exception as e:
            if not isinstance(e, SinkError):
                log.exception("sink raised an unexpected error for a batch of %d; will retry", len(todo))
            results = [e] * len(todo)
        return self._settle(todo, results)

    def _load(self, row_ids: list[int]) -> list[tuple[int, int, Event, dict[str, bytes]]]:
        """The messages still spooled among ``row_ids``, in that order: (row id, attempts, event, files).
        Rows dropped meanwhile (by the bound) are skipped; unreadable ones go to the dead letters."""
        marks = ",".join("?" * len(row_ids))
        with self._lock:
            if self._closed:
                return []
            rows = {
                int(r[0]): (r[1], int(r[2]))
                for r in self._db.execute(
                    f"SELECT id, body, attempts FROM messages WHERE id IN ({marks})", row_ids
                )
            }
            files: dict[int, dict[str, bytes]] = {i: {} for i in rows}
            for r in self._db.execute(
                f"SELECT message, name, data FROM files WHERE message IN ({marks}) ORDER BY message, ord",
                row_ids,
            ):
                files[int(r[0])][r[1]] = bytes(r[2])
            for gone in set(row_ids) - set(rows):
                self._retry_at.pop(gone, None)
        todo: list[tuple[int, int, Event, dict[str, bytes]]] = []
        for row_id in row_ids:
            if row_id not in rows:
                continue
            body, attempts = rows[row_id]
            try:
                todo.append((row_id, attempts, Event.model_validate_json(body), files[row_id]))
            except ValueError as e:
                self._to_dead(row_id, f"unreadable message: {e}"[:2000], attempts)
        return todo

    def _settle(
        self, todo: list[tuple[int, int, Event, dict[str, bytes]]], results: list[BaseException | None]
    ) -> bool:
        """Delete what the sink acknowledged, move what it refused for good to the dead letters, schedule
        retries for the rest; False when nothing went through and something failed transiently."""
        acked: list[int] = []
        failed: list[tuple[int, str]] = []
        for (row_id, attempts, event, _), res in zip(todo, results, strict=True):
            if res is None:
                acked.append(row_id)
            elif isinstance(res, PermanentSinkError):
                self._to_dead(row_id, str(res)[:2000] or type(res).__name__, attempts + 1)
            else:
                err = (str(res) or type(res).__name__)[:2000]
                log.info("delivery of %s#%d failed (%s); will retry", event.id, event.seq, err)
                failed.append((row_id, err))
        with self._lock:
            now = time.monotonic()
            for row_id, err in failed:
                _, n = self._retry_at.get(row_id, (0.0, 0))
                self._retry_at[row_id] = (now + self._backoff(n + 1), n + 1)
                self._last_error = err
            for row_id in acked:
                self._retry_at.pop(row_id, None)
            self._fail_streak = self._fail_streak + 1 if failed and not acked else 0
            if self._closed:
                return True
            with self._tx() as db:
                db.executemany(
                    "UPDATE messages SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                    [(err, row_id) for row_id, err in failed],
                )
                if acked:
                    cur = db.execute(
                        f"DELETE FROM messages WHERE id IN ({','.join('?' * len(acked))}) RETURNING nbytes",
                        acked,
                    )
                    removed = cur.fetchall()
                    self._depth -= len(removed)
                    self._bytes -= sum(int(g[0]) for g in removed)
            transition = self._update_alarm()
            self._changed.notify_all()
        self._fire_alarm(transition)
        return bool(acked) or not failed

    def _to_dead(self, row_id: int, error: str, attempts: int) -> None:
        with self._lock:
            self._retry_at.pop(row_id, None)
            if self._closed:
                return
            with self._tx() as db:
                row = db.execute(
                    "SELECT event_id, seq, type, state, body, created_at, nbytes FROM messages WHERE id = ?",
                    (row_id,),
                ).fetchone()
                if row is None:
                    return
                cur = db.execute(
                    "INSERT INTO dead (event_id, seq, type, state, body, error, attempts, created_at,"
                    " failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row[0], row[1], row[2], row[3], row[4], error, attempts, row[5], time.time()),
                )
                db.execute(
                    "INSERT INTO dead_files (dead, ord, name, data)"
                    " SELECT ?, ord, name, data FROM files WHERE message = ?",
                    (cur.lastrowid, row_id),
                )
                db.execute("DELETE FROM messages WHERE id = ?", (row_id,))
            self._depth -= 1
            self._bytes -= int(row[6])
            transition = self._update_alarm()
            self._changed.notify_all()
        log.error("outbox: %s#%d rejected for good, moved to dead letters: %s", row[0], row[1], error)
        self._fire_alarm(transition)
