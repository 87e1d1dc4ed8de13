"""A small reader of the dashboard's HTML (the standard library's parser): text by element
id, the cells of a table row, and every URL a page refers to."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
        "circle",
        "line",
        "polyline",
        "path",
        "rect",
    ]
)
URL_ATTRS = ("src", "href", "action", "hx-get", "hx-post", "data", "poster", "srcset")
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)""")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def raw_text(self) -> str:
        """The text exactly as the page holds it (entities decoded)."""
        return "".join(c if isinstance(c, str) else c.raw_text() for c in self.children)

    def walk(self) -> list[Element]:
        found = [self]
        for child in self.children:
            if isinstance(child, Element):
                found += child.walk()
        return found


class Page(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self._stack = [self.root]
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(element)
        if tag not in VOID:
            self._stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, 0, -1):
            if self._stack[i].tag == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)

    def by_id(self, element_id: str) -> Element:
        for element in self.root.walk():
            if element.attrs.get("id") == element_id:
                return element
        raise KeyError(element_id)

    def has_id(self, element_id: str) -> bool:
        return any(e.attrs.get("id") == element_id for e in self.root.walk())

    def text(self, element_id: str) -> str:
        return self.by_id(element_id).text()

    def cells(self, row_id: str) -> dict[str, str]:
        """A table row's cells that name their column (``data-col``), by column."""
        row = self.by_id(row_id)
        return {e.attrs["data-col"]: e.text() for e in row.walk() if "data-col" in e.attrs}

    def all(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.root.walk()
            if e.tag == tag and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def urls(self) -> list[str]:
        """Every URL in an attribute or an inline style of the page."""
        found = []
        for element in self.root.walk():
            for name in URL_ATTRS:
                if element.attrs.get(name):
                    found.append(element.attrs[name])
            found += CSS_URL.findall(element.attrs.get("style", ""))
            if element.tag == "style":
                found += CSS_URL.findall(element.text())
        return found
