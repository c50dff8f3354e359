"""A self-contained HTML report: headings, tables and inline SVG charts in one file (inline
CSS and a few lines of inline JavaScript; nothing is fetched). Every text is escaped."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowbit._io import atomic_file

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} .note{color:#555;font-size:13px}
section{border-top:2px solid #ddd;margin-top:2em} nav a{margin-right:1em}
"""

# builds the table of contents from the sections (the page reads nothing else)
_SCRIPT = """
(function(){var nav=document.getElementById('toc');if(!nav)return;
document.querySelectorAll('section[id]').forEach(function(s){var a=document.createElement('a');
a.href='#'+s.id;a.textContent=s.getAttribute('data-title');nav.appendChild(a);});
document.body.setAttribute('data-sections',String(nav.children.length));})();
"""


@dataclass
class Report:
    title: str
    parts: list[str] = field(default_factory=list)
    _open: bool = False

    def section(self, key: str, title: str) -> None:
        """Start a section (``key``: its id, letters, digits and dashes; ``title``: any text)."""
        self._close()
        safe = "".join(c if c.isalnum() or c == "-" else "-" for c in key)
        self.parts.append(
            f'<section id="{safe}" data-title="{html.escape(title)}"><h2>{html.escape(title)}</h2>'
        )
        self._open = True

    def _close(self) -> None:
        if self._open:
            self.parts.append("</section>")
            self._open = False

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, svg: str) -> None:
        self.parts.append(f"<figure>{svg}</figure>")

    def render(self) -> str:
        self._close()
        nav = '<nav id="toc"></nav>' if any("<section" in p for p in self.parts) else ""
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + nav
            + "\n".join(self.parts)
            + f"<script>{_SCRIPT}</script></body></html>"
        )

    def write(self, path: Path, *, overwrite: bool = False) -> None:
        with atomic_file(path, overwrite=overwrite) as f:
            f.write(self.render())


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
