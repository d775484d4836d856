"""Authentication (worker bearer keys, user sessions as signed JWT cookies or bearer tokens) and per-route
rules. Deny by default: every route depends on exactly one rule made by :func:`require`,
:func:`require_page` or :func:`public`; ``create_app`` refuses to build an app with a route that has none."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Request

from api.errors import ApiError, Forbidden, Unauthorized
from api.runtime import Runtime
from api.store import EVERYTHING, Scope

Role = Literal["worker", "operator", "police", "admin"]
USER_ROLES: tuple[str, ...] = ("operator", "police", "admin")
COOKIE = "pingan_session"
CSRF_HEADER = "x-pingan-csrf"
AUTH_ATTR = "__pingan_auth__"
_ALG = "HS256"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
POLICE_TYPES = frozenset({"illegal_parking"})

hasher = PasswordHasher()
_DUMMY_HASH = hasher.hash("pingan-dummy-password-for-timing")


@dataclass(frozen=True)
class Principal:
    kind: Literal["worker", "user"]
    name: str
    role: str
    scope: Scope  # what it may read
    cameras: frozenset[str] | None = None  # worker: cameras it may write for (None: all)
    via: Literal["bearer", "cookie"] = "bearer"

    def may_write(self, camera_id: str) -> bool:
        return self.cameras is None or camera_id in self.cameras


class LoginRedirect(ApiError):
    status, code = 303, "login"


def hash_password(password: str) -> str:
    return hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def issue_token(rt: Runtime, username: str) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": username,
        "iat": int(now.timestamp()),
        "exp": now + timedelta(seconds=rt.settings.session_ttl_s),
    }
    return jwt.encode(claims, rt.settings.secret.get_secret_value(), algorithm=_ALG)


def user_scope(user: dict[str, Any]) -> Scope:
    types = POLICE_TYPES if user["role"] == "police" else None
    if user["role"] == "admin":
        return EVERYTHING
    cams = frozenset(user["cameras"]) if user.get("cameras") else None
    grids = tuple(user["grids"]) if user.get("grids") else None
    return Scope(cameras=cams, grids=grids, types=types)


def _user_from_token(rt: Runtime, token: str, via: Literal["bearer", "cookie"]) -> Principal:
    try:
        claims = jwt.decode(
            token,
            rt.settings.secret.get_secret_value(),
            algorithms=[_ALG],
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError as err:
        raise Unauthorized("session is not valid or has expired") from err
    user = rt.store.user(str(claims["sub"]))
    if user is None or user["disabled"] or user["role"] not in USER_ROLES:
        raise Unauthorized("session is not valid")
    # a password change ends every session issued before it
    if int(claims["iat"]) < int(user["password_changed_at"].timestamp()):
        raise Unauthorized("session ended by a password change")
    return Principal(kind="user", name=user["username"], role=user["role"], scope=user_scope(user), via=via)


def authenticate(request: Request, rt: Runtime) -> Principal | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("use Authorization: Bearer <key>")
        for wk in rt.settings.worker_keys:
            if hmac.compare_digest(wk.key.get_secret_value().encode(), token.encode()):
                return Principal(
                    kind="worker",
                    name=wk.name,
                    role="worker",
                    scope=Scope(cameras=frozenset()),
                    cameras=wk.cameras,
                )
        if token.count(".") == 2:
            return _user_from_token(rt, token, "bearer")
        raise Unauthorized("unknown key")
    cookie = request.cookies.get(COOKIE)
    if cookie:
        principal = _user_from_token(rt, cookie, "cookie")
        # cookies ride along on cross-site requests; a custom header cannot (no CORS here), so require it
        if request.method not in _SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise Forbidden(f"missing {CSRF_HEADER} header")
        return principal
    return None


def require(*roles: Role) -> Callable[[Request], Principal]:
    """Dependency: the caller must be authenticated with one of ``roles`` (401 if not authenticated, 403 if
    another role)."""
    if not roles:
        raise ValueError("name at least one role")

    def rule(request: Request) -> Principal:
        rt = request.app.state.pingan
        principal = authenticate(request, rt)
        if principal is None:
            raise Unauthorized()
        if principal.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}")
        request.state.principal = principal
        return principal

    setattr(rule, AUTH_ATTR, ("roles", roles))
    rule.__name__ = f"require_{'_'.join(roles)}"
    return rule


def require_page(*roles: Role) -> Callable[[Request], Principal]:
    """Like :func:`require` for HTML pages: sends browsers without a session to the login form."""
    inner = require(*roles)

    def rule(request: Request) -> Principal:
        try:
            return inner(request)
        except Unauthorized as err:
            raise LoginRedirect("login required", headers={"Location": "/login"}) from err

    setattr(rule, AUTH_ATTR, ("page", roles))
    rule.__name__ = f"page_{'_'.join(roles)}"
    return rule


def public(request: Request) -> None:
    """Dependency marking a route as open to everyone (health check, login form)."""
    return None


setattr(public, AUTH_ATTR, ("public",))


def auth_rules(dependant: Any) -> list[tuple[Any, ...]]:
    """The auth rules found anywhere in a route's dependency tree."""
    found: list[tuple[Any, ...]] = []
    stack = [dependant]
    while stack:
        d = stack.pop()
        rule = getattr(d.call, AUTH_ATTR, None) if d.call is not None else None
        if rule is not None:
            found.append(rule)
        stack.extend(d.dependencies)
    return found
