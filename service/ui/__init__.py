"""The dashboard at ``/ui``: server-rendered pages (Jinja2, autoescaped) refreshed with htmx,
charts drawn by uPlot; every asset ships in ``static/`` (see ``static/vendor/README.md``)."""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from formwork.auth import Keys
from formwork.config import Settings
from formwork.windows import WindowSums

from .. import problems
from . import actions, docs, evaluations, pages
from .comparisons import Comparisons
from .deps import SignInRequired, Ui
from .filters import FILTERS
from .session import Sessions

HERE = Path(__file__).parent


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(FILTERS)
    return Jinja2Templates(env=env)


async def on_sign_in_required(request: Request, exc: Exception) -> Response:
    """A page asks the browser to sign in; a fragment or a form gets the 401 problem."""
    assert isinstance(exc, SignInRequired)
    if request.method == "GET" and request.headers.get("hx-request") != "true":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/signin?next={target}", status_code=303)
    return problems.problem_response(exc, request)


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard, its assets, and the offline ``/docs`` and ``/redoc``."""
    sessions = Sessions(settings.ui, Keys(settings.api_keys))
    # a bucket is settled once every replica has flushed into it
    windows = WindowSums(settle_s=max(10.0, 3 * settings.metrics_flush_s))
    app.state.ui = Ui(settings, sessions, templates(), windows, Comparisons())
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(evaluations.router)
    app.include_router(docs.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_exception_handler(SignInRequired, on_sign_in_required)
