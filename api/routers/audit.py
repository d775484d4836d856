"""The append-only audit log, for admins: dispositions, exports, user and camera administration."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from api.auth import Principal, require
from api.runtime import RuntimeDep
from api.schemas import AuditPublic

router = APIRouter(prefix="/api", tags=["audit"])
Admin = Annotated[Principal, Depends(require("admin"))]


class AuditEntryPublic(AuditPublic):
    target_type: str
    target_id: str


class AuditPagePublic(BaseModel):
    items: list[AuditEntryPublic]
    next_cursor: str | None = None


@router.get("/audit", response_model=AuditPagePublic)
def list_audit(
    who: Admin,
    rt: RuntimeDep,
    target_type: Literal["event", "user", "camera"] | None = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> AuditPagePublic:
    rows = rt.store.audit_page(target_type, target_id, limit + 1, int(cursor) if cursor else None)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPagePublic(
        items=[AuditEntryPublic.model_validate(r) for r in rows],
        next_cursor=str(rows[-1]["id"]) if more and rows else None,
    )
