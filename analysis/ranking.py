"""The ranking claim (F1): "these factors matter most, in this order", judged on a surrogate.

The surrogate is the ``forest`` importance method (:class:`~analysis.importance.ForestImportance`):
a random forest whose held-out fit is measured on folds grouped by configuration, and
whose per-knob importance is the held-out drop in R^2 when a knob's values are moved
between whole configurations. Its configuration-bootstrap draws give rank probabilities.

A listed factor is a knob (``target_share``) or a knob's level (``apply_softmax_to=after``):
ranks are knob-level (a knob's columns make one factor), and a listed level is checked
to be the knob's best level on the surrogate's partial dependence. A knob with importance
<= 0 in a draw is unranked there (never ranked by column order).

Verdict, at the evidence's ``alpha``:

* inconclusive when the surrogate does not predict unseen configurations (one-sided p of
  its held-out gain >= alpha): its ranking is then not evidence either way;
* supported when the first factor ranks first and the listed set fills the top k in at
  least ``1 - alpha`` of the draws, and the lower end of the Kendall tau interval between
  the claimed order and the draws' order is above 0;
* contradicted when a knob that matters (Holm-adjusted p < alpha) outranks a factor that
  the claim puts above it (an unlisted knob above a listed one, or a later listed factor
  above an earlier one) in at least ``1 - alpha`` of the draws;
* inconclusive otherwise. A knob that matters but is not listed and ranks within the top k
  (the learning rate, typically) is named in the reason either way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from routed_study.analysis.importance import MATTERS, Design, ForestImportance
from routed_study.trainables.errors import InputError

#: Where the fitted importance methods live in ``Evidence.extras`` (the report fills it).
EXTRAS_KEY = "importance"


def surrogate(evidence) -> ForestImportance:
    """The fitted ``forest`` method of the evidence (fitted here and cached if the report did not)."""
    fitted = evidence.extras.setdefault(EXTRAS_KEY, {})
    if "design" not in evidence.extras:
        evidence.extras["design"] = design_of(evidence)
    if "forest" not in fitted:
        fitted["forest"] = ForestImportance(alpha=evidence.alpha, random_state=evidence.random_state).fit(
            evidence.extras["design"])
    return fitted["forest"]


def design_of(evidence) -> Design:
    """The importance methods' input for an Evidence (every knob column, the seed aside)."""
    knobs = [k for k in evidence.table.knobs if k != "seed"]
    return Design.completed(evidence.frame, knobs, evidence.target, evidence.clusters)


def rank_draws(draws: pd.DataFrame) -> pd.DataFrame:
    """Rank of every knob in every draw (1 = largest); importance <= 0 is unranked (NaN)."""
    return draws.where(draws > 0).rank(axis=1, ascending=False, method="min")


def _best_level(forest: ForestImportance, design: Design, knob: str) -> str | None:
    """The level of ``knob`` with the highest mean surrogate prediction (partial dependence over
    the rows where the knob applies), or None for a numeric knob."""
    columns = [c for c in design.X.columns if design.groups[c] == knob]
    if not all(c.startswith(f"{knob}=") for c in columns):
        return None
    rows = design.X[columns].notna().all(axis=1).to_numpy()
    X = design.X.to_numpy(float)[rows][:500]
    index = [list(design.X.columns).index(c) for c in columns]
    levels = {c.split("=", 1)[1]: np.eye(len(columns))[i] for i, c in enumerate(columns)}
    if len(columns) == 1:
        levels["(other)"] = np.zeros(1)
    means = {}
    for level, code in levels.items():
        moved = X.copy()
        moved[:, index] = code
        means[level] = np.mean([m.predict(moved).mean() for m in forest.estimators_])
    return max(means, key=means.get)


def judge_ranking(factors: tuple[str, ...], evidence) -> dict:
    """Verdict of "``factors`` rank first, in this order" (keys among findings.VERDICT_COLUMNS)."""
    knobs = [f.split("=", 1)[0] for f in factors]
    missing = [f for f, k in zip(factors, knobs) if k not in evidence.knobs]
    if missing:
        return {"verdict": "inconclusive", "reason": f"never varied in this study: {', '.join(missing)}"}
    try:
        forest = surrogate(evidence)
    except InputError as exc:
        return {"verdict": "inconclusive", "reason": f"the surrogate could not be fitted: {exc}"}
    flat = [f for f, k in zip(factors, knobs) if k not in forest.draws_.columns]
    if flat:
        return {"verdict": "inconclusive",
                "reason": f"one value only where it applies (constant after not-applicable marks): {', '.join(flat)}"}
    alpha = evidence.alpha
    n_draws = len(forest.draws_)
    floor = 1 / (n_draws + 1)
    result = {"n_configs": forest.n_configs_, "n_seeds": round(forest.n_trials_ / forest.n_configs_, 2),
              "view": "completed", "p_value": forest.cv_p_}
    fit = f"grouped-CV R^2 {forest.cv_score_:.2f} (p {forest.cv_p_:.2g})"
    if forest.cv_p_ >= alpha:
        return {**result, "verdict": "inconclusive",
                "reason": f"the surrogate does not predict unseen configurations ({fit}): its ranking is "
                          f"not evidence either way"}
    ranks = rank_draws(forest.draws_)
    k = len(knobs)
    listed = ranks[knobs]
    p_first = float((listed[knobs[0]] == 1).mean())
    p_top = float((listed <= k).all(axis=1).mean())
    # Kendall tau per draw between the claimed order and the draw's (unranked: tied last).
    claimed = np.arange(k)
    filled = listed.fillna(len(ranks.columns) + 1).to_numpy()
    taus = np.array([kendalltau(claimed, row).statistic if np.ptp(row) > 0 else 0.0 for row in filled])
    tau_low, tau_high = np.quantile(taus, [alpha / 2, 1 - alpha / 2])
    verdicts = forest.factor_importances_["verdict"]
    p_adjusted = forest.factor_importances_["p_value"]
    # Pairs the claim orders: each listed factor above every later one and above every unlisted knob.
    others = [c for c in ranks.columns if c not in knobs]
    violations = []
    for i, above in enumerate(knobs):
        for below in [*knobs[i + 1:], *others]:
            if verdicts[below] != MATTERS:
                continue
            beats = float((ranks[below] < ranks[above].fillna(np.inf)).mean())
            if beats >= 1 - alpha:
                violations.append((below, above, beats))
    strong = [(o, float((ranks[o] <= k).mean())) for o in others
              if verdicts[o] == MATTERS and ranks[o].median() <= k]
    detail = "; ".join(f"{f}: median rank {listed[kn].median():g}" if listed[kn].notna().any()
                       else f"{f}: unranked" for f, kn in zip(factors, knobs))
    summary = (f"{fit}; P({factors[0]} first) {p_first:.2f}, P(listed fill top {k}) {p_top:.2f}, "
               f"Kendall tau with the claimed order [{tau_low:.2f}, {tau_high:.2f}]; {detail}")
    if strong:
        summary += "; unlisted knobs that matter in the top " + str(k) + ": " + ", ".join(
            f"{o} (P in top {k} {p:.2f})" for o, p in strong)
    levels = {f: _best_level(forest, evidence.extras["design"], kn) for f, kn in zip(factors, knobs) if "=" in f}
    wrong_level = [f"{f} (best level: {best})" for f, best in levels.items()
                   if best is not None and best != f.split("=", 1)[1]]
    if wrong_level:
        summary += "; a listed level is not its knob's best: " + ", ".join(wrong_level)
    result.update(effect=p_first, ci_low=float(tau_low), ci_high=float(tau_high))
    if violations:
        below, above, beats = max(violations, key=lambda v: v[2])
        p = max(forest.cv_p_, 1 - beats, float(p_adjusted[below]), floor)
        return {**result, "verdict": "contradicted", "p_value": p,
                "reason": f"{below} outranks {above} in {beats:.0%} of draws; {summary}"}
    if p_first >= 1 - alpha and p_top >= 1 - alpha and tau_low > 0 and not wrong_level:
        p = max(forest.cv_p_, 1 - p_first, 1 - p_top, float((taus <= 0).mean()), floor)
        return {**result, "verdict": "supported", "p_value": p, "reason": summary}
    return {**result, "verdict": "inconclusive", "p_value": 1.0, "reason": summary}
