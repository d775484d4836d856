"""Request plumbing: body size limits before reading, strict JSON bodies, security headers."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType, clean_errors

M = TypeVar("M", bound=BaseModel)
_EVIDENCE_PATH = re.compile(r"^/api/events/[^/]+/evidence/[^/]+$")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class LimitsMiddleware:
    """Refuses bodies over the limit (413) from Content-Length before reading, and counts streamed bodies."""

    def __init__(self, app: ASGIApp, max_json_bytes: int, max_evidence_bytes: int) -> None:
        self.app = app
        self.max_json = max_json_bytes
        self.max_evidence = max_evidence_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_evidence if _EVIDENCE_PATH.match(scope["path"]) else self.max_json
        declared = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    await _plain(send, 400, b'{"error":"bad_request","message":"bad Content-Length"}')
                    return
        if declared is not None and declared > limit:
            body = json.dumps(
                {"error": "payload_too_large", "message": f"body exceeds {limit} bytes"}
            ).encode()
            await _plain(send, 413, body)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"body exceeds {limit} bytes")
            return msg

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg["headers"] = list(msg.get("headers", [])) + [
                    h for h in SECURITY_HEADERS if h[0] not in have
                ]
            await send(msg)

        await self.app(scope, limited, with_headers)


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def require_content_type(request: Request, *accepted: str) -> None:
    raw = request.headers.get("content-type", "")
    mt, _, params = raw.partition(";")
    mt = mt.strip().lower()
    if mt not in accepted:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(accepted)}")
    charset = re.search(r"charset\s*=\s*\"?([A-Za-z0-9_-]+)", params)
    if charset and charset.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("only UTF-8 bodies are accepted")


async def json_text(request: Request) -> tuple[str, dict[str, Any]]:
    """A strict JSON object body: (its text, its parsed value). 415 wrong type, 400 not UTF-8 / not JSON
    (NaN, Infinity refused), 422 not an object."""
    require_content_type(request, "application/json")
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest("body is not valid UTF-8") from err
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise BadRequest("body is not valid JSON") from err
    if not isinstance(data, dict):
        raise Unprocessable("body must be a JSON object")
    return text, data


async def json_body(request: Request, model: type[M]) -> M:
    """Strict JSON body (:func:`json_text`), then strict pydantic validation: 422 invalid."""
    text, _ = await json_text(request)
    try:
        # strict: no "1" -> 1 coercion; in JSON mode strict still reads RFC 3339 strings as datetimes
        return model.model_validate_json(text, strict=True)
    except ValidationError as err:
        raise Unprocessable("body is not valid", detail=clean_errors(err.errors())) from err
