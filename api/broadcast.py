"""In-process fan-out of stored messages to live (SSE) subscribers.

Each subscriber has a bounded queue; when a slow client lets it fill, the oldest message is dropped (the
client re-reads the list on reconnect anyway). ``publish`` may be called from worker threads (sync routes
run in a thread pool); delivery happens on the event loop the broadcaster was bound to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    id: int
    kind: str  # SSE "event:" name: event | camera | disposition
    text: str  # the whole SSE frame, serialised once for all subscribers
    meta: dict[str, Any]  # camera_id, grid, type: what scopes filter on


CLOSE = Message(id=-1, kind="close", text="", meta={})


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Message]
    accept: Callable[[Message], bool]
    dropped: int = 0
    closed: bool = field(default=False)


class Broadcaster:
    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def listening(self) -> bool:
        """Whether a published message would reach anyone (callers may skip building it otherwise)."""
        return bool(self._subs) and self._loop is not None and not self.closed

    def subscribe(self, accept: Callable[[Message], bool] = lambda _m: True) -> Subscription:
        sub = Subscription(queue=asyncio.Queue(maxsize=self.queue_size), accept=accept)
        if self.closed:
            sub.queue.put_nowait(CLOSE)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, kind: str, data: dict[str, Any], meta: dict[str, Any]) -> None:
        """Thread-safe; a no-op before the app has started or after it has stopped."""
        loop = self._loop
        if loop is None or self.closed or loop.is_closed():
            return
        with self._lock:
            mid = next(self._ids)
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
        msg = Message(id=mid, kind=kind, text=f"id: {mid}\nevent: {kind}\ndata: {body}\n\n", meta=meta)
        if _running_loop() is loop:
            self._fanout(msg)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
                loop.call_soon_threadsafe(self._fanout, msg)

    def _fanout(self, msg: Message) -> None:
        for sub in list(self._subs):
            if msg is not CLOSE and not sub.accept(msg):
                continue
            q = sub.queue
            if q.full():
                try:
                    q.get_nowait()
                    sub.dropped += 1
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(msg)

    def close(self) -> None:
        """End every stream (shutdown). Thread-safe."""
        if self.closed:
            return
        self.closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            self._fanout(CLOSE)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fanout, CLOSE)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
