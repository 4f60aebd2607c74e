"""Self-contained HTML pages (the run, sweep and tuning reports): no server, no CDN, no scripts.

Images are matplotlib figures inlined as base64 PNG; everything else is escaped text in plain
tables.  Written atomically (temp file + rename).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
  color:#1d232b;background:#f4f6f8;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:0 0 12px;color:#23415f}
.sub{color:#5b6775;margin:0 0 18px}
section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:16px 20px;
  margin:0 0 18px}
table{border-collapse:collapse;font-size:.92em;margin:6px 0}
th,td{border-bottom:1px solid #e6eaef;padding:4px 10px;text-align:left;vertical-align:top;
  white-space:nowrap}
.text{white-space:normal}
th{background:#f0f3f6;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:0 0 6px}
.card{background:#f0f5fb;border:1px solid #d3e0ee;border-radius:8px;padding:8px 14px;
  min-width:130px}
.card b{display:block;font-size:1.35em;color:#17406b}.card span{color:#5b6775;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
img{max-width:100%;height:auto}.muted{color:#6b7683}.bad{color:#a4262c}
td:has(.text){max-width:560px;white-space:normal;word-wrap:break-word}
code{background:#f0f3f6;padding:0 3px;border-radius:3px}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any, digits: int = 4) -> str:
    """A number or value as a table shows it (thousands separators, fixed decimals)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def figure_img(fig, alt: str, width: int | None = None) -> str:
    """An ``<img>`` holding ``fig`` as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{data}">'


def png_img(path: Path, alt: str, width: int | None = None) -> str:
    """An ``<img>`` holding the PNG file ``path`` (empty string when it is missing)."""
    path = Path(path)
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    w = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{w} src="data:image/png;base64,{data}">'


def table(head: list[str], rows: Iterable[list[Any]], numeric: set[int] | None = None) -> str:
    """An HTML table; cells are escaped unless they are ``Raw``; ``numeric`` column indices are
    right-aligned."""
    numeric = numeric or set()

    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="n"' if i in numeric else ""
        text = v.html if isinstance(v, Raw) else esc(fmt(v))
        return f"<{tag}{cls}>{text}</{tag}>"

    out = ["<table><tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


class Raw:
    """Trusted HTML for a table cell (built here, never from data)."""

    def __init__(self, html_text: str):
        self.html = html_text


def cards(items: list[tuple[str, str]]) -> str:
    """Big numbers with a caption: [(value, caption), ...]."""
    body = "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(c)}</span></div>' for v, c in items
    )
    return f'<div class="cards">{body}</div>'


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n{body}\n</section>"


def page(title: str, subtitle: str, sections: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
        f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>\n'
        + "\n".join(sections)
        + "\n</main></body></html>\n"
    )


def write_page(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
