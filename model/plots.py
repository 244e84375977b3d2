"""The model's plots as PNG bytes: ROC and precision-recall curves, backtest scores, feature drift."""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def curve(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str) -> bytes:
    """A ROC curve (with the chance diagonal) or a precision-recall curve."""
    figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
    axes.plot(x, y)
    if xlabel == "false positive rate":
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.02))
    return _png(figure)


def scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> bytes:
    """The score distribution of each class, with the decision threshold."""
    figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
    bins = np.linspace(0, 1, 41).tolist()
    for label, name in ((0, "paid on time"), (1, "late")):
        axes.hist(scores[labels == label], bins=bins, density=True, alpha=0.5, label=name)
    axes.axvline(threshold, color="black", linestyle="--", label="threshold")
    axes.set(xlabel="score", ylabel="density", title="Scores in the backtest window")
    axes.legend()
    return _png(figure)


def drift(psi: Mapping[str, float], limit: float) -> bytes:
    """The population stability index of each feature, with the limit."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.barh(list(psi), list(psi.values()))
    axes.axvline(limit, color="red", linestyle="--", label="limit")
    axes.set(xlabel="population stability index", title="Feature drift against the training data")
    axes.legend()
    return _png(figure)
