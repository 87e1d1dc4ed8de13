"""No page or asset of the dashboard or the API docs refers to a host other than the server
itself: every URL in a page is a path on this server (or inline data), every asset it names is
served from the package, and the stylesheets' own ``url()`` references are local too."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from fastapi.testclient import TestClient

from service.ui.render import CSP
from tests.service.helpers import spec
from tests.service.ui.html import CSS_URL, Page
from tests.service.ui.traffic import make_traffic
from tests.upstream import Upstream

CSS_IMPORT = re.compile(r"""@import\s+(?:url\()?['"]?([^'")\s;]+)""")


def local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "data" or (parts.scheme == "" and parts.netloc == "")


def pages(client: TestClient, task: str) -> dict[str, str]:
    paths = [
        "/ui",
        "/ui?window=7d&sort=task&desc=false",
        f"/ui/tasks/{task}?window=15m",
        f"/ui/tasks/{task}/failures",
        f"/ui/tasks/{task}/finetunes",
        f"/ui/tasks/{task}/diff?a=1&b=2",
        "/docs",
        "/redoc",
    ]
    found = {}
    for path in paths:
        response = client.get(path)
        assert (path, response.status_code) == (path, 200)
        found[path] = response.text
    return found


def test_every_page_and_asset_stays_on_this_server(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    make_traffic(client, upstream, unique_name)
    changed = spec("up/primary", "up/backup", instructions="Label it, carefully.")
    assert client.put(f"/v1/tasks/{unique_name}", json=changed).status_code == 200
    assets: set[str] = set()
    for path, html in pages(client, unique_name).items():
        urls = Page(html).urls()
        assert [u for u in urls if not local(u)] == [], path
        assets |= {urljoin(path, u) for u in urls if u.startswith("/ui/static/")}
    assert {
        "/ui/static/app.css",
        "/ui/static/app.js",
        "/ui/static/vendor/htmx/htmx.min.js",
        "/ui/static/vendor/uplot/uPlot.iife.min.js",
        "/ui/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/ui/static/vendor/redoc/redoc.standalone.js",
    } <= assets
    for asset in sorted(assets):
        response = client.get(asset)
        assert (asset, response.status_code) == (asset, 200)
        if asset.endswith(".css"):
            named = CSS_URL.findall(response.text) + CSS_IMPORT.findall(response.text)
            assert [u for u in named if not local(u)] == [], asset


def test_dashboard_pages_forbid_loading_from_elsewhere(client: TestClient) -> None:
    response = client.get("/ui")
    assert response.headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP
    assert "script-src 'self';" in CSP
    assert "http" not in CSP


def test_the_package_ships_every_template_and_asset() -> None:
    """``[tool.setuptools.package-data]`` names every file the dashboard serves or renders."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["service.ui"]
    package = root / "service" / "ui"
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    wanted = {
        path
        for folder in ("static", "templates")
        for path in (package / folder).rglob("*")
        if path.is_file()
    }
    assert wanted
    assert sorted(str(p.relative_to(package)) for p in wanted - shipped) == []
