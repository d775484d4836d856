"""What the app holds while it runs: settings, store, broadcaster; requests reach it via ``get_runtime``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.broadcast import Broadcaster
from api.settings import Settings
from api.store import Store


@dataclass
class Runtime:
    settings: Settings
    store: Store
    broadcaster: Broadcaster


def get_runtime(request: Request) -> Runtime:
    rt = request.app.state.pingan
    assert isinstance(rt, Runtime)
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
