"""False alarms for model improvement: ``GET /api/false-alarms/export?since=&until=`` (admin) → streamed ZIP.

Events whose disposition is ``false_alarm`` and that started in [since, until), newest first:

- ``false_alarms.jsonl``: one JSON object a line: the event (as ``GET /api/events/{id}`` shows it, model and
  detected object included), ``remark`` / ``marked_by`` / ``marked_at`` of the latest false-alarm mark, and
  ``files``: the evidence in the ZIP (``evidence/<event id>/<name>``);
- ``evidence/<event id>/<name>``: the stored stills (JPEG);
- ``SHA256SUMS``.

At most ``limit`` events (≤ 1000); when more remain, ``X-Pingan-Next-Cursor`` continues the range. The export
is written to the audit log.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.auth import Principal, require
from api.errors import Unprocessable
from api.runtime import Runtime, RuntimeDep
from api.store import EVERYTHING, EventFilter, EventView
from pipeline.evidence import sha256_hex

from .common import event_public
from .packs import _Chunks

router = APIRouter(prefix="/api", tags=["false-alarms"])
Admin = Annotated[Principal, Depends(require("admin"))]
EXPORT_MAX = 1000


def _mark(rt: Runtime, event_id: str) -> dict[str, Any]:
    marks = [h for h in rt.store.history("event", event_id) if h["to_state"] == "false_alarm"]
    if not marks:
        return {"remark": None, "marked_by": None, "marked_at": None}
    last = marks[-1]
    return {"remark": last["remark"], "marked_by": last["actor"], "marked_at": last["at"].isoformat()}


def _stream(rt: Runtime, views: list[EventView], meta: dict[str, Any]) -> Iterator[bytes]:
    sink = _Chunks()
    sums: list[str] = []
    lines: list[bytes] = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for view in views:
            files = []
            for e in view.evidence:
                if not e["stored"]:
                    continue
                found = rt.store.get_evidence(view.id, EVERYTHING, e["name"])
                if found is None:
                    continue
                try:
                    data = found[1].read_bytes()
                except OSError:
                    continue
                name = f"evidence/{view.id}/{e['name']}"
                zf.writestr(name, data)
                sums.append(f"{sha256_hex(data)}  {name}")
                files.append({"file": name, "name": e["name"], "kind": e["kind"], "sha256": e["sha256"]})
            record = {
                "event": event_public(view, rt).model_dump(mode="json", exclude={"evidence"}),
                **_mark(rt, view.id),
                "files": files,
            }
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            yield sink.take()
        doc = b"".join(lines)
        zf.writestr("false_alarms.jsonl", doc)
        sums.append(f"{sha256_hex(doc)}  false_alarms.jsonl")
        info = json.dumps({**meta, "count": len(views)}, ensure_ascii=False, indent=2).encode()
        zf.writestr("export.json", info)
        sums.append(f"{sha256_hex(info)}  export.json")
        zf.writestr("SHA256SUMS", "\n".join(sums) + "\n")
    yield sink.take()


@router.get("/false-alarms/export", response_class=StreamingResponse)
def export_false_alarms(
    who: Admin,
    rt: RuntimeDep,
    since: datetime,
    until: datetime,
    type: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    limit: Annotated[int, Query(ge=1, le=EXPORT_MAX)] = 500,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> StreamingResponse:
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    if until <= since:
        raise Unprocessable("until must be after since")
    flt = EventFilter(type=type, disposition="false_alarm", since=since, until=until)
    views, nxt = rt.store.list_events(flt, EVERYTHING, limit, cursor)
    meta = {
        "since": since.astimezone(UTC).isoformat(),
        "until": until.astimezone(UTC).isoformat(),
        "next_cursor": nxt,
        "exported_by": who.name,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    remark = json.dumps({"since": meta["since"], "until": meta["until"], "count": len(views)})
    rt.store.audit(who.name, who.role, "export_false_alarms", "events", f"{len(views)} events", remark=remark)
    headers = {
        "Content-Disposition": 'attachment; filename="false-alarms.zip"',
        "Cache-Control": "no-store",
        "X-Pingan-Count": str(len(views)),
    }
    if nxt:
        headers["X-Pingan-Next-Cursor"] = nxt
    return StreamingResponse(_stream(rt, views, meta), media_type="application/zip", headers=headers)
