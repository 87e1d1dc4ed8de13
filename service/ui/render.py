"""Rendering a dashboard template: the viewer's fresh cookie and the page's security headers."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from starlette.templating import _TemplateResponse

from .deps import Ui
from .session import COOKIE, COOKIE_PATH, Viewer

# Every asset is served by this app: the policy lets a page load nothing from anywhere else.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'self'"
)


def set_session(response: Response, request: Request, ui: Ui, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=ui.sessions.ttl_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def render(
    request: Request,
    ui: Ui,
    template: str,
    viewer: Viewer | None,
    given: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    **more: Any,
) -> _TemplateResponse:
    context = {**(given or {}), **more, "viewer": viewer, "refresh_s": ui.settings.ui.refresh_s}
    response = ui.templates.TemplateResponse(request, template, context, status_code=status_code)
    if viewer is not None and viewer.cookie is not None:
        set_session(response, request, ui, viewer.cookie)
    response.headers["content-security-policy"] = CSP
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["cache-control"] = "no-store"
    return response
