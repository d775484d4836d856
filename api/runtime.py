"""What the app holds while it runs: settings, store, broadcaster; requests reach it via ``get_runtime``."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from api.broadcast import Broadcaster
from api.mqtt import MqttPublisher
from api.settings import Settings
from api.store import Store


class LoginThrottle:
    """Refuse logins for a name after ``limit`` failures within ``window_s`` (in-process, per replica)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def locked(self, username: str) -> bool:
        with self._lock:
            return len(self._recent(username.lower(), time.monotonic())) >= self.limit

    def failed(self, username: str) -> None:
        with self._lock:
            if len(self._fails) > 10_000:  # bounded memory under a spray of names
                self._fails.clear()
            self._recent(username.lower(), time.monotonic()).append(time.monotonic())

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._fails.pop(username.lower(), None)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    broadcaster: Broadcaster
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    mqtt: MqttPublisher = field(default_factory=lambda: MqttPublisher(None))  # api.mqtt; a no-op when off


def get_runtime(request: Request) -> Runtime:
    rt = request.app.state.pingan
    assert isinstance(rt, Runtime)
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
