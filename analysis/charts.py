"""Matplotlib figures rendered to inline PNG data URIs (the report needs no network)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.tree import plot_tree  # noqa: E402


def to_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def importance_chart(table: pd.DataFrame, title: str, top: int = 15) -> str:
    """Horizontal bars with the interval (columns factor, importance, low, high)."""
    table = table.sort_values("importance", ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(table) + 1))
    err = None
    if table[["low", "high"]].notna().all().all():
        err = np.vstack([(table["importance"] - table["low"]).clip(lower=0),
                         (table["high"] - table["importance"]).clip(lower=0)])
    ax.barh(table["factor"], table["importance"], xerr=err, color="#4472c4", capsize=3)
    ax.set_title(title)
    ax.set_xlabel("importance")
    return to_data_uri(fig)


def tree_chart(estimator, feature_names: list[str], max_depth: int = 3) -> str:
    fig, ax = plt.subplots(figsize=(11, 5))
    plot_tree(estimator, feature_names=feature_names, max_depth=max_depth, filled=True, fontsize=7,
              impurity=False, proportion=False, ax=ax)
    return to_data_uri(fig)


def factor_chart(values: pd.Series, y: pd.Series, knob: str, target: str, numeric: bool) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 3))
    if numeric:
        ax.scatter(values, y, s=6, alpha=0.5)
    else:
        labels = sorted(values.unique(), key=str)
        ax.boxplot([y[values == v].to_numpy() for v in labels], tick_labels=[str(v) for v in labels])
        ax.tick_params(axis="x", rotation=30)
    ax.set_xlabel(knob)
    ax.set_ylabel(target)
    return to_data_uri(fig)


def heatmap(matrix: pd.DataFrame, title: str) -> str:
    fig, ax = plt.subplots(figsize=(0.6 * matrix.shape[1] + 2, 0.45 * matrix.shape[0] + 1.2))
    image = ax.imshow(matrix.to_numpy(float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return to_data_uri(fig)
