"""Event wire format v1: the one definition the pipeline emits and the API validates."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

WIRE_VERSION: Literal[1] = 1
# Worker clocks drift; an event stamped further ahead than this is refused as bad input.
MAX_FUTURE_SKEW = timedelta(minutes=5)
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
GRID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,7}$")


class EventType(StrEnum):
    ILLEGAL_PARKING = "illegal_parking"
    BIN_OVERFLOW = "bin_overflow"
    CAMERA_OFFLINE = "camera_offline"


class EventState(StrEnum):
    OPEN = "open"
    UPDATE = "update"
    CLOSED = "closed"


def _aware_utc(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("timestamp needs a time zone (use Z or +08:00)")
    return v.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plate(_Wire):
    text: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    confidence: Annotated[Finite, Field(ge=0, le=1)]


class TrackedObject(_Wire):
    label: Literal["vehicle", "person", "bin", "bin_overflow", "litter"]
    track_id: Annotated[int, Field(ge=-1, le=2**53)]
    confidence: Annotated[Finite, Field(ge=0, le=1)]
    box_xyxy: Annotated[list[Annotated[Finite, Field(ge=0, le=100_000)]], Field(min_length=4, max_length=4)]
    plate: Plate | None = None

    @field_validator("box_xyxy")
    @classmethod
    def _ordered(cls, v: list[float]) -> list[float]:
        if not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError("box must have x1 < x2 and y1 < y2")
        return v


class Evidence(_Wire):
    name: FileName
    taken_at: UtcDatetime
    sha256: Sha256
    kind: Literal["scene", "plate", "before", "after", "overview"]


class ModelRef(_Wire):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sha256: Sha256 | None = None


class Event(_Wire):
    """One lifecycle message of one event; ``id`` is stable across its open/update/closed messages."""

    id: Annotated[
        str,
        StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"),
    ]
    type: EventType
    state: EventState
    camera_id: Ident
    zone_id: Ident | None = None
    bin_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    bin_ids: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=32)
    ] = []
    started_at: UtcDatetime
    updated_at: UtcDatetime
    ended_at: UtcDatetime | None = None
    dwell_s: Annotated[Finite, Field(ge=0, le=10 * 365 * 86400)] = 0.0
    severity: Annotated[int, Field(ge=0, le=3)] = 1
    object: TrackedObject | None = None
    evidence: Annotated[list[Evidence], Field(max_length=32)] = []
    model: ModelRef | None = None
    grid: Annotated[str, StringConstraints(max_length=520)] | None = None
    violation_code: Annotated[str, StringConstraints(max_length=32)] | None = None
    # the zone's allowed dwell (zone.dwell) when the event was made: evidence packs are checked against it
    allowed_dwell_s: Annotated[Finite, Field(ge=0, le=10 * 365 * 86400)] | None = None
    seq: Annotated[int, Field(ge=0, le=2**31)] = 0
    v: Literal[1] = WIRE_VERSION

    @field_validator("grid")
    @classmethod
    def _grid_path(cls, v: str | None) -> str | None:
        if v is not None and not GRID_RE.match(v):
            raise ValueError("grid must be a path like district/street/community/unit")
        return v

    @model_validator(mode="after")
    def _times(self) -> Event:
        if self.updated_at < self.started_at:
            raise ValueError("updated_at is before started_at")
        if self.ended_at is not None and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        if (self.state is EventState.CLOSED) != (self.ended_at is not None):
            raise ValueError("ended_at is set exactly when state is 'closed'")
        if self.started_at > datetime.now(UTC) + MAX_FUTURE_SKEW:
            raise ValueError("started_at lies in the future")
        return self

    def to_wire(self) -> dict[str, Any]:  # (Any: the field `object` shadows the builtin here)
        return self.model_dump(mode="json")


def utc(ts: float) -> datetime:
    """Epoch seconds (frame capture time) to an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)
