"""Deny by default (route enumeration), sessions, CSRF, secrets, users."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import SecretStr, ValidationError
from starlette.routing import Mount

from api.app import PUBLIC_MOUNTS, PUBLIC_PATHS, app_routes, check_route_rules, create_app
from api.auth import AUTH_ATTR, COOKIE, auth_rules
from api.settings import Settings, settings_from_config
from api.users import add_user, admin_exists, ensure_admin, parse_scope
from pipeline.config import parse_config
from tests.fixtures.api import PASSWORD, WORKER, make_settings

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def test_every_route_declares_exactly_one_auth_rule(api_settings):
    app = create_app(api_settings)
    routes = app_routes(app)
    api_routes = [r for r in routes if isinstance(r, APIRoute)]
    assert len(api_routes) >= 15
    public = set()
    for route in routes:
        if isinstance(route, Mount):
            assert route.path in PUBLIC_MOUNTS
            continue
        assert isinstance(route, APIRoute), route
        rules = auth_rules(route.dependant)
        assert len(rules) == 1, route.path
        if rules[0][0] == "public":
            public.add(route.path)
        else:
            assert rules[0][1], route.path  # names at least one role
    assert public == {"/healthz", "/login", "/logout", "/api/token", "/favicon.ico"}
    assert public <= PUBLIC_PATHS


def test_app_refuses_a_route_without_rule(api_settings):
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    router = APIRouter()

    @router.get("/api/oops")
    def oops() -> dict[str, str]:
        return {}

    app.include_router(router)
    with pytest.raises(RuntimeError, match="/api/oops"):
        check_route_rules(app)


def test_unauthenticated_requests_are_denied(api_client):
    app = api_client.app
    for route in app_routes(app):
        if not isinstance(route, APIRoute) or route.path in PUBLIC_PATHS:
            continue
        rule = getattr(next(d.call for d in _walk(route.dependant) if hasattr(d.call, AUTH_ATTR)), AUTH_ATTR)
        path = (
            route.path.replace("{event_id}", "0192f1c2-0000-7000-8000-000000000000")
            .replace("{name}", "a.jpg")
            .replace("{camera_id}", "gate-east")
        )
        for method in route.methods:
            r = api_client.request(method, path, follow_redirects=False)
            expected = 303 if rule[0] == "page" else 401
            assert r.status_code == expected, (method, path, r.status_code)


def _walk(dependant):
    stack = [dependant]
    while stack:
        d = stack.pop()
        yield d
        stack.extend(d.dependencies)


def test_public_routes(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok", "database": True}
    assert api_client.head("/healthz").status_code == 200
    assert api_client.get("/login").status_code == 200
    assert api_client.get("/static/app.js").status_code == 200
    r = api_client.get("/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    assert api_client.get("/docs").status_code == 404
    assert api_client.get("/openapi.json").status_code == 404


def test_login_cookie_session_and_csrf(api_client, api_users):
    r = api_client.post(
        "/login", data={"username": "op", "password": "wrong-password"}, follow_redirects=False
    )
    assert (r.status_code, r.headers["location"]) == (303, "/login?failed=1")
    assert COOKIE not in r.cookies
    r = api_client.post("/login", data={"username": "op", "password": PASSWORD}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = api_client.get("/")
    assert page.status_code == 200 and "EventSource" not in page.text and "/static/app.js" in page.text
    assert "content-security-policy" in page.headers
    assert api_client.get("/api/me").json()["role"] == "operator"
    # cookie-authenticated writes need the CSRF header
    r = api_client.post(
        "/api/events/0192f1c2-0000-7000-8000-000000000000/disposition", json={"action": "acknowledge"}
    )
    assert r.status_code == 403
    r = api_client.post(
        "/api/events/0192f1c2-0000-7000-8000-000000000000/disposition",
        json={"action": "acknowledge"},
        headers={"X-Pingan-Csrf": "1"},
    )
    assert r.status_code == 404
    api_client.post("/logout", follow_redirects=False)
    api_client.cookies.clear()
    assert api_client.get("/api/me").status_code == 401


def test_tokens_forged_expired_or_after_password_change(api_client, api_users, api_settings):
    def me(token: str) -> int:
        return api_client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code

    now = datetime.now(UTC)
    forged = jwt.encode(
        {"sub": "admin", "iat": int(now.timestamp()), "exp": now + timedelta(hours=1)},
        "another-secret-0123456789-abcdefghijklmnop",
        algorithm="HS256",
    )
    assert me(forged) == 401
    expired = jwt.encode(
        {"sub": "admin", "iat": int(now.timestamp()) - 7200, "exp": now - timedelta(hours=1)},
        SECRET,
        algorithm="HS256",
    )
    assert me(expired) == 401
    none_alg = jwt.encode(
        {"sub": "admin", "iat": int(now.timestamp()), "exp": now + timedelta(hours=1)}, None, algorithm="none"
    )
    assert me(none_alg) == 401
    assert me("a.b.c") == 401
    assert (
        api_client.post("/api/token", json={"username": "op", "password": "nope-nope-nope"}).status_code
        == 401
    )
    assert api_client.post("/api/token", json={"username": "ghost", "password": PASSWORD}).status_code == 401
    token = api_client.post("/api/token", json={"username": "op", "password": PASSWORD}).json()[
        "access_token"
    ]
    assert me(token) == 200
    time.sleep(1.1)  # iat has one-second resolution
    add_user(api_settings, "op", "a-brand-new-password", "operator")
    assert me(token) == 401


def test_secret_must_be_strong(tmp_path):
    for bad in ("short", "x" * 40, "changeme"):
        with pytest.raises(ValidationError):
            make_settings(tmp_path, secret=SecretStr(bad))


def test_settings_from_config_generates_and_keeps_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("PINGAN_SECRET", raising=False)
    monkeypatch.delenv("PINGAN_WORKER_KEY", raising=False)
    cfg = parse_config(
        f"""
site: {{id: haiyi, name: 海逸半岛, grid: fangshan/xilu/haiyi}}
storage: {{data_dir: {tmp_path / "data"}}}
cameras:
  - id: gate-east
    name: 东门
    source: {{path: {tmp_path / "a.mp4"}}}
    grid: fangshan/xilu/haiyi/0421
  - id: lot-north
    name: 北停车场
    source: {{path: {tmp_path / "b.mp4"}}}
"""
    )
    s1 = settings_from_config(cfg)
    s2 = settings_from_config(cfg)
    assert isinstance(s1, Settings)
    assert s1.secret.get_secret_value() == s2.secret.get_secret_value()
    assert len(s1.secret.get_secret_value()) >= 32
    assert (tmp_path / "data" / "api-secret.key").stat().st_mode & 0o077 == 0
    assert s1.database_url == f"sqlite:///{tmp_path / 'data' / 'pingan.db'}"
    assert s1.worker_keys[0].cameras == {"gate-east", "lot-north"}
    assert [c.grid for c in s1.cameras] == ["fangshan/xilu/haiyi/0421", "fangshan/xilu/haiyi"]
    monkeypatch.setenv("PINGAN_WORKER_KEY", "from-env-0123456789abcdef")
    assert settings_from_config(cfg).worker_keys[0].key.get_secret_value() == "from-env-0123456789abcdef"


def test_users_helpers(api_settings):
    assert not admin_exists(api_settings)
    ensure_admin(api_settings, "first-admin-password")
    assert admin_exists(api_settings)
    ensure_admin(api_settings, "first-admin-password")  # unchanged: no reset
    with pytest.raises(ValueError):
        add_user(api_settings, "bad name", PASSWORD, "operator")
    with pytest.raises(ValueError):
        add_user(api_settings, "x", "short", "operator")
    with pytest.raises(ValueError):
        add_user(api_settings, "x", PASSWORD, "root")
    with pytest.raises(ValueError):
        add_user(api_settings, "x", PASSWORD, "operator", ["grid:../x"])
    assert add_user(api_settings, "x", PASSWORD, "operator", "gate-east,grid:fangshan/xilu") is True
    assert add_user(api_settings, "x", PASSWORD, "operator", None) is False
    assert parse_scope("gate-east, grid:a/b/,lot-north") == (["gate-east", "lot-north"], ["a/b"])
    assert parse_scope("*") == (None, None)
    assert parse_scope(["fangshan/xilu", "grid:fangshan"]) == (None, ["fangshan", "fangshan/xilu"])


def test_worker_cannot_use_user_routes(api_client):
    assert api_client.get("/", headers=WORKER, follow_redirects=False).status_code == 403
    assert (
        api_client.post(
            "/api/events/0192f1c2-0000-7000-8000-000000000000/disposition",
            json={"action": "acknowledge"},
            headers=WORKER,
        ).status_code
        == 403
    )


def test_repeated_failed_logins_are_throttled(api_client, api_users):
    for _ in range(5):
        assert (
            api_client.post("/api/token", json={"username": "op", "password": "wrong-wrong"}).status_code
            == 401
        )
    r = api_client.post("/api/token", json={"username": "op", "password": PASSWORD})
    assert r.status_code == 429 and r.headers["retry-after"] == "300"
    r = api_client.post("/login", data={"username": "OP", "password": PASSWORD}, follow_redirects=False)
    assert r.headers["location"] == "/login?locked=1"
    # other users are unaffected
    assert api_client.post("/api/token", json={"username": "admin", "password": PASSWORD}).status_code == 200
