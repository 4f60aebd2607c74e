"""``SWEEP_DIR/report.html``: the table of a sweep's (or tuning study's) children and its Pareto
plot on one self-contained page, with links to each child's own ``report.html``."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .html_page import Raw, cards, esc, fmt, page, png_img, section, table, write_page


def _child_link(row: dict, out: Path) -> Raw | str:
    run_dir = row.get("run_dir") or ""
    report = Path(run_dir) / "report.html" if run_dir else None
    if report is None or not report.is_file():
        return row["name"]
    href = Path(os.path.relpath(report, out)).as_posix()
    return Raw(f'<a href="{esc(href)}">{esc(row["name"])}</a>')


def table_head(keys: list[str]) -> list[str]:
    """Column titles of a sweep/tune table (summary.md, the CLI and report.html): the swept keys
    between the child's name and status and its results."""
    return [
        "child",
        "status",
        *keys,
        "trainable",
        "of budget",
        "val acc",
        "val macro-F1",
        "train s",
        "Pareto",
    ]


def write_sweep_html(sweep, rows: list[dict], out: Path, kind: str = "Sweep") -> Path:
    """Write ``out/report.html`` from the rows `sweep_report.write_reports` has marked (``pareto``)
    and its ``pareto.png``; ``kind``: "Sweep" or "Tuning study"."""
    out = Path(out)
    keys = list(sweep.swept_keys)
    head = [*table_head(keys), "note"]
    body = []
    for r in rows:
        frac = (
            f"{100 * r['trainable_params'] / r['budget']:.1f} %"
            if r.get("trainable_params") and r.get("budget")
            else ""
        )
        train_s = r.get("train_seconds")
        body.append(
            [
                _child_link(r, out),
                r["status"],
                *[r.get(k) for k in keys],
                r.get("trainable_params"),
                frac,
                r.get("val_accuracy"),
                r.get("val_macro_f1"),
                f"{train_s:,.1f}" if isinstance(train_s, (int, float)) else "",
                "★" if r.get("pareto") else "",
                r.get("error") or "",
            ]
        )
    first_num = 2 + len(keys)
    numeric = set(range(first_num, first_num + 5))
    counts = Counter(r["status"] for r in rows)
    best = max((r for r in rows if r.get("pareto")), key=lambda r: r["val_accuracy"], default=None)
    top = [(str(len(rows)), "children: " + ", ".join(f"{n} {s}" for s, n in counts.items()))]
    if best:
        top += [
            (fmt(best["val_accuracy"]), f"best validation accuracy ({best['name']})"),
            (f"{best['trainable_params']:,}", "its trainable parameters"),
        ]
    overrides = ", ".join(f"{k}={v}" for k, v in sweep.overrides.items()) or "none"
    about = table(
        ["", ""],
        [
            ["file", str(sweep.path)],
            ["base config", str(sweep.base_config or "built-in defaults")],
            ["shared overrides", overrides],
        ],
    )
    plot = png_img(out / "pareto.png", "validation accuracy vs trainable parameters")
    sections = [
        section("Summary", cards(top) + about),
        section("Validation accuracy vs trainable parameters", plot or "<p>No plot.</p>"),
        section(
            "Children",
            table(head, body, numeric)
            + '<p class="muted">★ Pareto-optimal: no child with fewer trainable parameters '
            "is as accurate. A child's name links to its own report.</p>",
        ),
    ]
    title = f"{kind} {Path(sweep.path).stem}"
    return write_page(out / "report.html", page(title, f"{len(rows)} children", sections))
