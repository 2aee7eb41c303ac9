"""Which knobs explain the score: estimators in the scikit-learn style.

Every method is a :class:`FactorImportance` registered in :data:`METHODS`:
``fit(X, y, groups)`` returns self and sets ``factor_importances_`` (a DataFrame
indexed by knob with columns importance, low, high). ``X`` is the encoded design
matrix (:class:`~analysis.encoding.KnobEncoder`) for the sklearn methods and the
raw knob table for the Optuna ones (``input = "raw"``). A method that cannot run
on the data raises :class:`InputError` saying why; the report lists it.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.inspection import permutation_importance
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, export_text

from routed_study.analysis.encoding import labels, mark_not_applicable
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import KNOBS


def broken_labels(y: np.ndarray, threshold: float | None = None, quantile: float = 0.25) -> tuple[np.ndarray, float]:
    """1 = broken (NaN, or at/below the threshold; default the bottom quantile), 0 = good."""
    finite = y[np.isfinite(y)]
    cut = float(np.quantile(finite, quantile)) if threshold is None else float(threshold)
    return np.where(np.isfinite(y), y <= cut, True).astype(int), cut


def group_sum(values: pd.Series, groups: dict[str, str]) -> pd.Series:
    """Feature-level values -> knob-level sums (a knob's one-hot columns make one factor)."""
    return values.groupby(values.index.map(groups)).sum()


class FactorImportance(BaseEstimator, ABC):
    name: ClassVar[str]
    input: ClassVar[str] = "encoded"
    #: fewest trials with a target value the method needs.
    min_trials: ClassVar[int] = 10

    def _check(self, y: np.ndarray) -> np.ndarray:
        finite = np.isfinite(y)
        if finite.sum() < self.min_trials:
            raise InputError(f"{self.name} needs at least {self.min_trials} trials with a target value, "
                             f"got {int(finite.sum())}")
        if np.ptp(y[finite]) == 0:
            raise InputError(f"{self.name}: the target is constant, nothing to explain")
        return finite

    @abstractmethod
    def fit(self, X: pd.DataFrame, y, groups: dict[str, str]) -> "FactorImportance": ...


class TreeImportance(FactorImportance):
    """A decision tree (depth by cross-validation); impurity importances and its rules.

    Parameters
    ----------
    task : "regressor" (target: the score) or "classifier" (target: broken vs good).
    max_depths : depths tried by GridSearchCV.
    cv : folds.
    threshold, quantile : the classifier's broken cut (score <= threshold, default the bottom quantile).
    max_trials : rows used for the depth search (a random subsample above it; the final tree uses all).
    """

    def __init__(self, task: str = "regressor", max_depths=(1, 2, 3, 4, 5, 6, 8), cv: int = 5,
                 threshold: float | None = None, quantile: float = 0.25, max_trials: int = 2000,
                 random_state: int = 0):
        self.task = task
        self.max_depths = max_depths
        self.cv = cv
        self.threshold = threshold
        self.quantile = quantile
        self.max_trials = max_trials
        self.random_state = random_state

    @property
    def name(self) -> str:
        return f"tree_{self.task}"

    def _target(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "regressor":
            return self._check(y), y
        labels, self.threshold_ = broken_labels(y, self.threshold, self.quantile)
        if labels.min() == labels.max():
            raise InputError(f"{self.name}: every trial is {'broken' if labels[0] else 'good'} at "
                             f"threshold {self.threshold_:g}")
        if np.bincount(labels).min() < self.cv:
            raise InputError(f"{self.name} needs at least {self.cv} broken and {self.cv} good trials")
        return np.ones(len(y), bool), labels

    def fit(self, X: pd.DataFrame, y, groups: dict[str, str]) -> "TreeImportance":
        y = np.asarray(y, float)
        rows, target = self._target(y)
        X, target = X[rows], target[rows]
        if len(target) < 2 * self.cv:
            raise InputError(f"{self.name} needs at least {2 * self.cv} trials, got {len(target)}")
        base = (DecisionTreeRegressor if self.task == "regressor" else DecisionTreeClassifier)(
            random_state=self.random_state, min_samples_leaf=max(2, len(target) // 200))
        rng = np.random.default_rng(self.random_state)
        search_rows = np.sort(rng.choice(len(target), min(len(target), self.max_trials), replace=False))
        splitter = (KFold if self.task == "regressor" else StratifiedKFold)(
            self.cv, shuffle=True, random_state=self.random_state)
        search = GridSearchCV(base, {"max_depth": list(self.max_depths)}, cv=splitter)
        Xv = X.to_numpy(float)  # arrays: sklearn's per-call DataFrame checks are slow on wide tables
        search.fit(Xv[search_rows], target[search_rows])
        self.best_depth_ = int(search.best_params_["max_depth"])
        self.cv_score_ = float(search.best_score_)  # R^2 or accuracy on held-out folds
        self.estimator_ = clone(base).set_params(max_depth=self.best_depth_).fit(Xv, target)
        self.feature_importances_ = pd.Series(self.estimator_.feature_importances_, index=X.columns)
        imp = group_sum(self.feature_importances_, groups)
        self.factor_importances_ = pd.DataFrame({"importance": imp, "low": np.nan, "high": np.nan})
        self.rules_ = export_text(self.estimator_, feature_names=list(X.columns), decimals=3)
        self.n_trials_ = len(target)
        return self


class PermutationImportance(FactorImportance):
    """Permutation importance of a CV-depth tree on held-out folds, summed per knob.

    ``factor_importances_`` holds the mean drop in R^2 over folds x repeats with a
    5-95 % interval; ``feature_importances_`` the per-column means.
    """

    name = "permutation"

    def __init__(self, cv: int = 3, n_repeats: int = 3, max_trials: int = 2000, random_state: int = 0):
        self.cv = cv
        self.n_repeats = n_repeats
        self.max_trials = max_trials
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y, groups: dict[str, str]) -> "PermutationImportance":
        y = np.asarray(y, float)
        rows = self._check(y)
        X, y = X[rows], y[rows]
        rng = np.random.default_rng(self.random_state)
        keep = np.sort(rng.choice(len(y), min(len(y), self.max_trials), replace=False))
        X, y = X.iloc[keep], y[keep]
        self.n_trials_ = len(y)
        tree = TreeImportance(max_trials=self.max_trials, random_state=self.random_state).fit(X, y, groups)
        draws = []  # one row of per-feature drops per fold x repeat
        Xv = X.to_numpy(float)  # arrays: sklearn's per-call DataFrame checks dominate otherwise
        for train, test in KFold(self.cv, shuffle=True, random_state=self.random_state).split(Xv):
            model = clone(tree.estimator_).fit(Xv[train], y[train])
            result = permutation_importance(model, Xv[test], y[test], n_repeats=self.n_repeats,
                                            random_state=self.random_state)
            draws.append(result.importances.T)
        draws = pd.DataFrame(np.vstack(draws), columns=X.columns)
        self.feature_importances_ = draws.mean()
        per_knob = draws.T.groupby(draws.columns.map(groups)).sum().T
        self.factor_importances_ = pd.DataFrame({"importance": per_knob.mean(),
                                                 "low": per_knob.quantile(0.05),
                                                 "high": per_knob.quantile(0.95)})
        return self


class OptunaImportance(FactorImportance):
    """Optuna's fANOVA or PED-ANOVA on an in-memory study rebuilt from the trials.

    Categorical knobs, and numeric knobs that were sometimes not applicable, enter
    as categorical parameters (``n/a`` a category), as do numbers with at most
    ``max_levels`` distinct values; other numbers as float
    distributions (log where the knob's space is log). Categorical parameters with
    more than ``max_levels`` levels are left out (listed in ``skipped_``): the
    cost of Optuna's fANOVA marginals explodes with them (200 trials with a
    40-level knob took 40 s here).
    """

    input = "raw"

    def __init__(self, evaluator: str = "fanova", max_trials: int = 500, max_levels: int = 16,
                 n_trees: int = 16, max_depth: int = 8, maximize: bool = True, random_state: int = 0):
        self.evaluator = evaluator
        self.n_trees = n_trees
        self.max_depth = max_depth
        self.max_trials = max_trials
        self.max_levels = max_levels
        self.maximize = maximize
        self.random_state = random_state

    @property
    def name(self) -> str:
        return self.evaluator

    def _distributions(self, raw: pd.DataFrame):
        import optuna

        dists, self.skipped_ = {}, {}
        for knob in raw.columns:
            values = raw[knob]
            numeric = pd.to_numeric(values, errors="coerce")
            spec = KNOBS.get(knob)
            # A number with few distinct values (num_prompt_tokens in {5, 10, 20}) is a level, not a
            # continuum: as a float, PED-ANOVA's Parzen estimates spike on it and overrate it.
            categorical = (numeric.isna().any() or any(isinstance(v, (bool, np.bool_)) for v in pd.unique(values))
                           or (spec is not None and spec.kind == "choice") or numeric.nunique() <= self.max_levels)
            if categorical:
                levels = sorted(set(labels(values)), key=str)
                if len(levels) > self.max_levels:
                    self.skipped_[knob] = f"{len(levels)} levels > max_levels={self.max_levels}"
                    continue
                dists[knob] = optuna.distributions.CategoricalDistribution(levels)
            elif numeric.min() < numeric.max():
                log = bool(spec is not None and spec.log and numeric.min() > 0)
                dists[knob] = optuna.distributions.FloatDistribution(float(numeric.min()), float(numeric.max()),
                                                                     log=log)
        return dists

    def fit(self, X: pd.DataFrame, y, groups: dict[str, str] | None = None) -> "OptunaImportance":
        import optuna

        y = np.asarray(y, float)
        rows = self._check(y)
        rng = np.random.default_rng(self.random_state)
        keep = np.flatnonzero(rows)
        keep = np.sort(rng.choice(keep, min(len(keep), self.max_trials), replace=False))
        raw = mark_not_applicable(X.iloc[keep], list(X.columns))
        dists = self._distributions(raw)
        if not dists:
            raise InputError(f"{self.name}: no knob varies")
        direction = "maximize" if self.maximize else "minimize"
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one 'study created' line per fit otherwise
        study = optuna.create_study(direction=direction)
        columns = {k: (labels(raw[k]) if isinstance(d, optuna.distributions.CategoricalDistribution)
                       else raw[k].astype(float)).to_list() for k, d in dists.items()}
        trials = [optuna.trial.create_trial(value=float(value), distributions=dists,
                                            params={k: columns[k][i] for k in dists})
                  for i, value in enumerate(y[keep])]
        study.add_trials(trials)
        evaluator = (optuna.importance.FanovaImportanceEvaluator(
            n_trees=self.n_trees, max_depth=self.max_depth, seed=self.random_state)
                     if self.evaluator == "fanova" else optuna.importance.PedAnovaImportanceEvaluator())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns that these evaluators are experimental
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
        self.n_trials_ = len(keep)
        self.factor_importances_ = pd.DataFrame({"importance": pd.Series(imp), "low": np.nan, "high": np.nan})
        return self


class BootstrapRanks(BaseEstimator):
    """Stability of the tree's grouped importance: bootstrap over configurations and seeds.

    Resamples configurations (rows with the same knobs except the seed) with
    replacement, then seeds within each chosen configuration where repeats exist,
    refits the tree at ``depth`` and ranks the knobs. ``ranks_`` has, per knob, the
    median rank, its ``1 - alpha`` interval, the importance interval and
    ``p_first`` (share of resamples where it ranks first).
    """

    def __init__(self, depth: int = 4, n_boot: int = 50, max_trials: int = 2000, alpha: float = 0.1,
                 random_state: int = 0):
        self.depth = depth
        self.n_boot = n_boot
        self.max_trials = max_trials
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y, groups: dict[str, str], clusters=None) -> "BootstrapRanks":
        y = np.asarray(y, float)
        rows = np.isfinite(y)
        X, y = X[rows], y[rows]
        clusters = np.arange(len(y)) if clusters is None else np.asarray(clusters)[rows]
        _, clusters = np.unique(clusters, return_inverse=True)
        order = np.argsort(clusters, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(clusters[order])) + 1)
        rng = np.random.default_rng(self.random_state)
        n_pick = max(1, int(len(members) * min(1.0, self.max_trials / len(y))))
        self.n_trials_ = min(len(y), self.max_trials)
        knobs = list(dict.fromkeys(groups[c] for c in X.columns))
        imps, ranks = [], []
        tree = DecisionTreeRegressor(max_depth=self.depth, random_state=self.random_state)
        Xv = X.to_numpy()
        repeats = max(len(m) for m in members) > 1
        single = np.array([m[0] for m in members])
        for _ in range(self.n_boot):
            picked = rng.integers(0, len(members), n_pick)
            idx = (np.concatenate([rng.choice(members[c], len(members[c])) for c in picked]) if repeats
                   else single[picked])  # one trial per configuration
            fitted = tree.fit(Xv[idx], y[idx])
            imp = group_sum(pd.Series(fitted.feature_importances_, index=X.columns), groups).reindex(knobs)
            imps.append(imp)
            ranks.append(imp.rank(ascending=False, method="min"))
        imps, ranks = pd.DataFrame(imps), pd.DataFrame(ranks)
        lo, hi = self.alpha / 2, 1 - self.alpha / 2
        self.ranks_ = pd.DataFrame({"rank": ranks.median(), "rank_low": ranks.quantile(lo),
                                    "rank_high": ranks.quantile(hi), "low": imps.quantile(lo),
                                    "high": imps.quantile(hi), "p_first": (ranks == 1).mean()})
        self.has_repeats_ = bool(repeats)
        return self


#: Importance methods by name; each builds an unfitted estimator.
METHODS: dict[str, type] = {
    "tree_regressor": lambda **kw: TreeImportance(task="regressor", **kw),
    "tree_classifier": lambda **kw: TreeImportance(task="classifier", **kw),
    "permutation": PermutationImportance,
    "fanova": lambda **kw: OptunaImportance(evaluator="fanova", **kw),
    "ped_anova": lambda **kw: OptunaImportance(evaluator="ped_anova", **kw),
}
