"""Claims about the knobs, checked on a study's trials.

A findings file (YAML, see ``analysis/findings.yaml``) lists entries::

    - id: F8b
      statement: With cat, apply_softmax_to=after beats before.
      kind: compare                      # compare (default) | ranking | untestable
      within: {compose_method: cat}      # optional: rows the comparison is made in
      knob: apply_softmax_to
      a: after                           # a side: a value, a list of values,
      b: before                          #   {min: x, max: y} or {quantile: [lo, hi]}
      expect: greater                    # greater | less | equal
      margin: 1.0                        # score points that count as "no difference"

``compare`` reports the difference of mean target (a - b) with a bootstrap
confidence interval, the trials on each side and a Mann-Whitney U test;
``ranking`` checks that the listed ``factors`` are the top features of the tree
(feature level: ``apply_softmax_to=after`` or a knob name); ``untestable``
carries a ``reason`` (the claim needs data a trial table does not hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.stats import mannwhitneyu, norm

from routed_study.analysis.encoding import NA, mark_not_applicable, value_label
from routed_study.trainables.errors import InputError, did_you_mean, format_choices

DEFAULT_FILE = Path(__file__).with_name("findings.yaml")
KINDS = ("compare", "ranking", "untestable")
EXPECT = ("greater", "less", "equal")
KEYS = {"compare": {"id", "statement", "kind", "within", "knob", "a", "b", "expect", "margin"},
        "ranking": {"id", "statement", "kind", "factors"},
        "untestable": {"id", "statement", "kind", "reason"}}


@dataclass(frozen=True)
class Finding:
    id: str
    statement: str
    kind: str = "compare"
    knob: str | None = None
    a: Any = None
    b: Any = None
    within: dict = field(default_factory=dict)
    expect: str = "greater"
    margin: float = 1.0
    factors: tuple[str, ...] = ()
    reason: str = ""


def _check_side(value: Any, where: str) -> None:
    if isinstance(value, dict):
        if set(value) == {"quantile"}:
            q = value["quantile"]
            if not (isinstance(q, list) and len(q) == 2 and all(isinstance(x, (int, float)) for x in q)
                    and 0 <= q[0] < q[1] <= 1):
                raise InputError(f"{where}: 'quantile' must be [lo, hi] with 0 <= lo < hi <= 1, got {q!r}")
        elif not value or not set(value) <= {"min", "max"}:
            raise InputError(f"{where}: a range takes keys 'min'/'max' or 'quantile', got {sorted(value)}")
        elif not all(isinstance(v, (int, float)) for v in value.values()):
            raise InputError(f"{where}: 'min'/'max' must be numbers, got {value!r}")


def load_findings(path: str | Path | None = None) -> list[Finding]:
    """Read and validate a findings file; InputError names the entry and the key."""
    path = Path(path) if path is not None else DEFAULT_FILE
    if not path.is_file():
        raise InputError(f"{path}: findings file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    entries = data.get("findings") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: expected a top-level key 'findings' holding a list of entries")
    findings, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: findings[{i}]"
        if not isinstance(entry, dict) or "id" not in entry:
            raise InputError(f"{where}: each entry is a mapping with at least 'id' and 'statement'")
        where = f"{path}: finding '{entry['id']}'"
        if entry["id"] in seen:
            raise InputError(f"{where}: duplicate id")
        seen.add(entry["id"])
        kind = entry.get("kind", "compare")
        if kind not in KINDS:
            raise InputError(f"{where}: key 'kind' got {kind!r}; allowed values: {format_choices(KINDS)}")
        for key in entry:
            if key not in KEYS[kind]:
                raise InputError(f"{where}: unknown key '{key}'{did_you_mean(key, KEYS[kind])} for kind "
                                 f"{kind!r}; allowed keys: {', '.join(sorted(KEYS[kind]))}")
        required = {"compare": ("statement", "knob", "a", "b"), "ranking": ("statement", "factors"),
                    "untestable": ("statement", "reason")}[kind]
        for key in required:
            if key not in entry:
                raise InputError(f"{where}: missing key '{key}'")
        if kind == "compare":
            if entry.get("expect", "greater") not in EXPECT:
                raise InputError(f"{where}: key 'expect' got {entry['expect']!r}; allowed values: "
                                 f"{format_choices(EXPECT)}")
            if not isinstance(entry.get("within", {}), dict):
                raise InputError(f"{where}: key 'within' must map knob names to sides")
            for side in ("a", "b"):
                _check_side(entry[side], f"{where}: key '{side}'")
            for knob, side in entry.get("within", {}).items():
                _check_side(side, f"{where}: key 'within.{knob}'")
            margin = entry.get("margin", 1.0)
            if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
                raise InputError(f"{where}: key 'margin' must be a non-negative number, got {margin!r}")
        if kind == "ranking" and not (isinstance(entry["factors"], list) and entry["factors"]):
            raise InputError(f"{where}: key 'factors' must be a non-empty list of feature or knob names")
        values = dict(entry)
        values["factors"] = tuple(str(f) for f in entry.get("factors", ()))
        values["within"] = dict(entry.get("within", {}))
        values["id"], values["statement"] = str(entry["id"]), str(entry["statement"])
        findings.append(Finding(**values))
    return findings


def side_mask(raw: pd.Series, side: Any) -> pd.Series:
    """Rows of a knob column (with 'n/a' marks) that fall on one side of a comparison."""
    numeric = pd.to_numeric(raw.where(raw != NA), errors="coerce")
    if isinstance(side, dict):
        if "quantile" in side:
            lo, hi = numeric.quantile(side["quantile"][0]), numeric.quantile(side["quantile"][1])
            upper = numeric <= hi if side["quantile"][1] >= 1 else numeric < hi
            return (numeric >= lo) & upper
        return (numeric >= side.get("min", -np.inf)) & (numeric <= side.get("max", np.inf))
    options = side if isinstance(side, list) else [side]
    return raw.map(value_label).isin([value_label(v) for v in options])


def mean_diff_interval(a: np.ndarray, b: np.ndarray, n_boot: int, alpha: float, rng,
                       normal_above: int = 500) -> tuple[float, float]:
    """CI of mean(a) - mean(b): percentile bootstrap, or the normal interval once both sides are large
    (the bootstrap costs n_boot x n draws and agrees with it there)."""
    if min(len(a), len(b)) > normal_above:
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        z = norm.ppf(1 - alpha / 2)
        return float(a.mean() - b.mean() - z * se), float(a.mean() - b.mean() + z * se)
    diffs = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
             - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    return float(np.quantile(diffs, alpha / 2)), float(np.quantile(diffs, 1 - alpha / 2))


def evaluate_compare(f: Finding, frame: pd.DataFrame, target: str, knobs: list[str], *, min_trials: int,
                     alpha: float, n_boot: int, rng) -> dict:
    result = {"n_a": 0, "n_b": 0}
    for knob in [f.knob, *f.within]:
        if knob not in knobs:
            return {**result, "verdict": "inconclusive",
                    "reason": f"knob '{knob}' was never varied in this study"}
    usable = frame[np.isfinite(frame[target].to_numpy(float))]
    raw = mark_not_applicable(usable, knobs)
    rows = np.ones(len(usable), bool)
    for knob, side in f.within.items():
        rows &= side_mask(raw[knob], side).to_numpy()
    a = usable[target].to_numpy(float)[rows & side_mask(raw[f.knob], f.a).to_numpy()]
    b = usable[target].to_numpy(float)[rows & side_mask(raw[f.knob], f.b).to_numpy()]
    result.update(n_a=len(a), n_b=len(b))
    if min(len(a), len(b)) < min_trials:
        return {**result, "verdict": "inconclusive",
                "reason": f"too few trials: {len(a)} on side a, {len(b)} on side b (need {min_trials} each)"}
    effect = float(a.mean() - b.mean())
    low, high = mean_diff_interval(a, b, n_boot, alpha, rng)
    two_sided = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    result.update(effect=effect, ci_low=low, ci_high=high, p_value=two_sided,
                  rank_biserial=float(2 * mannwhitneyu(a, b).statistic / (len(a) * len(b)) - 1))
    m = f.margin
    if f.expect == "equal":
        if -m <= low and high <= m:
            return {**result, "verdict": "supported", "reason": f"CI within +-{m:g}"}
        if (low > m or high < -m) and two_sided < alpha:
            return {**result, "verdict": "contradicted", "reason": f"CI outside +-{m:g}, p={two_sided:.3g}"}
        return {**result, "verdict": "inconclusive", "reason": f"CI [{low:.3g}, {high:.3g}] overlaps +-{m:g}"}
    sign = 1 if f.expect == "greater" else -1
    lo, hi = sorted((sign * low, sign * high))
    if lo > 0 and two_sided < alpha:
        return {**result, "verdict": "supported", "reason": f"a {f.expect} than b, p={two_sided:.3g}"}
    if hi < 0 and two_sided < alpha:
        return {**result, "verdict": "contradicted", "reason": f"the opposite holds, p={two_sided:.3g}"}
    if -m <= low and high <= m:
        return {**result, "verdict": "contradicted", "reason": f"no difference: CI within +-{m:g}"}
    return {**result, "verdict": "inconclusive", "reason": f"CI [{low:.3g}, {high:.3g}] includes 0"}


def evaluate_ranking(f: Finding, feature_ranking: pd.Series | None, groups: dict[str, str],
                     tree_cv_score: float | None = None) -> dict:
    """``feature_ranking``: feature importances (descending) of the tree regressor;
    ``tree_cv_score``: its R^2 on held-out folds."""
    if feature_ranking is None:
        return {"verdict": "inconclusive", "reason": "the tree regressor could not be fitted"}
    if tree_cv_score is not None and tree_cv_score <= 0:
        # A tree that predicts held-out trials no better than their mean ranks noise.
        return {"verdict": "inconclusive",
                "reason": f"the tree does not predict held-out trials (cross-validated R^2 {tree_cv_score:.2f} "
                          f"<= 0): its ranking is not evidence either way; run more trials"}
    # A listed knob name stands for its best feature; a listed feature for itself.
    names = list(feature_ranking.index)
    level = {}
    for rank, name in enumerate(names, 1):
        level.setdefault(name, rank)
        level.setdefault(groups[name], rank)
    missing = [x for x in f.factors if x not in level]
    if missing:
        return {"verdict": "inconclusive", "reason": f"never varied in this study: {', '.join(missing)}"}
    ranks = [level[x] for x in f.factors]
    k = len(f.factors)
    overlap = sum(r <= k for r in ranks) / k
    detail = ", ".join(f"{x}: #{r}" for x, r in zip(f.factors, ranks))
    if ranks[0] == 1 and overlap == 1:
        verdict = "supported"
    elif overlap < 0.5 or ranks[0] > k:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "effect": overlap, "reason": f"tree ranks {detail}"}


def evaluate_findings(findings: list[Finding], frame: pd.DataFrame, target: str, knobs: list[str],
                      feature_ranking: pd.Series | None = None, groups: dict[str, str] | None = None,
                      tree_cv_score: float | None = None, min_trials: int = 5, alpha: float = 0.05,
                      n_boot: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """One row per finding: verdict, effect (a - b), CI, n per side, Mann-Whitney p, reason."""
    rng = np.random.default_rng(random_state)
    rows = []
    for f in findings:
        if f.kind == "compare":
            out = evaluate_compare(f, frame, target, knobs, min_trials=min_trials, alpha=alpha,
                                   n_boot=n_boot, rng=rng)
        elif f.kind == "ranking":
            out = evaluate_ranking(f, feature_ranking, groups or {}, tree_cv_score)
        else:
            out = {"verdict": "inconclusive", "reason": f"not testable from a trial table: {f.reason}"}
        rows.append({"id": f.id, "statement": f.statement, **out})
    columns = ["id", "statement", "verdict", "effect", "ci_low", "ci_high", "n_a", "n_b", "p_value",
               "rank_biserial", "reason"]
    return pd.DataFrame(rows).reindex(columns=columns)
