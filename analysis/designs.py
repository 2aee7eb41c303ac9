"""The analysis of a designed study (``study/designs.py``): each design read as what it is.

- :func:`design_of` says which design a trial table came from (its design keys) and why
  the verdicts drawn from it are valid, for the report.
- :func:`paired_claims`: a ``pairs`` study's claims, each from its matched pairs. The
  difference of a pair (side a minus side b, same base, same seed) holds neither the other
  knobs' effects nor the base's own random effect; per base the seeds are averaged, the
  claim's effect is the mean over bases, its p-value a paired t-test over bases and its
  interval a nested bootstrap (bases resampled, then seeds within each), widened to the
  t-interval's small-sample width. Rows carry the claims table's verdict columns.
- :func:`elementary_effects`: a ``screening`` study's Morris statistics per knob (mean,
  mean of absolute values, spread), from SALib, with bootstrap intervals over trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from routed_study.trainables.errors import InputError
from routed_study.trainables.results import (DESIGN_BASE_KEY, DESIGN_DELTA_KEY, DESIGN_FLIP_KEY, DESIGN_KEY,
                                             DESIGN_POINT_KEY, DESIGN_SIDE_KEY)

#: Columns of a claim's row (the claims table's verdict columns).
CLAIM_COLUMNS = ["id", "statement", "kind", "verdict", "effect", "ci_low", "ci_high", "n_configs", "n_seeds",
                 "p_value", "reason"]
EFFECT_COLUMNS = ["knob", "mu", "mu_low", "mu_high", "mu_star", "mu_star_low", "mu_star_high", "sigma",
                  "sigma_low", "sigma_high", "n_trajectories"]

#: Why each kind of study supports its verdicts (printed in the report).
WHY_VALID = {
    "pairs": "matched pairs: every claim's a and b sides ran on the same base configurations with the same "
             "seeds, so a pair's difference holds neither the other knobs' effects nor the base's own random "
             "effect; effects are means over bases, p-values paired t-tests over bases, intervals a bootstrap "
             "over bases with seeds resampled within each",
    "screening": "Morris screening: trajectories that move one knob at a time from random starting points; a "
                 "knob's elementary effects are differences of two trials that differ in that knob only, "
                 "averaged over the space (mu: signed, mu*: absolute, sigma: spread from interactions or "
                 "non-linearity), intervals a bootstrap over trajectories",
    "qmc": "a scrambled Sobol sample: every knob's values balanced and nearly uncorrelated with the other "
           "knobs', so comparing a knob's sides is not confounded by what else varied",
    "sampled": "trials proposed by a sampler (tpe, random or grid): a comparison of a knob's sides also holds "
               "whatever else differs between the groups (TPE in particular concentrates on good regions)",
}


@dataclass(frozen=True)
class StudyDesign:
    name: str           # pairs, screening, qmc, or sampled (no design keys)
    why: str
    n_points: int       # distinct configurations
    n_bases: int        # pairs: bases; screening: trajectories; else 0


def design_of(frame: pd.DataFrame) -> StudyDesign:
    """Which design a trial table came from, from its design keys."""
    names = frame[DESIGN_KEY].dropna().unique() if DESIGN_KEY in frame else []
    if len(names) > 1:
        raise InputError(f"the trial table mixes designs ({', '.join(map(str, names))}); analyse each study apart")
    name = str(names[0]) if len(names) else "sampled"
    points = frame[DESIGN_POINT_KEY].nunique() if DESIGN_POINT_KEY in frame else len(frame)
    bases = frame[DESIGN_BASE_KEY].nunique() if DESIGN_BASE_KEY in frame else 0
    return StudyDesign(name, WHY_VALID.get(name, WHY_VALID["sampled"]), int(points), int(bases))


def _usable(frame: pd.DataFrame, target: str, design: str) -> pd.DataFrame:
    found = design_of(frame).name
    if found != design:
        raise InputError(f"the trial table is a {found} study, not a {design} study")
    rows = frame[np.isfinite(pd.to_numeric(frame[target], errors="coerce").to_numpy(float))]
    return rows.assign(**{target: pd.to_numeric(rows[target])})


# ------------------------------------------------------------------ pairs
def pair_differences(frame: pd.DataFrame, claim_id: str, target: str) -> pd.DataFrame:
    """One row per (base, seed) of a claim: the paired difference a - b."""
    flips = frame[frame[DESIGN_FLIP_KEY].astype(str) == claim_id]
    bases = frame[frame[DESIGN_SIDE_KEY] == "base"]
    merged = flips.merge(bases, on=[DESIGN_BASE_KEY, "seed"], suffixes=("_flip", "_base"))
    sign = np.where(merged[f"{DESIGN_SIDE_KEY}_flip"] == "a", 1.0, -1.0)
    diff = sign * (merged[f"{target}_flip"].to_numpy(float) - merged[f"{target}_base"].to_numpy(float))
    return pd.DataFrame({"base": merged[DESIGN_BASE_KEY].to_numpy(), "seed": merged["seed"].to_numpy(),
                         "diff": diff})


def nested_bootstrap(diffs: pd.DataFrame, n_boot: int, alpha: float, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean over bases: bases resampled, then seeds within each base."""
    groups = [g.to_numpy(float) for _, g in diffs.groupby("base")["diff"]]
    width = max(len(g) for g in groups)
    padded = np.full((len(groups), width), np.nan)
    for i, g in enumerate(groups):
        padded[i, :len(g)] = g
    counts = np.array([len(g) for g in groups])
    chosen = rng.integers(0, len(groups), (n_boot, len(groups)))
    seeds = (rng.random((n_boot, len(groups), width)) * counts[chosen][..., None]).astype(int)
    values = padded[chosen[..., None], seeds]
    values = np.where(np.arange(width) < counts[chosen][..., None], values, np.nan)
    means = np.nanmean(np.nanmean(values, axis=2), axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def verdict(expect: str, margin: float, low: float, high: float, p: float, alpha: float) -> tuple[str, str]:
    """The claims table's decision rule, on an interval of the effect (a - b) and a two-sided p."""
    if expect == "equal":
        if -margin <= low and high <= margin:
            return "supported", f"CI within +-{margin:g}"
        if (low > margin or high < -margin) and p < alpha:
            return "contradicted", f"CI outside +-{margin:g}, p={p:.3g}"
        return "inconclusive", f"CI [{low:.3g}, {high:.3g}] overlaps +-{margin:g}"
    sign = 1 if expect == "greater" else -1
    lo, hi = sorted((sign * low, sign * high))
    if lo > 0 and p < alpha:
        return "supported", f"a {expect} than b, p={p:.3g}"
    if hi < 0 and p < alpha:
        return "contradicted", f"the opposite holds, p={p:.3g}"
    if -margin <= low and high <= margin:
        return "contradicted", f"no difference: CI within +-{margin:g}"
    return "inconclusive", f"CI [{low:.3g}, {high:.3g}] includes 0"


def paired_claim(finding: Any, frame: pd.DataFrame, target: str, *, alpha: float = 0.05, n_boot: int = 2000,
                 min_bases: int = 5, rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One claim's row from a pairs study's trials (usable rows: finite target)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    row = {"id": finding.id, "statement": finding.statement, "kind": finding.kind}
    diffs = pair_differences(frame, finding.id, target)
    per_base = diffs.groupby("base")["diff"].mean()
    row.update(n_configs=int(len(per_base)), n_seeds=int(diffs["seed"].nunique()))
    if len(per_base) < min_bases:
        return {**row, "verdict": "inconclusive",
                "reason": f"too few complete pairs: {len(per_base)} bases (need {min_bases})"}
    effect, b = float(per_base.mean()), len(per_base)
    sd = float(per_base.std(ddof=1))
    p = float(stats.ttest_1samp(per_base, 0.0).pvalue) if sd > 0 else (0.0 if effect else 1.0)
    low, high = nested_bootstrap(diffs, n_boot, alpha, rng)
    # The percentile bootstrap is narrower than the t interval at few bases (plug-in variance,
    # normal quantiles): widen it about the effect by that ratio.
    widen = stats.t.ppf(1 - alpha / 2, b - 1) / stats.norm.ppf(1 - alpha / 2) * np.sqrt(b / (b - 1))
    low, high = effect - widen * (effect - low), effect + widen * (high - effect)
    decided, reason = verdict(finding.expect, finding.margin, low, high, p, alpha)
    return {**row, "verdict": decided, "effect": effect, "ci_low": low, "ci_high": high, "p_value": p,
            "reason": f"{reason} ({b} bases, paired)"}


def paired_claims(frame: pd.DataFrame, findings: list, target: str = "score", *, alpha: float = 0.05,
                  n_boot: int = 2000, min_bases: int = 5, random_state: int = 0) -> pd.DataFrame:
    """One row per compared claim of ``findings`` that the pairs study designed (others are left out)."""
    usable = _usable(frame, target, "pairs")
    designed = set(usable[DESIGN_FLIP_KEY].dropna().astype(str)) - {""}
    rng = np.random.default_rng(random_state)
    rows = [paired_claim(f, usable, target, alpha=alpha, n_boot=n_boot, min_bases=min_bases, rng=rng)
            for f in findings if f.kind == "compare" and f.id in designed]
    return pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS)


# ------------------------------------------------------------------ screening
def _trajectories(frame: pd.DataFrame, target: str) -> tuple[list[str], np.ndarray, np.ndarray, int, int]:
    """(knobs, X, Y, trajectories, levels) in SALib's layout: the points of every complete trajectory in
    order, Y averaged over repeats, X rebuilt from the steps (elementary effects read only X's steps)."""
    points = frame.groupby(DESIGN_POINT_KEY).agg(base=(DESIGN_BASE_KEY, "first"), knob=(DESIGN_FLIP_KEY, "first"),
                                                 delta=(DESIGN_DELTA_KEY, "first"), y=(target, "mean"))
    points["knob"] = points["knob"].fillna("").astype(str)
    knobs = list(dict.fromkeys(k for k in points["knob"] if k))
    size = len(knobs) + 1
    complete = [g.sort_index() for _, g in points.groupby("base") if len(g) == size]
    if len(complete) < 2:
        raise InputError(f"screening: {len(complete)} complete trajectories (need 2; each has {size} points)")
    xs, ys = [], []
    for g in complete:
        x = np.zeros(len(knobs))
        for knob, delta, y in zip(g["knob"], g["delta"], g["y"]):
            if knob:
                x = x.copy()
                x[knobs.index(knob)] += float(delta)
            xs.append(x)
            ys.append(y)
    step = float(np.abs(points.loc[points["knob"] != "", "delta"]).iloc[0])
    levels = int(round(2 * step / (2 * step - 1)))  # SALib's step is levels / (2 (levels - 1))
    return knobs, np.array(xs), np.array(ys), len(complete), levels


def elementary_effects(frame: pd.DataFrame, target: str = "score", *, conf_level: float = 0.95,
                       n_boot: int = 1000, random_state: int = 0) -> pd.DataFrame:
    """Morris statistics per knob of a screening study: SALib's mu, mu* and sigma, with bootstrap
    intervals over trajectories (mu* from SALib's own bootstrap, mu and sigma from the same
    resampling of trajectories done here)."""
    from SALib.analyze import morris

    usable = _usable(frame, target, "screening")
    knobs, x, y, r, levels = _trajectories(usable, target)
    problem = {"num_vars": len(knobs), "names": knobs, "bounds": [[0.0, 1.0]] * len(knobs)}
    result = morris.analyze(problem, x, y, num_resamples=n_boot, conf_level=conf_level, num_levels=levels,
                            seed=random_state)
    # Each trajectory's effects (r x knobs), the same numbers SALib averages.
    size = len(knobs) + 1
    effects = np.full((r, len(knobs)), np.nan)
    for t in range(r):
        for i in range(1, size):
            step = x[t * size + i] - x[t * size + i - 1]
            k = int(np.argmax(np.abs(step)))
            effects[t, k] = (y[t * size + i] - y[t * size + i - 1]) / step[k]
    rng = np.random.default_rng(random_state)
    picks = effects[rng.integers(0, r, (n_boot, r))]
    q = [(1 - conf_level) / 2, 1 - (1 - conf_level) / 2]
    mu_band = np.quantile(picks.mean(axis=1), q, axis=0)
    sigma_band = np.quantile(picks.std(axis=1, ddof=1), q, axis=0)
    rows = []
    for k, knob in enumerate(knobs):
        conf = float(result["mu_star_conf"][k])
        rows.append({"knob": knob, "mu": float(result["mu"][k]), "mu_low": mu_band[0, k], "mu_high": mu_band[1, k],
                     "mu_star": float(result["mu_star"][k]), "mu_star_low": float(result["mu_star"][k]) - conf,
                     "mu_star_high": float(result["mu_star"][k]) + conf, "sigma": float(result["sigma"][k]),
                     "sigma_low": sigma_band[0, k], "sigma_high": sigma_band[1, k], "n_trajectories": r})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS).sort_values("mu_star", ascending=False, ignore_index=True)
