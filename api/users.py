"""User administration used by the CLI (``pingan users add``) and the embedded demo's admin account."""

from __future__ import annotations

import re
from collections.abc import Iterable

from api.auth import USER_ROLES, hash_password, verify_password
from api.db import make_engine, migrate
from api.settings import Settings
from api.store import Store

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
GRID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,7}$")
MIN_PASSWORD_LEN = 10
ADMIN_USERNAME = "admin"


def parse_scope(scope: Iterable[str] | str | None) -> tuple[list[str] | None, list[str] | None]:
    """Scope entries are camera ids (``gate-east``) or grid prefixes (``grid:fangshan`` or any path with a
    slash, ``fangshan/xilu``); a comma-separated string works too. Nothing (or ``*``) means every camera."""
    if scope is None:
        return None, None
    items = [s.strip() for s in (scope.split(",") if isinstance(scope, str) else scope) if s.strip()]
    if not items or items == ["*"]:
        return None, None
    cameras: list[str] = []
    grids: list[str] = []
    for item in items:
        if item.startswith("grid:") or "/" in item:  # camera ids never contain "/"
            g = item.removeprefix("grid:").strip("/")
            if not GRID_RE.match(g):
                raise ValueError(f"not a grid path: {item!r}")
            grids.append(g)
        else:
            cameras.append(item.removeprefix("camera:"))
    return (sorted(set(cameras)) or None), (sorted(set(grids)) or None)


def _check(username: str, password: str, role: str) -> None:
    if not USERNAME_RE.match(username):
        raise ValueError("username: letters, digits and . _ @ - only, up to 64 characters")
    if len(password) < MIN_PASSWORD_LEN:
        raise ValueError(f"password needs at least {MIN_PASSWORD_LEN} characters")
    if role not in USER_ROLES:
        raise ValueError(f"role must be one of {', '.join(USER_ROLES)}")


def _with_store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url)
    migrate(engine)
    return Store(engine, settings.media_dir)


def add_user(
    settings: Settings, username: str, password: str, role: str, scope: Iterable[str] | str | None = None
) -> bool:
    """Create a user, or replace the password/role/scope of an existing one. Returns True when created.
    Raises ValueError on a bad name, short password, unknown role or bad scope."""
    _check(username, password, role)
    cameras, grids = parse_scope(scope)
    if role in ("admin",):
        cameras, grids = None, None
    store = _with_store(settings)
    try:
        created = store.upsert_user(username, hash_password(password), role, cameras, grids)
        store.audit("cli", "admin", "user_add" if created else "user_update", "user", username, remark=role)
        return created
    finally:
        store.engine.dispose()


def ensure_admin(settings: Settings, password: str) -> None:
    """Make sure the user ``admin`` (role admin) exists and logs in with ``password``: created if missing,
    its password reset if it differs (sessions then end); nothing changes when it already matches."""
    _check(ADMIN_USERNAME, password, "admin")
    store = _with_store(settings)
    try:
        user = store.user(ADMIN_USERNAME)
        fine = user is not None and user["role"] == "admin" and not user["disabled"]
        if fine and verify_password(user["password_hash"] if user else None, password):
            return
        created = store.upsert_user(ADMIN_USERNAME, hash_password(password), "admin", None, None)
        store.audit("cli", "admin", "user_add" if created else "password_reset", "user", ADMIN_USERNAME)
    finally:
        store.engine.dispose()


def admin_exists(settings: Settings) -> bool:
    store = _with_store(settings)
    try:
        return store.has_role("admin")
    finally:
        store.engine.dispose()
