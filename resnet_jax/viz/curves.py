"""Training pictures: loss and accuracy curves, and confusion matrices (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window <= 1:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_curves(records: Sequence[dict], path) -> Path:
    """Loss and accuracy against step from a run's metric records; returns ``path``.

    Train records (``kind == 'train'``) are drawn raw (faint) and smoothed; validation
    records as markers. A step logged twice (a resumed run) keeps its last record.
    """
    plt = _pyplot()
    by_kind: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("step") is None:
            continue
        by_kind.setdefault(r.get("kind", "train"), {})[int(r["step"])] = r
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    train = [by_kind.get("train", {})[s] for s in sorted(by_kind.get("train", {}))]
    if train:
        steps = np.array([r["step"] for r in train])
        window = max(1, len(train) // 50)
        for key, ax, label in (("loss", ax_loss, "train loss (as optimised)"),
                                 ("accuracy", ax_acc, "train accuracy")):
            vals = np.array([np.nan if r.get(key) is None else r[key] for r in train], float)
            ax.plot(steps, vals, alpha=0.25, color="C0")
            ax.plot(steps, _smooth(vals, window), color="C0", label=label)
    for kind, color in (("val", "C1"), ("test", "C2")):
        rows = [by_kind.get(kind, {})[s] for s in sorted(by_kind.get(kind, {}))]
        if rows:
            steps = [r["step"] for r in rows]
            ax_loss.plot(steps, [r.get("loss") for r in rows], "o-", color=color, label=f"{kind} loss")
            ax_acc.plot(steps, [r.get("accuracy") for r in rows], "o-", color=color,
                        label=f"{kind} accuracy")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("loss")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("top-1 accuracy")
    ax_acc.set_title("accuracy")
    ax_acc.set_ylim(0, 1.01)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _save(plt, fig, path)


def plot_confusion_matrix(matrix, class_names: Sequence[str], path, title: str | None = None) -> Path:
    """A confusion matrix (rows: true class, columns: predicted), counts in each cell."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    k = len(class_names)
    size = min(max(4.0, 0.45 * k + 2), 30)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    totals = matrix.sum(axis=1, keepdims=True)
    rates = matrix / np.maximum(totals, 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 40:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), class_names, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    correct = int(np.trace(matrix))
    total = int(matrix.sum())
    ax.set_title(title or f"accuracy {correct}/{total} = {correct / max(total, 1):.2%}")
    return _save(plt, fig, path)


def _save(plt, fig, path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (creating its folder) and release it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
