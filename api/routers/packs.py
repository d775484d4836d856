"""Evidence packs for the traffic police: one violation as a ZIP, and a bulk ZIP of packs for a time range.

The pack format (manifest.json, evidence/<name>, SHA256SUMS) and its verifier live in
``pipeline.evidence_pack``; ``pingan verify-pack FILE.zip`` checks a pack offline. Every export is written to
the audit log with the pack's chain hash.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from api.auth import Principal
from api.errors import NotFound, Unprocessable
from api.runtime import Runtime, RuntimeDep
from api.store import EventFilter, EventView, Scope, encode_cursor
from pipeline.evidence import sha256_hex
from pipeline.evidence_pack import build_manifest, pack_bytes

from .common import EventId, Reader, camera_names

router = APIRouter(prefix="/api", tags=["violations"])
PARKING = frozenset({"illegal_parking"})
EXPORT_MAX_PACKS = 500
EXPORT_MAX_BYTES = 1024 * 1024 * 1024  # one bulk download stays under 1 GiB; continue with the next cursor


def pack_scope(who: Principal) -> Scope:
    """Police and admins see every violation of their scope; operators only those of their cameras / grids."""
    return Scope(cameras=who.scope.cameras, grids=who.scope.grids, types=PARKING)


def _images(view: EventView) -> list[dict[str, Any]]:
    """The evidence in the event's own order (its latest message), then any older names it no longer lists."""
    rows = {e["name"]: e for e in view.evidence}
    order = [str(e["name"]) for e in view.payload.get("evidence") or [] if e.get("name") in rows]
    order += [n for n in rows if n not in order]
    return [rows[n] for n in order]


def build_pack(rt: Runtime, view: EventView, who: Principal, scope: Scope) -> tuple[bytes, dict[str, Any]]:
    """The ZIP of one violation and its manifest. Files missing on disk are listed as not present (the pack
    then fails verification, which is the truth)."""
    images = _images(view)
    files: dict[str, bytes] = {}
    for im in images:
        if not im["stored"]:
            continue
        found = rt.store.get_evidence(view.id, scope, im["name"])
        if found is None:
            continue
        try:
            files[im["name"]] = found[1].read_bytes()
        except OSError:
            continue
    manifest = build_manifest(
        view.payload,
        images,
        present=files,
        camera_name=camera_names(rt).get(str(view.payload["camera_id"])),
        timezone=rt.settings.timezone,
        exported_at=datetime.now(UTC),
        exported_by=who.name,
        site=rt.settings.site_name,
    )
    manifest["disposition"] = view.disposition
    return pack_bytes(manifest, files), manifest


@router.get("/violations/{event_id}/pack", response_class=Response)
def evidence_pack(event_id: EventId, who: Reader, rt: RuntimeDep) -> Response:
    """One violation as a ZIP: manifest.json (plate, violation code, device, location, times, dwell, images
    with sha256, chain hash), evidence/<name>, SHA256SUMS. Police and admins; operators within their scope."""
    scope = pack_scope(who)
    view = rt.store.get_event(event_id, scope)
    if view is None:
        raise NotFound("no such violation")
    data, manifest = build_pack(rt, view, who, scope)
    rt.store.audit(who.name, who.role, "export", "event", event_id, remark=manifest["chain_hash"])
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="violation-{event_id}.zip"',
            "Cache-Control": "no-store",
            "X-Pingan-Chain-Hash": manifest["chain_hash"],
        },
    )


class _Chunks(io.RawIOBase):
    """An unseekable sink for zipfile: what is written is handed out by :meth:`take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._parts.append(data)
        return len(data)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


def _export_stream(
    rt: Runtime, views: list[EventView], who: Principal, scope: Scope, meta: dict[str, Any]
) -> Iterator[bytes]:
    import zipfile

    sink = _Chunks()
    index: list[dict[str, Any]] = []
    sums: list[str] = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for view in views:
            data, manifest = build_pack(rt, view, who, scope)
            name = f"packs/violation-{view.id}.zip"
            zf.writestr(name, data)
            digest = sha256_hex(data)
            sums.append(f"{digest}  {name}")
            index.append(
                {
                    "violation_id": view.id,
                    "file": name,
                    "sha256": digest,
                    "chain_hash": manifest["chain_hash"],
                    "start_time": manifest["start_time"],
                    "plate_text": manifest["plate_text"],
                }
            )
            yield sink.take()
        doc = json.dumps({**meta, "count": len(index), "packs": index}, ensure_ascii=False, indent=2).encode()
        zf.writestr("index.json", doc)
        sums.append(f"{sha256_hex(doc)}  index.json")
        zf.writestr("SHA256SUMS", "\n".join(sums) + "\n")
    yield sink.take()


@router.get("/violations/export", response_class=StreamingResponse)
def export_packs(
    who: Reader,
    rt: RuntimeDep,
    since: datetime,
    until: datetime,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=520, pattern=r"^[A-Za-z0-9_/-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=EXPORT_MAX_PACKS)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> StreamingResponse:
    """Evidence packs of the violations that started in [since, until), newest first, as one streamed ZIP:
    packs/violation-<id>.zip, index.json, SHA256SUMS. At most ``limit`` packs and about 1 GiB; when more
    remain, the ``X-Pingan-Next-Cursor`` header continues the range."""
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    if until <= since:
        raise Unprocessable("until must be after since")
    scope = pack_scope(who)
    flt = EventFilter(type="illegal_parking", camera_id=camera_id, grid=grid, since=since, until=until)
    views, nxt = rt.store.list_events(flt, scope, limit, cursor)
    total = 0
    for n, view in enumerate(views):
        size = sum(int(e["size"] or 0) for e in view.evidence if e["stored"])
        if n and total + size > EXPORT_MAX_BYTES:  # one pack always goes, however large
            last = views[n - 1]
            nxt = encode_cursor(datetime.fromisoformat(last.payload["started_at"]), last.id)
            views = views[:n]
            break
        total += size
    meta = {
        "since": since.astimezone(UTC).isoformat(),
        "until": until.astimezone(UTC).isoformat(),
        "next_cursor": nxt,
        "exported_by": who.name,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    remark = json.dumps({"since": meta["since"], "until": meta["until"], "ids": [v.id for v in views]})
    rt.store.audit(who.name, who.role, "export_bulk", "violations", f"{len(views)} packs", remark=remark)
    headers = {
        "Content-Disposition": 'attachment; filename="violations-export.zip"',
        "Cache-Control": "no-store",
        "X-Pingan-Count": str(len(views)),
    }
    if nxt:
        headers["X-Pingan-Next-Cursor"] = nxt
    return StreamingResponse(
        _export_stream(rt, views, who, scope, meta), media_type="application/zip", headers=headers
    )
