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


def to_data_uri(fig, dpi: int = 60) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def importance_chart(table: pd.DataFrame, top: int = 12) -> str:
    """Every method side by side: one group of bars per knob, one bar per method, with intervals.

    ``table``: columns factor, method, importance, low, high. Methods measure on different
    scales, so each method's values (and interval) are divided by its largest importance.
    Knobs are ordered by their mean scaled importance; the top ``top`` are drawn.
    """
    table = table.copy()
    scale = table.groupby("method")["importance"].transform(lambda v: v.abs().max() or 1.0)
    for column in ("importance", "low", "high"):
        table[column] = table[column] / scale
    order = table.groupby("factor")["importance"].mean().sort_values(ascending=False).index[:top][::-1]
    methods = list(dict.fromkeys(table["method"]))
    height = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(order) * len(methods) + 1.5))
    for i, method in enumerate(methods):
        part = table[table["method"] == method].set_index("factor").reindex(order)
        y = np.arange(len(order)) + (i - (len(methods) - 1) / 2) * height
        err = None
        if part[["low", "high"]].notna().any().any():
            err = np.vstack([(part["importance"] - part["low"]).clip(lower=0).fillna(0),
                             (part["high"] - part["importance"]).clip(lower=0).fillna(0)])
        ax.barh(y, part["importance"].fillna(0), height=height, xerr=err, capsize=2, label=method)
    ax.set_yticks(np.arange(len(order)), order)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("importance, scaled to each method's largest (bars: intervals where the method has one)")
    ax.legend(loc="lower right", fontsize=8)
    return to_data_uri(fig, dpi=90)  # the page's main chart


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
