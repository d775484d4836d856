"""Fakes for the pipeline's I/O seams (pipeline/protocols.py). Others add theirs here with targeted edits."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PermanentSinkError, SinkError
from pipeline.events import Event


@dataclass
class Delivery:
    event: Event
    files: dict[str, bytes]


@dataclass
class MemorySink:
    """EventSink that keeps what it is given. Thread-safe.

    Failure injection, checked in this order on every ``send``:
    - ``reject(event) -> bool``: True → PermanentSinkError (nothing recorded);
    - ``fail_next``: that many next sends raise SinkError (nothing recorded);
    - ``fail_rate``: probability of a transient SinkError (seeded by ``seed``);
    - ``gate``: when set to a cleared ``threading.Event``, sends block until it is set (slow API).
    ``calls`` counts every attempt; ``deliveries`` holds the acknowledged ones, in order.
    """

    fail_rate: float = 0.0
    seed: int = 0
    fail_next: int = 0
    reject: Callable[[Event], bool] | None = None
    gate: threading.Event | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    calls: int = 0
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self.delivered = threading.Condition(self._lock)

    def send(self, event: Event, files: dict[str, bytes]) -> None:
        if self.gate is not None:
            self.gate.wait(10.0)
        with self._lock:
            self.calls += 1
            if self.reject is not None and self.reject(event):
                raise PermanentSinkError(f"rejected {event.id}#{event.seq}")
            if self.fail_next > 0:
                self.fail_next -= 1
                raise SinkError("injected transient failure")
            if self.fail_rate and self._rng.random() < self.fail_rate:
                raise SinkError("injected random transient failure")
            self.deliveries.append(Delivery(event, dict(files)))
            self.delivered.notify_all()

    def put_status(self, camera_id: str, payload: dict[str, Any]) -> bool:
        with self._lock:
            self.statuses.append((camera_id, dict(payload)))
        return True

    def keys(self) -> list[tuple[str, int]]:
        """(id, seq) of each acknowledged delivery, in delivery order (duplicates kept)."""
        with self._lock:
            return [(d.event.id, d.event.seq) for d in self.deliveries]

    def wait_for(self, n: int, timeout_s: float = 5.0) -> bool:
        with self.delivered:
            return self.delivered.wait_for(lambda: len(self.deliveries) >= n, timeout_s)


class FakeClock:
    """Clock whose time moves only when told: ``advance(s)``. ``time()`` starts at a fixed epoch."""

    def __init__(self, start_time: float = 1_764_144_000.0, start_monotonic: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._wall = start_time
        self._mono = start_monotonic

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time(self) -> float:
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds
