"""Plots written into the run directory (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_training_curves(rows: list[dict], out_dir: Path) -> None:
    """``loss_curves.png`` (train + validation loss vs step) and ``accuracy_curve.png``."""
    out_dir = Path(out_dir)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "validation"]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [r["step"] for r in train], [r["loss"] for r in train], label="train loss", color="tab:blue"
    )
    ax.plot(
        [r["step"] for r in val],
        [r["loss"] for r in val],
        "o-",
        label="validation loss",
        color="tab:orange",
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out_dir / "loss_curves.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [r["step"] for r in val],
        [r["accuracy"] for r in val],
        "o-",
        label="validation accuracy",
        color="tab:green",
    )
    if val:
        best = max(val, key=lambda r: r["accuracy"])
        ax.annotate(
            f"best {best['accuracy']:.4f} @ {best['step']}",
            (best["step"], best["accuracy"]),
            textcoords="offset points",
            xytext=(-60, -18),
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy")
    ax.set_title("Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, out_dir / "accuracy_curve.png")


def draw_confusion(ax, matrix: np.ndarray, labels: list[str], title: str):
    """Row-normalised confusion matrix with counts and shares in each cell; returns the image."""
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{norm[i, j]:.1%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return im


def plot_confusion_matrix(
    matrix: np.ndarray, labels: list[str], path: Path, title: str = "Confusion matrix"
) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = draw_confusion(ax, matrix, labels, title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, Path(path))
