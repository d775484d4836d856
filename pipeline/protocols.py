"""The I/O seams of the pipeline. Each has a fake in tests/fakes.py."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from pipeline.detections import Detections
from pipeline.errors import SinkError
from pipeline.events import Event


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame. ``ts`` is capture time in epoch seconds, derived from the stream's own timestamps
    (anchored once per connection), so it is monotonic within a connection and rules may difference it."""

    image: npt.NDArray[np.uint8]  # H×W×3 BGR
    ts: float
    index: int
    keyframe: bool = False
    # The packet gate (pipeline/packet_gate.py) let this keyframe go undecoded: ``image`` is the last decoded
    # picture, not this moment's. Such frames advance time only; they are never evidence.
    carried: bool = False
    motion: float | None = None  # bytes per P-frame since the previous decoded keyframe (keyframe-only mode)


class SourceState(StrEnum):
    CONNECTING = "connecting"
    RUNNING = "running"
    STALLED = "stalled"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class SourceStatus:
    state: SourceState
    since: float  # time.monotonic() of the last state change
    reason: str | None = None  # credential-masked
    last_frame_ts: float | None = None
    fps: float = 0.0
    frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    keyframe_interval_s: float | None = None  # the stream's, once learnt
    decode: str | None = None  # "keyframes" (keyframe-only) | "every_frame", once the interval is known


@runtime_checkable
class FrameSource(Protocol):
    """Yields frames at (about) the requested rate; reconnects by itself; never raises on stream faults."""

    def frames(self) -> Iterator[Frame]: ...

    def status(self) -> SourceStatus: ...

    def close(self) -> None: ...


@runtime_checkable
class Detector(Protocol):
    name: str
    sha256: str | None

    def detect(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]: ...


@runtime_checkable
class EventSink(Protocol):
    """Delivers one event (and its evidence files). Raises SinkError when it could not; idempotent by id."""

    def send(self, event: Event, files: dict[str, bytes]) -> None: ...


@runtime_checkable
class BatchEventSink(EventSink, Protocol):
    """An EventSink that can also deliver several events at once (the outbox uses it for a backlog).

    ``send_batch`` returns one outcome per item, in order: None when acknowledged, else the SinkError
    (transient) or PermanentSinkError (rejected for good) ``send`` would have raised for it alone. It
    raises SinkError when nothing could be delivered (the whole batch is then transient). ``batching`` is
    False while the sink would send one message per request anyway (the caller then sends them singly)."""

    @property
    def batching(self) -> bool: ...

    def send_batch(self, items: Sequence[tuple[Event, dict[str, bytes]]]) -> list[SinkError | None]: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
