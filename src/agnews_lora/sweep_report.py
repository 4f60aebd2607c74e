"""What a sweep writes: ``summary.csv``, ``summary.md`` (the table the CLI prints too),
``pareto.png`` and ``report.html`` (`sweep_html`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .sweep_html import table_head

COLUMNS = [
    "name",
    "status",
    "trainable_params",
    "lora_params",
    "head_params",
    "budget",
    "fits_budget",
    "val_accuracy",
    "val_macro_f1",
    "best_step",
    "steps",
    "train_seconds",
    "pareto",
    "run_dir",
    "error",
]
TRAINED = ("ok", "resumed", "done", "stale")  # statuses with results


def mark_pareto(rows: list[dict]) -> None:
    """``pareto`` = no other trained, in-budget child has fewer (or equal) params and higher accuracy."""
    pts = [
        r
        for r in rows
        if r["status"] in TRAINED and r.get("val_accuracy") is not None and r.get("fits_budget")
    ]
    best = float("-inf")
    for r in rows:
        r["pareto"] = False
    for r in sorted(pts, key=lambda r: (r["trainable_params"], -r["val_accuracy"])):
        if r["val_accuracy"] > best:
            r["pareto"], best = True, r["val_accuracy"]


def write_reports(sweep: Any, rows: list[dict], kind: str = "Sweep") -> None:
    """summary.csv, pareto.png, summary.md and report.html (``kind``: its title)."""
    from .sweep_html import write_sweep_html

    mark_pareto(rows)
    out = Path(sweep.output_dir)
    cols = COLUMNS[:2] + sweep.swept_keys + COLUMNS[2:]
    tmp = out / ".summary.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in cols} for r in rows)
    tmp.replace(out / "summary.csv")
    plot_pareto(sweep, rows, out / "pareto.png")
    (out / "summary.md").write_text(markdown(sweep, rows, kind), encoding="utf-8")
    write_sweep_html(sweep, rows, out, kind)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or isinstance(v, bool):
        return "" if v is None else "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}" if isinstance(v, float) else f"{v:,}"
    return str(v)


def table(sweep: Any, rows: list[dict]) -> list[str]:
    """The markdown table of children in sweep order (also printed by the CLI)."""
    keys = sweep.swept_keys
    head = table_head(list(keys))
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 2 + len(keys) else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        frac = (
            f"{100 * r['trainable_params'] / r['budget']:.1f} %"
            if r.get("trainable_params")
            else ""
        )
        cells = [
            f"`{r['name']}`",
            r["status"],
            *[_fmt(r.get(k)) for k in keys],
            _fmt(r.get("trainable_params")),
            frac,
            _fmt(r.get("val_accuracy")),
            _fmt(r.get("val_macro_f1")),
            _fmt(r.get("train_seconds"), 1),
            "★" if r.get("pareto") else "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def markdown(sweep: Any, rows: list[dict], kind: str = "Sweep") -> str:
    """summary.md; ``kind``: "Sweep" (children of a sweep file) or "Tuning study" (trials)."""
    counts = Counter(r["status"] for r in rows)
    file_kind, items = ("sweep file", "children") if kind == "Sweep" else ("tune file", "trials")
    lines = [
        f"# {kind} `{sweep.path.stem}`",
        "",
        f"- {file_kind}: `{sweep.path}`",
        f"- base config: `{sweep.base_config or 'built-in defaults'}`",
        f"- shared overrides: {', '.join(f'`{k}={json.dumps(v)}`' for k, v in sweep.overrides.items()) or 'none'}",
        f"- {items}: {len(rows)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
        "",
        *table(sweep, rows),
        "",
    ]
    best = max((r for r in rows if r.get("pareto")), key=lambda r: r["val_accuracy"], default=None)
    if best:
        front = [
            r["name"]
            for r in sorted(rows, key=lambda r: r.get("trainable_params") or 0)
            if r.get("pareto")
        ]
        lines += [
            f"Best validation accuracy within the budget: **`{best['name']}`**, {best['val_accuracy']:.4f} with "
            f"{best['trainable_params']:,} trainable parameters.",
            f"Pareto-optimal (★: no child with fewer parameters is as accurate): {', '.join(f'`{n}`' for n in front)}.",
        ]
    lines += [
        f"- `{r['name']}` {r['status']}: {r['error']}"
        for r in rows
        if r["status"] in ("failed", "over_budget", "stale")
    ]
    lines += ["", "![validation accuracy vs trainable parameters](pareto.png)", ""]
    return "\n".join(lines)


def plot_pareto(sweep: Any, rows: list[dict], path: Path) -> None:
    """Validation accuracy vs trainable parameters, coloured by one swept key, with the Pareto front and budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["status"] in TRAINED and r.get("val_accuracy") is not None]
    children = {c.name: c for c in sweep.children}
    keys = [k for k in sweep.swept_keys if any(k in children[r["name"]].labels for r in pts)]
    distinct = {k: len({children[r["name"]].labels.get(k) for r in pts}) for k in keys}
    series_key = min(keys, key=lambda k: (distinct[k], -keys.index(k))) if len(keys) > 1 else None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups: dict[str, list[dict]] = {}
    for r in pts:
        label = children[r["name"]].labels.get(series_key, "other") if series_key else "children"
        groups.setdefault(label, []).append(r)
    for label, group in groups.items():
        group.sort(key=lambda r: r["trainable_params"])
        name = f"{series_key.split('.')[-1]} = {label}" if series_key else label
        ax.plot(
            [r["trainable_params"] for r in group],
            [r["val_accuracy"] for r in group],
            "o-",
            alpha=0.85,
            label=name,
        )
        for r in group:
            lab = children[r["name"]].labels
            text = (
                " ".join(f"{k.split('.')[-1]}={v}" for k, v in lab.items() if k != series_key)
                or r["name"]
            )
            ax.annotate(
                text,
                (r["trainable_params"], r["val_accuracy"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    front = sorted((r for r in pts if r.get("pareto")), key=lambda r: r["trainable_params"])
    if front:
        ax.step(
            [r["trainable_params"] for r in front],
            [r["val_accuracy"] for r in front],
            where="post",
            color="gray",
            linestyle=":",
            label="Pareto front",
        )
    for budget in sorted({r["budget"] for r in (pts or rows)}):
        ax.axvline(budget, color="tab:red", linestyle="--", label=f"budget {budget:,}")
    over = [r for r in rows if r["status"] == "over_budget"]
    xs = [r["trainable_params"] for r in pts] + [r["budget"] for r in rows]
    if xs and max(xs) / max(min(xs), 1) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (LoRA + classifier head)")
    ax.set_ylabel("best validation accuracy")
    ax.set_title(
        f"Sweep {sweep.path.stem}: accuracy vs trainable parameters"
        + (f" ({len(over)} over budget, not trained)" if over else ""),
        fontsize=10,
    )
    ax.xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(
            lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"
        )
    )
    ax.grid(alpha=0.3)
    if not pts:
        ax.text(0.5, 0.5, "no finished children yet", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=8, loc="lower right")
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
