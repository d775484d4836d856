"""Request (In) and response (Public) models. The event message itself is ``pipeline.events.Event``."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pipeline.events import Event, Finite, ModelRef, TrackedObject, UtcDatetime

CameraState = Literal["connecting", "running", "stalled", "backoff", "stopped"]
Action = Literal["acknowledge", "dispatch", "resolve", "false_alarm", "reopen"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Public(BaseModel):
    model_config = ConfigDict(extra="ignore")


Count = Annotated[int, Field(ge=0, le=2**62)]


# CameraStatusIn's fields that are not stats: columns of their own (``row_values``), and the name, not kept
_CAMERA_COLUMNS = frozenset(
    {
        "name",
        "state",
        "reason",
        "last_frame_at",
        "fps",
        "frames",
        "dropped",
        "reconnects",
    }
)


class CameraStatusIn(_In):
    """What the supervisor reports every few seconds; ``last_frame_at`` as RFC 3339 or epoch seconds."""

    name: Annotated[str, StringConstraints(max_length=128)] | None = None
    state: CameraState
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
    last_frame_at: UtcDatetime | Annotated[Finite, Field(ge=0, le=2**40)] | None = None
    fps: Annotated[Finite, Field(ge=0, le=1000)] = 0.0
    frames: Count = 0
    dropped: Count = 0
    reconnects: Count = 0
    # the stream's keyframe interval and whether keyframes alone are decoded or every frame (a camera whose
    # keyframes come too seldom for its min_detect_fps costs ~4× the CPU)
    keyframe_interval_s: Annotated[Finite, Field(ge=0, le=3600)] | None = None
    decode: Literal["keyframes", "every_frame"] | None = None
    detections: Count | None = None
    gated: Count | None = None
    undecoded: Count | None = None  # keyframes the packet gate let go undecoded
    detector_ms: Annotated[Finite, Field(ge=0, le=3_600_000)] | None = None
    outbox_depth: Count | None = None
    # is the detector keeping up with the camera (pipeline/lag.py): p95 capture → result over the last 30 s,
    # the share of due frames shed undetected, and the verdict: a box past capacity still runs every camera
    result_age_ms: Annotated[Finite, Field(ge=-3_600_000, le=3_600_000)] | None = None
    shed_share: Annotated[Finite, Field(ge=0, le=1)] | None = None
    behind: bool | None = None
    # the main stream, where detection runs on the camera's sub-stream (its stills come from there)
    evidence_state: CameraState | None = None
    evidence_reason: Annotated[str, StringConstraints(max_length=500)] | None = None

    def last_frame(self) -> datetime | None:
        v = self.last_frame_at
        if v is None or isinstance(v, datetime):
            return v
        return datetime.fromtimestamp(v, UTC)

    def stats(self) -> dict[str, Any]:
        """Every reported field beyond the columns a camera row has (a field added above lands here)."""
        return self.model_dump(mode="json", exclude=set(_CAMERA_COLUMNS), exclude_none=True)

    def row_values(self) -> dict[str, Any]:
        """What the store keeps of a report (``Store.put_camera_status``), by HTTP or from the bus alike."""
        return {
            "state": self.state,
            "reason": self.reason,
            "last_frame_at": self.last_frame(),
            "fps": self.fps,
            "frames": self.frames,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "stats": self.stats(),
        }


class DispositionIn(_In):
    action: Action
    remark: Annotated[str, StringConstraints(max_length=1000, strip_whitespace=True)] | None = None


class EventBatchIn(_In):
    """``POST /api/events/batch``: wire-format messages (``pipeline.events.Event``), at most
    ``api.routers.events.BATCH_MAX``."""

    events: list[Event]


class TokenIn(_In):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class TokenPublic(_Public):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class PutEventPublic(_Public):
    id: str
    seq: int
    status: Literal["created", "updated", "stale", "duplicate"]


BatchStatus = Literal["created", "updated", "stale", "duplicate", "rejected"]


class PutEventBatchItemPublic(_Public):
    """The outcome of one message of a batch, in the order sent. ``code`` is what ``POST /api/events`` would
    have answered for it alone: 201 created, 200 updated/stale/duplicate, 403 (camera not this key's),
    409 (id used by another camera or type), 422 (invalid; ``detail`` lists the field paths)."""

    index: int
    id: str | None = None
    seq: int | None = None
    status: BatchStatus
    code: int
    error: str | None = None
    message: str | None = None
    detail: list[dict[str, Any]] | None = None


class PutEventBatchPublic(_Public):
    items: list[PutEventBatchItemPublic]
    counts: dict[BatchStatus, int]


class PutEvidencePublic(_Public):
    event_id: str
    name: str
    sha256: str
    size: int
    status: Literal["created", "duplicate"]


class EvidencePublic(_Public):
    name: str
    kind: str
    sha256: str
    taken_at: datetime
    size: int | None = None
    stored: bool
    url: str | None = None


class AuditPublic(_Public):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    from_state: str | None = None
    to_state: str | None = None
    remark: str | None = None


class EventPublic(_Public):
    id: str
    type: str
    state: str
    camera_id: str
    camera_name: str | None = None
    zone_id: str | None = None
    bin_id: str | None = None
    bin_ids: list[str] = []
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    dwell_s: float
    severity: int = 1
    object: TrackedObject | None = None
    model: ModelRef | None = None
    grid: str | None = None
    violation_code: str | None = None
    seq: int
    disposition: str
    disposition_at: datetime | None = None
    created_at: datetime
    received_at: datetime
    evidence: list[EvidencePublic] = []
    escalated_at: datetime | None = None  # unacknowledged past its SLA (api.sla)


class EventDetailPublic(EventPublic):
    history: list[AuditPublic] = []


class EventPagePublic(_Public):
    items: list[EventPublic]
    next_cursor: str | None = None


class DispositionPublic(_Public):
    event: EventPublic
    entry: AuditPublic


class CameraPublic(_Public):
    id: str
    name: str
    grid: str | None = None
    state: str
    health: Literal["ok", "behind", "degraded", "offline", "unknown"]
    reason: str | None = None
    last_frame_at: datetime | None = None
    fps: float = 0.0
    frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    stats: dict[str, Any] | None = None
    reported_at: datetime | None = None
    state_since: datetime | None = None


class MePublic(_Public):
    username: str
    role: str
    cameras: list[str] | None = None
    grids: list[str] | None = None


class ViolationPublic(_Public):
    """Police view of an illegal-parking event; ``chain_sha256`` binds the record to its evidence hashes."""

    id: str
    camera_id: str
    camera_name: str | None = None
    zone_id: str | None = None
    grid: str | None = None
    violation_code: str | None = None
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    dwell_s: float
    state: str
    plate: str | None = None
    plate_confidence: float | None = None
    disposition: str
    evidence: list[EvidencePublic] = []
    chain_sha256: str


class ViolationPagePublic(_Public):
    items: list[ViolationPublic]
    next_cursor: str | None = None


def chain_hash(record: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of a violation record (its evidence sha256s included)."""

    def _default(o: Any) -> str:
        if isinstance(o, datetime):
            return o.astimezone(UTC).isoformat()
        raise TypeError(type(o).__name__)

    canon = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)
    return hashlib.sha256(canon.encode()).hexdigest()
