"""Camera health: workers report source state; staff read the grid."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from api.errors import Forbidden
from api.http import json_body
from api.runtime import RuntimeDep
from api.schemas import CameraPublic, CameraStatusIn

from .common import CameraId, Staff, WorkerOrAdmin, camera_public

router = APIRouter(prefix="/api", tags=["cameras"])


async def _status_body(request: Request) -> CameraStatusIn:
    return await json_body(request, CameraStatusIn)


@router.get("/cameras", response_model=list[CameraPublic])
def list_cameras(who: Staff, rt: RuntimeDep) -> list[CameraPublic]:
    return [camera_public(r, rt) for r in rt.store.cameras(who.scope)]


@router.put("/cameras/{camera_id}/status", status_code=204, response_class=Response)
def put_status(
    camera_id: CameraId,
    who: WorkerOrAdmin,
    body: Annotated[CameraStatusIn, Depends(_status_body)],
    rt: RuntimeDep,
) -> Response:
    if not who.may_write(camera_id):
        raise Forbidden("this key may not report for that camera")
    values = body.row_values()
    changed, row = rt.store.put_camera_status(camera_id, values)
    if changed and who.role == "admin":
        rt.store.audit(who.name, who.role, "camera_status", "camera", camera_id, to_state=body.state)
    pub = camera_public(row, rt)
    rt.broadcaster.publish("camera", pub.model_dump(mode="json"), {"camera_id": camera_id, "grid": pub.grid})
    return Response(status_code=204)
