"""Evidence stills: workers upload the bytes an event declared (sha256-checked); readers fetch by event."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from api.errors import Forbidden, NotFound
from api.http import require_content_type
from api.runtime import RuntimeDep
from api.schemas import PutEvidencePublic

from .common import EventId, EvidenceName, Reader, Worker

router = APIRouter(prefix="/api", tags=["evidence"])
EVIDENCE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
_MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}


async def _raw_body(request: Request) -> bytes:
    require_content_type(request, *EVIDENCE_TYPES)
    return await request.body()


@router.put("/events/{event_id}/evidence/{name}", status_code=201, response_model=PutEvidencePublic)
def put_evidence(
    event_id: EventId,
    name: EvidenceName,
    who: Worker,
    data: Annotated[bytes, Depends(_raw_body)],
    rt: RuntimeDep,
    response: Response,
) -> PutEvidencePublic:
    view = rt.store.get_event(event_id)
    if view is None:
        raise NotFound("no such event (post the event before its evidence)")
    if not who.may_write(str(view.payload["camera_id"])):
        raise Forbidden("this key may not write evidence for that camera")
    status = rt.store.put_evidence(event_id, name, data)
    if status == "duplicate":
        response.status_code = 200
    return PutEvidencePublic(
        event_id=event_id, name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), status=status
    )


@router.get("/events/{event_id}/evidence/{name}", response_class=FileResponse)
def get_evidence(event_id: EventId, name: EvidenceName, who: Reader, rt: RuntimeDep) -> FileResponse:
    found = rt.store.get_evidence(event_id, who.scope, name)
    if found is None:
        raise NotFound("no such evidence")
    row, path = found
    media_type = _MEDIA_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    return FileResponse(
        path,
        media_type=media_type,
        headers={
            "Cache-Control": "private, max-age=86400, immutable",
            "ETag": f'"{row["sha256"]}"',
            "Content-Disposition": f'inline; filename="{name}"',
        },
    )
