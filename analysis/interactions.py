"""Pairwise interaction strength of two knobs on a fitted surrogate: Friedman's H statistic.

H^2 of knobs a and b is the share of the variance of their joint partial dependence that
the sum of their one-knob partial dependences does not explain (0: additive; 1: all
interaction). Partial dependence is computed by hand because a knob may span several
encoded columns (one-hot levels, NaN where not applicable) that must move together;
the grid of a knob is its distinct encoded values (at most ``max_grid``, by quantile for a
continuous knob). H is computed on each fold model of the ``forest`` method; the spread
over folds is the interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from routed_study.analysis.importance import Design


def _grid(values: np.ndarray, max_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a knob's encoded columns (NaN as a value) and each row's grid index."""
    keys = np.where(np.isnan(values), np.inf, values)  # inf stands for NaN so rows compare equal
    grid, index = np.unique(keys, axis=0, return_inverse=True)
    if len(grid) > max_grid:  # a continuous knob: quantiles of its (single) column
        qs = np.unique(np.nanquantile(values[:, 0], np.linspace(0, 1, max_grid)))
        grid = qs[:, None]
        index = np.abs(values[:, :1] - grid.T).argmin(1)
        index = np.where(np.isnan(values[:, 0]), len(grid), index)
        grid = np.vstack([grid, [[np.inf]]])
    return np.where(np.isinf(grid), np.nan, grid), index.ravel()


def h_statistic(model, X: np.ndarray, cols_a: list[int], cols_b: list[int], max_grid: int = 8,
                max_rows: int = 100, random_state: int = 0) -> float:
    rng = np.random.default_rng(random_state)
    background = X[rng.choice(len(X), min(len(X), max_rows), replace=False)]
    grid_a, index_a = _grid(X[:, cols_a], max_grid)
    grid_b, index_b = _grid(X[:, cols_b], max_grid)

    # Every grid point of a, of b and of the pair as one stacked copy of the background: one
    # predict call per model (a forest's per-call overhead dominates small predictions).
    settings = ([[(cols_a, ga)] for ga in grid_a] + [[(cols_b, gb)] for gb in grid_b]
                + [[(cols_a, ga), (cols_b, gb)] for ga in grid_a for gb in grid_b])
    copies = np.repeat(background[None], len(settings), axis=0)
    for copy, assign in zip(copies, settings):
        for cols, value in assign:
            copy[:, cols] = value
    means = model.predict(copies.reshape(-1, X.shape[1])).reshape(len(settings), -1).mean(1)
    pd_a, pd_b = means[:len(grid_a)], means[len(grid_a):len(grid_a) + len(grid_b)]
    pd_ab = means[len(grid_a) + len(grid_b):].reshape(len(grid_a), len(grid_b))
    weight = np.zeros(pd_ab.shape)
    np.add.at(weight, (index_a, index_b), 1)  # how often each pair of grid values occurs in the data
    weight /= weight.sum()
    wa, wb = weight.sum(1), weight.sum(0)
    a = pd_a - wa @ pd_a
    b = pd_b - wb @ pd_b
    ab = pd_ab - (weight * pd_ab).sum()
    total = (weight * ab ** 2).sum()
    if total <= 0:
        return 0.0
    return float(np.sqrt((weight * (ab - a[:, None] - b[None, :]) ** 2).sum() / total))


def pair_strengths(forest, design: Design, pairs: list[tuple[str, str, str]]) -> pd.DataFrame:
    """H of each (claim, knob_a, knob_b) on the forest's fold models: median and range over folds."""
    X = design.X.to_numpy(float)
    names = list(design.X.columns)
    rows = []
    for claim, a, b in pairs:
        cols_a = [i for i, c in enumerate(names) if design.groups[c] == a]
        cols_b = [i for i, c in enumerate(names) if design.groups[c] == b]
        if not cols_a or not cols_b:
            rows.append({"claim": claim, "knob_a": a, "knob_b": b, "h": np.nan, "low": np.nan, "high": np.nan,
                         "note": "a knob of the pair was never varied"})
            continue
        hs = [h_statistic(m, X, cols_a, cols_b, random_state=i) for i, m in enumerate(forest.estimators_)]
        rows.append({"claim": claim, "knob_a": a, "knob_b": b, "h": float(np.median(hs)), "low": min(hs),
                     "high": max(hs), "note": f"over {len(hs)} fold models"})
    return pd.DataFrame(rows, columns=["claim", "knob_a", "knob_b", "h", "low", "high", "note"])
