"""The dashboard's dependencies: its state, the viewer's session, and the checks that guard
every state-changing request (scope, CSRF token, same origin)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from formwork.config import Scope, Settings
from formwork.errors import Forbidden, Unauthorized
from formwork.windows import WindowSums

from ..deps import CandidatesDep, GuardDep, JobsDep, MetricsDep, RegistryDep
from .board import Board
from .comparisons import Comparisons
from .session import COOKIE, CSRF_FIELD, CSRF_HEADER, Sessions, Viewer


@dataclass(frozen=True, slots=True)
class Ui:
    settings: Settings
    sessions: Sessions
    templates: Jinja2Templates
    windows: WindowSums  # the overview's window totals, kept across requests
    comparisons: Comparisons  # evaluations awaiting promotion


class SignInRequired(Unauthorized):
    """No valid session: pages redirect to the sign-in page, everything else answers 401."""


def get_ui(request: Request) -> Ui:
    found: Ui = request.app.state.ui
    return found


UiDep = Annotated[Ui, Depends(get_ui)]


async def get_board(
    ui: UiDep,
    registry: RegistryDep,
    metrics: MetricsDep,
    jobs: JobsDep,
    candidates: CandidatesDep,
    guard: GuardDep,
) -> Board:
    return Board(registry, metrics, jobs, ui.settings, ui.windows, candidates, guard)


BoardDep = Annotated[Board, Depends(get_board)]


async def get_viewer(request: Request, ui: UiDep) -> Viewer:
    """The signed-in viewer, who must be able to read."""
    viewer = ui.sessions.viewer(request.cookies.get(COOKIE))
    if viewer is None:
        raise SignInRequired("sign in at /ui/signin with an API key")
    if not viewer.can("read"):
        raise Forbidden("this key lacks the 'read' scope the dashboard needs")
    return viewer


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


def _same_origin(request: Request) -> bool:
    """A browser names the page that sent a request; it must be one of ours."""
    sender = request.headers.get("origin") or request.headers.get("referer")
    if not sender:
        return True
    return urlsplit(sender).netloc == request.headers.get("host", "")


def acting(scope: Scope) -> Callable[..., Awaitable[Viewer]]:
    """A dependency for a state-changing request: the scope, the CSRF token, same origin."""

    async def check(request: Request, viewer: ViewerDep) -> Viewer:
        token = request.headers.get(CSRF_HEADER)
        if token is None:
            form = await request.form()
            given = form.get(CSRF_FIELD)
            token = given if isinstance(given, str) else None
        if not viewer.csrf_ok(token) or not _same_origin(request):
            raise Forbidden("the form is stale or came from another site; reload the page")
        if not viewer.can(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return viewer

    return check


SignedInDep = Annotated[Viewer, Depends(acting("read"))]
CanRunDep = Annotated[Viewer, Depends(acting("run"))]
AdminDep = Annotated[Viewer, Depends(acting("admin"))]
