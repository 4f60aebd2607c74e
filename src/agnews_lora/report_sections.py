"""The sections of ``RUN_DIR/report.html`` (`run_report`): HTML and matplotlib figures.

Each ``*_section`` renders one part of the page from the run's ``summary.json``, its ``eval/``
results and the validation predictions that `run_report` gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .html_page import Raw, esc, figure_img, section, table
from .machine import machine_info


@dataclass
class ValPredictions:
    texts: list[str]
    labels: np.ndarray
    probs: np.ndarray  # (rows, classes)
    total_rows: int  # rows in the whole validation split


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- figures -------------------------------------------------------------------------------------


def _budget_figure(params: dict, budget: int):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 1.1))
    left = 0
    parts = [
        ("LoRA", params.get("lora", 0), "tab:blue"),
        ("head", params.get("head", 0), "tab:orange"),
        ("other", params.get("other", 0), "tab:purple"),
    ]
    for name, n, color in parts:
        if n:
            ax.barh(0, n, left=left, height=0.8, color=color, label=f"{name} {n:,}")
            left += n
    if budget > left:
        ax.barh(
            0,
            budget - left,
            left=left,
            height=0.8,
            color="#e3e7ec",
            label=f"unused {budget - left:,}",
        )
    ax.axvline(budget, color="tab:red", linestyle="--")
    ax.set_xlim(0, max(budget, left) * 1.02)
    ax.set_ylim(-0.5, 0.5)
    ax.set_yticks([])
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlabel(f"trainable parameters (budget {budget:,}: red line)")
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}")


def curves_figure(rows: list[dict]):
    plt = _plt()
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "validation"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", color="tab:blue")
    a1.plot(
        [r["step"] for r in val],
        [r["loss"] for r in val],
        "o-",
        label="validation",
        color="tab:orange",
    )
    a1.set(xlabel="optimizer step", ylabel="cross-entropy loss", title="Loss")
    a1.legend()
    a2.plot(
        [r["step"] for r in val],
        [r["accuracy"] for r in val],
        "o-",
        color="tab:green",
        label="accuracy",
    )
    if val and "macro_f1" in val[0]:
        a2.plot(
            [r["step"] for r in val],
            [r["macro_f1"] for r in val],
            "s--",
            color="tab:olive",
            label="macro-F1",
            alpha=0.7,
        )
    a2.set(xlabel="optimizer step", title="Validation")
    a2.legend(loc="lower right")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    return fig


def _confusion_figure(matrix: np.ndarray, labels: list[str], title: str):
    from .plotting import draw_confusion

    fig, ax = _plt().subplots(figsize=(4.6, 4))
    draw_confusion(ax, matrix, labels, title)
    return fig


def _f1_figure(per_split: dict[str, dict], labels: list[str]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / max(len(per_split), 1)
    for k, (name, f1) in enumerate(per_split.items()):
        xs = np.arange(len(labels)) + k * width
        ax.bar(xs, [f1.get(n, 0.0) for n in labels], width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(per_split) - 1) / 2, labels)
    low = min((v for f1 in per_split.values() for v in f1.values()), default=0.0)
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set(ylabel="F1", title="Per-class F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# -- sections -----------------------------------------------------------------------------------


def params_section(summary: dict) -> str:
    p, b = summary.get("params", {}), summary.get("budget", {})
    budget = b.get("max_trainable_params") or p.get("trainable", 0)
    rows = [["LoRA matrices", p.get("lora")], ["classifier head", p.get("head")]]
    if p.get("other"):
        rows.append(["other", p.get("other")])
    rows += [
        ["trainable (total)", p.get("trainable")],
        ["budget", budget],
        ["left unused", budget - p.get("trainable", 0)],
        ["all parameters of the model", p.get("total")],
    ]
    share = (
        f"{100 * p.get('trainable', 0) / max(budget, 1):.1f} % of the budget; "
        f"{100 * p.get('trainable', 0) / max(p.get('total') or 1, 1):.2f} % of the model"
    )
    return section(
        "Trainable parameters vs the budget",
        table(["part", "parameters"], rows, {1})
        + f'<p class="muted">{esc(share)}</p>'
        + figure_img(_budget_figure(p, budget), "parameter breakdown"),
    )


def eval_section(val: ValPredictions | None, why_not: str, evals: dict, labels: list[str]) -> str:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rows, figs, f1s = [], [], {}
    ids = np.arange(len(labels))
    if val is not None:
        preds = val.probs.argmax(axis=1)
        per = f1_score(val.labels, preds, labels=ids, average=None, zero_division=0)
        f1s["validation"] = dict(zip(labels, map(float, per)))
        sampled = f"{len(val.labels):,} of {val.total_rows:,}"
        rows.append(
            [
                "validation (report)",
                sampled,
                float(accuracy_score(val.labels, preds)),
                float(per.mean()),
                "",
                "torch",
                "",
            ]
        )
        cm = confusion_matrix(val.labels, preds, labels=ids)
        figs.append(figure_img(_confusion_figure(cm, labels, "validation"), "validation confusion"))
    for split, m in evals.items():
        rows.append(
            [
                split,
                m.get("rows"),
                m.get("accuracy"),
                m.get("macro_f1"),
                m.get("loss"),
                m.get("backend", "torch") + (" int8" if m.get("quantized") else ""),
                f"{m['samples_per_s']:,.1f}" if m.get("samples_per_s") else "",
            ]
        )
        if m.get("per_class_f1"):
            f1s[split] = m["per_class_f1"]
        if m.get("confusion_matrix") and split == next(iter(evals)):
            cm = np.asarray(m["confusion_matrix"])
            figs.append(figure_img(_confusion_figure(cm, labels, split), f"{split} confusion"))
    body = table(
        ["split", "rows", "accuracy", "macro-F1", "loss", "backend", "samples/s"],
        rows,
        {1, 2, 3, 4, 6},
    )
    if val is None:
        body += f'<p class="bad">No validation predictions: {esc(why_not)}</p>'
    if not evals:
        body += (
            '<p class="muted">No held-out test results yet: run '
            "<code>agnews-lora evaluate RUN_DIR</code> (it rewrites this report).</p>"
        )
    body += f'<div class="grid">{"".join(figs)}</div>'
    f1_rows = [[n, *[f1.get(n) for f1 in f1s.values()]] for n in labels]
    f1_body = table(["class", *f1s], f1_rows, set(range(1, len(f1s) + 1)))
    if f1s:
        f1_img = figure_img(_f1_figure(f1s, labels), "F1")
        f1_body = f'<div class="grid"><div>{f1_body}</div>{f1_img}</div>'
    return section("Evaluation", body) + section("Per-class F1", f1_body)


def examples_section(val: ValPredictions | None, labels: list[str], n: int) -> str:
    if val is None:
        return ""
    preds = val.probs.argmax(axis=1)
    p_pred = val.probs.max(axis=1)
    p_true = val.probs[np.arange(len(preds)), val.labels]

    def rows(order) -> list[list]:
        out = []
        for i in order[:n]:
            text = val.texts[i] if len(val.texts[i]) <= 300 else val.texts[i][:300] + "…"
            mark = "" if preds[i] == val.labels[i] else " ✗"
            out.append(
                [
                    Raw(f'<span class="text">{esc(text)}</span>'),
                    labels[val.labels[i]],
                    labels[preds[i]] + mark,
                    float(p_pred[i]),
                    float(p_true[i]),
                ]
            )
        return out

    head = ["text", "true", "predicted", "p(predicted)", "p(true)"]
    wrong = np.flatnonzero(preds != val.labels)
    confused = wrong[np.argsort(-p_pred[wrong], kind="stable")]
    unsure = np.argsort(p_pred, kind="stable")
    ids = np.arange(len(labels))
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(val.labels, preds, labels=ids)
    np.fill_diagonal(cm, 0)
    pairs = sorted(((int(cm[i, j]), i, j) for i in ids for j in ids if cm[i, j]), reverse=True)
    pair_text = ", ".join(f"{labels[i]} → {labels[j]} ({c})" for c, i, j in pairs[:5]) or "none"
    body = (
        f"<p>Most frequent confusions (true → predicted): {esc(pair_text)}.</p>"
        f"<h3>Most confidently wrong ({len(wrong):,} errors in {len(preds):,} rows)</h3>"
        + (table(head, rows(confused), {3, 4}) if len(wrong) else "<p>No errors.</p>")
        + "<h3>Least confident</h3>"
        + table(head, rows(unsure), {3, 4})
    )
    return section("Validation examples", body)


def timings_section(summary: dict) -> str:
    t, v = summary.get("timings", {}), summary.get("versions", {})
    rows = [
        ["training time", f"{t.get('train_seconds', 0):,.1f} s"],
        ["training samples/s", f"{t.get('train_samples_per_s', 0):,.1f}"],
        ["mean logged tokens/s", f"{t.get('mean_logged_tokens_per_s', 0):,.0f}"],
        [
            "steps",
            f"{summary.get('steps')} of {summary.get('total_steps')} "
            f"({summary.get('epochs')} epochs; best at step {summary.get('best', {}).get('step')})",
        ],
        [
            "global batch",
            f"{summary.get('global_batch_size')} = {summary.get('per_device_batch_size')}"
            f" x {summary.get('world_size')} process(es) x {summary.get('grad_accumulation')}",
        ],
        [
            "rows",
            f"{summary.get('train_rows', 0):,} train / {summary.get('validation_rows', 0):,} "
            "validation",
        ],
        [
            "precision",
            f"{summary.get('precision')}"
            + (f" ({summary['precision_reason']})" if summary.get("precision_reason") else ""),
        ],
        ["device", summary.get("device")],
        ["dropout", summary.get("dropout")],
        ["stopped early", summary.get("stopped_early")],
        ["finished", summary.get("finished_at")],
    ]
    machine = summary.get("machine")
    if machine:
        rows += [[f"machine: {k}", val] for k, val in machine.items()]
    else:
        rows.append(["machine", "not recorded by this run (it predates the record)"])
    rows += [[f"version: {k}", val] for k, val in v.items()]
    here = machine_info()
    rows.append(
        [
            "report written on",
            f"{here['cpu']} ({here['cpu_cores']} cores), torch "
            f"{here['torch']}" + (f", {here['gpu']}" if "gpu" in here else ""),
        ]
    )
    return section("Timings and the machine", table(["what", "value"], rows))
