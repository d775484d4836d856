"""Live feed (Server-Sent Events): stored messages as they arrive, scoped to what the reader may see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.auth import Principal
from api.broadcast import CLOSE, Message
from api.runtime import RuntimeDep

from .common import Staff

router = APIRouter(prefix="/api", tags=["live"])


def _filter(who: Principal) -> object:
    def accept(msg: Message) -> bool:
        if msg.kind == "camera":
            return who.role != "police" and who.scope.allows(
                msg.meta.get("camera_id", ""), msg.meta.get("grid")
            )
        return who.scope.allows(msg.meta.get("camera_id", ""), msg.meta.get("grid"), msg.meta.get("type"))

    return accept


@router.get("/events/stream", response_class=StreamingResponse)
async def stream(who: Staff, rt: RuntimeDep) -> StreamingResponse:
    bc = rt.broadcaster
    sub = bc.subscribe(_filter(who))  # type: ignore[arg-type]
    heartbeat = rt.settings.sse_heartbeat_s

    async def frames() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n: connected\n\n"
            while True:
                try:
                    msg = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if msg is CLOSE:
                    yield "event: bye\ndata: {}\n\n"
                    return
                yield msg.text
        finally:
            bc.unsubscribe(sub)

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
