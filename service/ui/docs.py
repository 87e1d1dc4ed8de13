"""``/docs`` and ``/redoc``: the OpenAPI document (inlined, so the page needs no second
request) with scripts and styles served from the package (offline). Reading them needs the
``read`` scope, by API key or by a dashboard session."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from .. import openapi
from ..deps import AppState
from .deps import get_ui
from .session import COOKIE

VENDOR = "/ui/static/vendor"
FAVICON = f"{VENDOR}/swagger-ui/favicon-32x32.png"


async def can_read(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """A dashboard session that may read, or else an API key with ``read``."""
    viewer = get_ui(request).sessions.viewer(request.cookies.get(COOKIE))
    if viewer is not None and viewer.can("read"):
        return
    state: AppState = request.app.state.formwork
    state.keys.check(authorization, "read")


router = APIRouter(include_in_schema=False, dependencies=[Depends(can_read)])


def _spec(request: Request) -> str:
    """The document as a JavaScript literal that is safe inside a <script> element."""
    keys = bool(request.app.state.formwork.keys.enabled)
    return json.dumps(openapi.document(request.app, keys=keys)).replace("</", "<\\/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - API",
        swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode().replace("url: '/openapi.json'", f"spec: {_spec(request)}")
    return HTMLResponse(html)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    title = f"{request.app.title} - API"
    return HTMLResponse(
        f"""<!DOCTYPE html>
<html><head><title>{title}</title><meta charset="utf-8">
<link rel="shortcut icon" href="{FAVICON}"><style>body {{ margin: 0; padding: 0; }}</style>
</head><body><div id="redoc"></div>
<script src="{VENDOR}/redoc/redoc.standalone.js"></script>
<script>Redoc.init({_spec(request)}, {{}}, document.getElementById("redoc"));</script>
</body></html>"""
    )
