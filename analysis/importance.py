"""Which knobs explain the score: importance methods in the scikit-learn style.

Every method is one class registered with :func:`register_method`; its options are its
``__init__`` parameters (with defaults), so a caller builds any method as
``METHODS[name](random_state=...)`` and fits it on a :class:`Design`, the one input
every method takes (raw knob values with 'n/a' marks, the encoded matrix, the
configuration of each row). ``fit(design)`` returns self and sets
``factor_importances_``: a DataFrame indexed by knob with columns importance, low,
high (an interval where the method has one), p_value and verdict ("matters",
"does not matter", "cannot tell"; empty where the method has no null reference).
A method that cannot run on the data raises :class:`InputError` saying why; the
report lists it. A researcher's own method is a class in their own module with the
same decorator, imported through ``plugins``.

Repeats: the seeds of one configuration are one cluster everywhere here: folds are
grouped by configuration (no configuration is in a fold's training and test rows),
permutations move whole configurations, subsamples keep or drop whole configurations.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, export_text

from routed_study.analysis.encoding import KnobEncoder, labels, mark_not_applicable
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import KNOBS

#: Verdicts of the per-knob null reference.
MATTERS, DOES_NOT, CANNOT_TELL = "matters", "does not matter", "cannot tell"
#: The trials and scores every importance method and claim uses by default.
COMPLETED_VIEW = "completed or errored trials, final scores"


@dataclass
class Design:
    """What every importance method fits on: one row per trial.

    raw: knob columns, 'n/a' where a knob did not apply; X: the encoded matrix
    (:class:`KnobEncoder`); groups: encoded column -> knob; y: the target signed so that
    higher is better (NaN: no value); clusters: configuration id per row (repeats share one);
    view: which trials and which score y holds, in words (the report prints it).
    """

    raw: pd.DataFrame
    X: pd.DataFrame
    groups: dict[str, str]
    y: np.ndarray
    clusters: np.ndarray
    view: str = COMPLETED_VIEW

    @classmethod
    def completed(cls, frame: pd.DataFrame, knobs: list[str], target: str, clusters,
                  encoder: KnobEncoder | None = None) -> "Design":
        """The trials that ran their full budget or errored: an early-stopped trial's partly-trained
        score measures how fast it learned, not where it ends, so it enters no importance."""
        rows = (frame["status"] != "early_stopped").to_numpy() if "status" in frame else np.ones(len(frame), bool)
        kept = frame[rows]
        return cls.from_frame(kept, knobs, kept[target], np.asarray(clusters)[rows], encoder)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, knobs: list[str], y, clusters=None,
                   encoder: KnobEncoder | None = None, view: str = COMPLETED_VIEW) -> "Design":
        encoder = encoder or KnobEncoder().fit(frame[knobs])
        clusters = np.arange(len(frame)) if clusters is None else np.asarray(clusters)
        return cls(raw=mark_not_applicable(frame, knobs), X=encoder.transform(frame[knobs]),
                   groups=encoder.groups_, y=np.asarray(y, float), clusters=clusters, view=view)

    @property
    def knobs(self) -> list[str]:
        return list(dict.fromkeys(self.groups.values()))

    def subset(self, rows: np.ndarray) -> "Design":
        return replace(self, raw=self.raw.iloc[rows], X=self.X.iloc[rows], y=self.y[rows],
                       clusters=self.clusters[rows])

    def sample_configurations(self, max_trials: int, rng) -> np.ndarray:
        """Row indices of whole configurations drawn at random until about ``max_trials`` rows."""
        if len(self.y) <= max_trials:
            return np.arange(len(self.y))
        ids = pd.unique(self.clusters)
        keep = rng.permutation(ids)[: max(2, int(len(ids) * max_trials / len(self.y)))]
        return np.flatnonzero(np.isin(self.clusters, keep))


#: Importance methods by name (registration order: the report's order).
METHODS: dict[str, type["FactorImportance"]] = {}


def register_method(name: str):
    """Class decorator: the class becomes importance method ``name`` (a plugin's too)."""
    def decorate(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"importance method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def broken_labels(y: np.ndarray, threshold: float | None = None, quantile: float = 0.25) -> tuple[np.ndarray, float]:
    """1 = broken (NaN, or at/below the threshold; default the bottom quantile), 0 = good."""
    finite = y[np.isfinite(y)]
    cut = float(np.quantile(finite, quantile)) if threshold is None else float(threshold)
    return np.where(np.isfinite(y), y <= cut, True).astype(int), cut


def group_sum(values: pd.Series, groups: dict[str, str]) -> pd.Series:
    """Feature-level values -> knob-level sums (a knob's one-hot columns make one factor)."""
    return values.groupby(values.index.map(groups)).sum()


def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values (NaN stays NaN)."""
    from statsmodels.stats.multitest import multipletests

    out = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        out[ok] = multipletests(p[ok].to_numpy(float), method="holm")[1]
    return out


class FactorImportance(BaseEstimator, ABC):
    """Base of every importance method; ``name`` is set by :func:`register_method`."""

    name: ClassVar[str]
    #: fewest trials with a target value the method needs.
    min_trials: ClassVar[int] = 10

    def _finite(self, design: Design) -> np.ndarray:
        finite = np.isfinite(design.y)
        if finite.sum() < self.min_trials:
            raise InputError(f"{self.name} needs at least {self.min_trials} trials with a target value, "
                             f"got {int(finite.sum())}")
        if np.ptp(design.y[finite]) == 0:
            raise InputError(f"{self.name}: the target is constant, nothing to explain")
        return np.flatnonzero(finite)

    @abstractmethod
    def fit(self, design: Design) -> "FactorImportance": ...

    def _result(self, importance: pd.Series, low=np.nan, high=np.nan, p_value=np.nan,
                verdict="") -> pd.DataFrame:
        return pd.DataFrame({"importance": importance, "low": low, "high": high, "p_value": p_value,
                             "verdict": verdict})


@register_method("forest")
class ForestImportance(FactorImportance):
    """Held-out permutation importance of a random-forest surrogate, with a null per knob.

    Folds are grouped by configuration (GroupKFold), so no configuration is in a fold's
    training and test rows. In each test fold a knob's columns are permuted across whole
    configurations (``n_repeats`` times); a knob's importance is the mean rise in held-out
    squared error over the configurations, as a share of the target's variance (drop in R^2).
    Its null reference: a knob the surrogate cannot use to predict unseen configurations has
    mean rise 0; the one-sided p-value tests mean > 0 across the folds (t with cv - 1 degrees
    of freedom; each fold has its own model), Holm-adjusted across knobs. Verdict: "matters"
    where the adjusted p < ``alpha``, "does not matter" where the upper end of the
    ``1 - alpha`` interval is below ``negligible``, else "cannot tell". Knobs with
    importance <= 0 are unranked.

    The held-out fit (``cv_score_``: grouped-CV R^2, and ``cv_p_``: the one-sided p, across
    folds, of "the surrogate predicts unseen configurations no better than their mean") gates
    any use of its ranking. ``draws_``: joint draws (rows) of every knob's importance from the
    folds' spread and covariance (multivariate t, ``n_boot`` of them), for rank probabilities
    (:mod:`analysis.ranking`). Intervals are t intervals over the folds.

    Parameters: n_estimators, min_samples_leaf, max_features (the forest); cv (folds);
    n_repeats (permutations per knob and fold); n_boot (draws for rank probabilities);
    max_trials (rows used: whole configurations drawn at random above it; stated in the report);
    alpha; negligible (share of variance below which a knob "does not matter").
    """

    def __init__(self, n_estimators: int = 30, min_samples_leaf: int = 3, max_features: float = 0.5,
                 cv: int = 10, n_repeats: int = 2, n_boot: int = 400, max_trials: int = 1500,
                 alpha: float = 0.05, negligible: float = 0.01, random_state: int = 0):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.cv = cv
        self.n_repeats = n_repeats
        self.n_boot = n_boot
        self.max_trials = max_trials
        self.alpha = alpha
        self.negligible = negligible
        self.random_state = random_state

    def fit(self, design: Design) -> "ForestImportance":
        rng = np.random.default_rng(self.random_state)
        design = design.subset(self._finite(design))
        design = design.subset(design.sample_configurations(self.max_trials, rng))
        _, clusters = np.unique(design.clusters, return_inverse=True)
        n_configs = clusters.max() + 1
        if n_configs < 2 * self.cv:
            raise InputError(f"{self.name} needs at least {2 * self.cv} distinct configurations, got {n_configs}")
        X, y = design.X.to_numpy(float), design.y
        knobs = design.knobs
        columns = {k: [i for i, c in enumerate(design.X.columns) if design.groups[c] == k] for k in knobs}
        forest = RandomForestRegressor(n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                                       max_features=self.max_features, random_state=self.random_state)
        # Per-configuration sums of squared error: base model, mean predictor, each knob permuted.
        base_loss = np.zeros(n_configs)
        mean_loss = np.zeros(n_configs)
        rise = np.zeros((n_configs, len(knobs)))
        fold_of = np.zeros(n_configs, int)
        self.estimators_ = []
        for fold, (train, test) in enumerate(GroupKFold(self.cv).split(X, y, clusters)):
            model = clone(forest).fit(X[train], y[train])
            self.estimators_.append(model)
            Xt, yt, ct = X[test], y[test], clusters[test]
            fold_of[ct] = fold
            base = (model.predict(Xt) - yt) ** 2
            np.add.at(base_loss, ct, base)
            np.add.at(mean_loss, ct, (y[train].mean() - yt) ** 2)
            ids, first = np.unique(ct, return_index=True)
            position = np.searchsorted(ids, ct)
            # Every permuted copy of the test fold in one predict call (per-call overhead dominates).
            copies = []
            for knob in knobs:
                for _ in range(self.n_repeats):
                    moved = Xt.copy()
                    # Whole configurations swap their values of this knob (repeats stay together).
                    donor = first[rng.permutation(len(ids))][position]
                    moved[:, columns[knob]] = Xt[donor][:, columns[knob]]
                    copies.append(moved)
            predicted = model.predict(np.vstack(copies)).reshape(len(knobs), self.n_repeats, len(yt))
            excess = ((predicted - yt) ** 2 - base).mean(1)  # knobs x test rows
            for j in range(len(knobs)):
                np.add.at(rise[:, j], ct, excess[j])
        scale = float(((y - y.mean()) ** 2).sum())  # total squared deviation: rises become shares of R^2
        self.cv_score_ = 1 - base_loss.sum() / mean_loss.sum()
        gain = (mean_loss - base_loss) / scale  # per configuration: its part of the held-out R^2
        share = rise / scale
        # Tests across folds: each fold has its own model, so the spread of the fold estimates holds
        # the surrogate's fit-to-fit variation as well as the configurations' (a per-configuration
        # standard error misses the first and calls noise knobs important).
        fold_share = np.array([share[fold_of == f].mean(0) for f in range(self.cv)]) * n_configs
        fold_gain = np.array([gain[fold_of == f].mean() for f in range(self.cv)]) * n_configs
        importance = pd.Series(share.sum(0), index=knobs)
        se = pd.Series(fold_share.std(0, ddof=1) / np.sqrt(self.cv), index=knobs)
        p = pd.Series(student_t.sf(importance / se.where(se > 0), self.cv - 1), index=knobs).fillna(1.0)
        # Joint draws of every knob's importance for rank probabilities: multivariate t with the
        # folds' covariance (the same spread as the per-knob tests above).
        cov = np.atleast_2d(np.cov(fold_share.T, ddof=1)) / self.cv
        normal = rng.multivariate_normal(np.zeros(len(knobs)), cov, self.n_boot, method="eigh",
                                         check_valid="ignore")
        scale_t = np.sqrt((self.cv - 1) / rng.chisquare(self.cv - 1, self.n_boot))[:, None]
        self.draws_ = pd.DataFrame(importance.to_numpy() + normal * scale_t, columns=knobs)
        self.cv_p_ = float(student_t.sf(fold_gain.mean() / max(fold_gain.std(ddof=1) / np.sqrt(self.cv), 1e-300),
                                        self.cv - 1))
        z = student_t.ppf(1 - self.alpha / 2, self.cv - 1)
        p_adjusted = holm(p)
        low, high = importance - z * se, importance + z * se
        verdict = np.where(p_adjusted < self.alpha, MATTERS,
                           np.where(high < self.negligible, DOES_NOT, CANNOT_TELL))
        self.factor_importances_ = self._result(importance, low, high, p_adjusted, verdict)
        self.n_trials_, self.n_configs_ = len(y), int(n_configs)
        return self


class TreeImportance(FactorImportance):
    """One decision tree, depth chosen by grouped CV; impurity importances and its rules
    (``rules_``). Regressor or classifier by ``task`` (subclasses below)."""

    task: ClassVar[str]

    def __init__(self, max_depths=(1, 2, 3, 4, 5, 6, 8), cv: int = 5, threshold: float | None = None,
                 quantile: float = 0.25, max_trials: int = 2000, random_state: int = 0):
        self.max_depths = max_depths
        self.cv = cv
        self.threshold = threshold
        self.quantile = quantile
        self.max_trials = max_trials
        self.random_state = random_state

    def _target(self, design: Design) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fit(self, design: Design) -> "TreeImportance":
        rows, target = self._target(design)
        design, target = design.subset(rows), target[rows]
        _, clusters = np.unique(design.clusters, return_inverse=True)
        if clusters.max() + 1 < 2 * self.cv:
            raise InputError(f"{self.name} needs at least {2 * self.cv} trials in distinct configurations, "
                             f"got {clusters.max() + 1}")
        regressor = self.task == "regressor"
        base = (DecisionTreeRegressor if regressor else DecisionTreeClassifier)(
            random_state=self.random_state, min_samples_leaf=max(2, len(target) // 200))
        rng = np.random.default_rng(self.random_state)
        search_rows = design.sample_configurations(self.max_trials, rng)
        splitter = GroupKFold(self.cv) if regressor else StratifiedGroupKFold(self.cv)
        search = GridSearchCV(base, {"max_depth": list(self.max_depths)}, cv=splitter)
        Xv = design.X.to_numpy(float)  # arrays: sklearn's per-call DataFrame checks are slow on wide tables
        search.fit(Xv[search_rows], target[search_rows], groups=clusters[search_rows])
        self.best_depth_ = int(search.best_params_["max_depth"])
        # The best of several depths on the same folds: a description, not a held-out score.
        self.cv_score_ = float(search.best_score_)
        self.estimator_ = clone(base).set_params(max_depth=self.best_depth_).fit(Xv, target)
        self.feature_importances_ = pd.Series(self.estimator_.feature_importances_, index=design.X.columns)
        self.factor_importances_ = self._result(group_sum(self.feature_importances_, design.groups))
        self.rules_ = export_text(self.estimator_, feature_names=list(design.X.columns), decimals=3)
        self.n_trials_ = len(target)
        return self


@register_method("tree_regressor")
class TreeRegressorImportance(TreeImportance):
    """The score's decision tree (trials with a score)."""

    task = "regressor"

    def _target(self, design: Design):
        return self._finite(design), design.y

    def describe(self) -> str:
        return f"depth {self.best_depth_} by grouped CV, R^2 {self.cv_score_:.3f} at that depth"


@register_method("tree_classifier")
class TreeClassifierImportance(TreeImportance):
    """Broken vs good: a trial is broken when it has no score (errored, diverged) or scores at or
    below ``threshold`` (default: the bottom ``quantile``)."""

    task = "classifier"

    def _target(self, design: Design):
        labels_, self.threshold_ = broken_labels(design.y, self.threshold, self.quantile)
        if labels_.min() == labels_.max():
            raise InputError(f"{self.name}: every trial is {'broken' if labels_[0] else 'good'} at "
                             f"threshold {self.threshold_:g}")
        if np.bincount(labels_).min() < self.cv:
            raise InputError(f"{self.name} needs at least {self.cv} broken and {self.cv} good trials")
        return np.arange(len(labels_)), labels_

    def describe(self) -> str:
        return (f"depth {self.best_depth_} by grouped CV, accuracy {self.cv_score_:.3f}; broken: no score "
                f"or score <= {self.threshold_:g}")


class OptunaImportance(FactorImportance):
    """Optuna's importance evaluators on an in-memory study rebuilt from the trials.

    Categorical knobs, and numeric knobs that were sometimes not applicable, enter as
    categorical parameters (``n/a`` a category), as do numbers with at most ``max_levels``
    distinct values; other numbers as float distributions (log where the knob's space is
    log). Categorical parameters with more than ``max_levels`` levels are left out
    (``skipped_``): the cost of Optuna's fANOVA marginals explodes with them. At most
    ``max_trials`` trials (whole configurations, at random) enter. No interval, no null.
    """

    def __init__(self, max_trials: int = 500, max_levels: int = 16, random_state: int = 0):
        self.max_trials = max_trials
        self.max_levels = max_levels
        self.random_state = random_state

    def _evaluator(self):
        raise NotImplementedError

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
                if len(levels) > 1:
                    dists[knob] = optuna.distributions.CategoricalDistribution(levels)
            elif numeric.min() < numeric.max():
                log = bool(spec is not None and spec.log and numeric.min() > 0)
                dists[knob] = optuna.distributions.FloatDistribution(float(numeric.min()), float(numeric.max()),
                                                                     log=log)
        return dists

    def fit(self, design: Design) -> "OptunaImportance":
        import optuna

        rng = np.random.default_rng(self.random_state)
        design = design.subset(self._finite(design))
        design = design.subset(design.sample_configurations(self.max_trials, rng))
        raw = design.raw[design.knobs]
        dists = self._distributions(raw)
        if not dists:
            raise InputError(f"{self.name}: no knob varies")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one 'study created' line per fit otherwise
        study = optuna.create_study(direction="maximize")  # the design's target: higher is better
        columns = {k: (labels(raw[k]) if isinstance(d, optuna.distributions.CategoricalDistribution)
                       else raw[k].astype(float)).to_list() for k, d in dists.items()}
        study.add_trials([optuna.trial.create_trial(value=float(value), distributions=dists,
                                                    params={k: columns[k][i] for k in dists})
                          for i, value in enumerate(design.y)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns that these evaluators are experimental
            imp = optuna.importance.get_param_importances(study, evaluator=self._evaluator(), normalize=True)
        self.n_trials_ = len(design.y)
        self.factor_importances_ = self._result(pd.Series(imp, dtype=float))
        return self


@register_method("fanova")
class FanovaImportance(OptunaImportance):
    """Optuna's fANOVA (random-forest variance decomposition)."""

    def __init__(self, n_trees: int = 16, max_depth: int = 8, max_trials: int = 500, max_levels: int = 16,
                 random_state: int = 0):
        super().__init__(max_trials=max_trials, max_levels=max_levels, random_state=random_state)
        self.n_trees = n_trees
        self.max_depth = max_depth

    def _evaluator(self):
        import optuna

        return optuna.importance.FanovaImportanceEvaluator(n_trees=self.n_trees, max_depth=self.max_depth,
                                                           seed=self.random_state)


@register_method("ped_anova")
class PedAnovaImportance(OptunaImportance):
    """Optuna's PED-ANOVA (how the top trials' knob distribution differs from all trials')."""

    def _evaluator(self):
        import optuna

        return optuna.importance.PedAnovaImportanceEvaluator()
