"""The NATS JetStream layout both sides agree on (worker: ``pipeline.sinks_nats``; API: ``api.bus_consumer``).

Subjects (``<prefix>`` is ``bus.subject_prefix``, default ``pingan``):

- ``<prefix>.<site>.<camera>.event.<type>`` — one event message (wire format v1 JSON), in the JetStream
  stream ``bus.stream``; header ``Nats-Msg-Id: <event id>:<seq>``: JetStream drops re-sends inside its
  duplicate window;
- ``<prefix>.<site>.<camera>.status`` — camera health, core NATS (best effort, not stored);
- ``<prefix>.<site>.live`` — API replicas republish what they stored (core NATS) so that every replica's live
  feed (SSE) shows it.

Evidence files go to the JetStream Object Store bucket ``<prefix>-evidence`` under ``<event id>/<name>``; the
object store chunks them (128 KiB), so a still is not limited by the server's ``max_payload`` (1 MiB default).
A worker stores the files *before* it publishes the message that lists them, so the API finds them when the
message arrives.

Site and camera ids may contain ``.``, which separates subject tokens; it is written as ``~`` in a subject.
"""

from __future__ import annotations

from typing import Any

EVIDENCE_CHUNK = 128 * 1024
DUPLICATE_WINDOW_S = 600.0
STREAM_MAX_AGE_S = 7 * 86400.0
EVIDENCE_TTL_S = 7 * 86400.0
MSG_ID = "Nats-Msg-Id"


def token(ident: str) -> str:
    """A site or camera id as one subject token."""
    return ident.replace(".", "~")


def untoken(tok: str) -> str:
    return tok.replace("~", ".")


def event_subject(prefix: str, site: str, camera_id: str, type_: str) -> str:
    return f"{prefix}.{token(site)}.{token(camera_id)}.event.{type_}"


def events_filter(prefix: str, site: str | None = None) -> str:
    return f"{prefix}.{token(site) if site else '*'}.*.event.*"


def status_subject(prefix: str, site: str, camera_id: str) -> str:
    return f"{prefix}.{token(site)}.{token(camera_id)}.status"


def status_filter(prefix: str) -> str:
    return f"{prefix}.*.*.status"


def live_subject(prefix: str, site: str) -> str:
    return f"{prefix}.{token(site)}.live"


def evidence_bucket(prefix: str) -> str:
    return f"{prefix}-evidence"


def evidence_key(event_id: str, name: str) -> str:
    return f"{event_id}/{name}"


def msg_id(event_id: str, seq: int) -> str:
    return f"{event_id}:{seq}"


def parse_event_subject(subject: str) -> tuple[str, str, str] | None:
    """``<prefix>.<site>.<camera>.event.<type>`` → (site, camera_id, type), or None when it is not one."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[3] != "event":
        return None
    return untoken(parts[1]), untoken(parts[2]), parts[4]


def parse_status_subject(subject: str) -> tuple[str, str] | None:
    parts = subject.split(".")
    if len(parts) != 4 or parts[3] != "status":
        return None
    return untoken(parts[1]), untoken(parts[2])


async def ensure_stream(js: Any, stream: str, prefix: str, replicas: int = 1) -> None:
    """Create the events stream, or bring an existing one to this configuration (idempotent)."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    cfg = StreamConfig(
        name=stream,
        description="pingan event messages (wire format v1)",
        subjects=[events_filter(prefix)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=STREAM_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            await js.add_stream(cfg)
            return
        except BadRequestError:  # created meanwhile by another process: fall through to the check
            info = await js.stream_info(stream)
    have = info.config
    if (
        sorted(have.subjects or []) != sorted(cfg.subjects or [])
        or have.duplicate_window != cfg.duplicate_window
        or have.max_age != cfg.max_age
        or (have.num_replicas or 1) != replicas
    ):
        await js.update_stream(cfg)


async def ensure_evidence_bucket(js: Any, prefix: str, replicas: int = 1) -> Any:
    """The evidence object store (created when missing)."""
    from nats.js.api import StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError

    bucket = evidence_bucket(prefix)
    try:
        return await js.object_store(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_object_store(
            bucket,
            description="pingan evidence stills, <event id>/<name>",
            ttl=EVIDENCE_TTL_S,
            storage=StorageType.FILE,
            replicas=replicas,
        )
    except BadRequestError:  # created meanwhile
        return await js.object_store(bucket)
