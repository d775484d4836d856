"""Pages for people: the dashboard (static HTML + vanilla JS), login/logout, who-am-I, API tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.auth import COOKIE, USER_ROLES, Principal, issue_token, public, require_page, verify_password
from api.errors import ApiError, Unauthorized
from api.http import json_body
from api.runtime import RuntimeDep
from api.schemas import MePublic, TokenIn, TokenPublic

from .common import AnyUser

router = APIRouter(tags=["dashboard"])
STATIC = Path(__file__).resolve().parent.parent / "static"
Public = Annotated[None, Depends(public)]
Page = Annotated[Principal, Depends(require_page("operator", "police", "admin"))]


class TooManyAttempts(ApiError):
    status, code = 429, "too_many_requests"


def _check_login(rt: RuntimeDep, username: str, password: str) -> str | None:
    """The user name when the password is right; None when wrong; TooManyAttempts after repeated failures."""
    if rt.throttle.locked(username):
        raise TooManyAttempts("too many failed logins; wait a few minutes", headers={"Retry-After": "300"})
    user = rt.store.user(username)
    ok = verify_password(user["password_hash"] if user else None, password)
    if not ok or user is None or user["disabled"] or user["role"] not in USER_ROLES:
        rt.throttle.failed(username)
        return None
    rt.throttle.succeeded(username)
    return str(user["username"])


@router.get("/", response_class=FileResponse)
def index(who: Page) -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})


@router.get("/login", response_class=FileResponse)
def login_form(_: Public) -> FileResponse:
    return FileResponse(STATIC / "login.html", media_type="text/html", headers={"Cache-Control": "no-store"})


@router.post("/login", response_class=RedirectResponse)
def login(
    _: Public,
    rt: RuntimeDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
) -> RedirectResponse:
    try:
        name = _check_login(rt, username, password)
    except TooManyAttempts:
        return RedirectResponse("/login?locked=1", status_code=303)
    if name is None:
        return RedirectResponse("/login?failed=1", status_code=303)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
        COOKIE,
        issue_token(rt, name),
        max_age=rt.settings.session_ttl_s,
        httponly=True,
        secure=rt.settings.cookie_secure,
        samesite="strict",
        path="/",
    )
    return resp


@router.post("/logout", response_class=RedirectResponse)
def logout(_: Public) -> RedirectResponse:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


async def _token_body(request: Request) -> TokenIn:
    return await json_body(request, TokenIn)


@router.post("/api/token", response_model=TokenPublic)
def token(_: Public, body: Annotated[TokenIn, Depends(_token_body)], rt: RuntimeDep) -> TokenPublic:
    """A bearer token for API clients (e.g. the traffic police pulling violations)."""
    name = _check_login(rt, body.username, body.password)
    if name is None:
        raise Unauthorized("wrong username or password")
    return TokenPublic(access_token=issue_token(rt, name), expires_in=rt.settings.session_ttl_s)


@router.get("/api/me", response_model=MePublic)
def me(who: AnyUser, rt: RuntimeDep) -> MePublic:
    return MePublic(
        username=who.name,
        role=who.role,
        cameras=sorted(who.scope.cameras) if who.scope.cameras is not None else None,
        grids=list(who.scope.grids) if who.scope.grids is not None else None,
    )


def favicon(_: Public) -> Response:
    return Response(status_code=204)


router.add_api_route(
    "/favicon.ico", favicon, methods=["GET"], response_class=Response, include_in_schema=False
)
