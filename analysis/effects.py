"""Adjusted effects of the compare claims, budget-aware, with repeats as clusters.

**Unit and model.** The unit is the configuration: the seeds of one configuration are
averaged into one row, so repeats never count as independent trials. Each claim gets one
OLS (statsmodels) of the configuration mean on the claim's side coding (side a, side b,
each inside and outside the claim's ``within`` rows) plus main effects of every other knob
that varies (a categorical or two-level knob: one column per level but a reference; a
numeric knob with more than :data:`FEW_LEVELS` values: its standardised (log) value and
its square), with HC2 standard errors (heteroskedasticity-robust; a configuration's mean
over fewer seeds is noisier). The claim's effect is side a minus side b inside ``within``,
the other knobs held fixed. A knob marked n/a in a row (``encoding.mark_not_applicable``)
holds 0 there plus an n/a indicator, which is left out where it copies another column
(every column that is a linear combination of earlier ones is dropped), so ``target_share``
never inherits ``add_target``'s effect.

**Early stops (budget).** Trials that a scheduler stopped have no final score. Each one's
score at the rung that every compared trial reached is carried to the final budget by the
regression of the final score on that rung's score (and the knobs' main effects, and the
rung score times the numeric knobs: learning speed depends on them) among the trials that
completed. ASHA's decision depends only on observed rung scores, so this is valid when that
regression holds (missing at random). The uncertainty of the projection enters by multiple
imputation (:data:`IMPUTATIONS` draws from the regression's cluster-robust sampling
distribution plus its residual spread, combined by Rubin's rules). The second view uses
completed trials only; where it decides the opposite, the verdict is inconclusive.

**Failures.** Errored (diverged) trials are failures: per claim their rates on side a and
side b are compared (Fisher exact, configurations with any failed seed), and where a claim
is about "better" they enter the score at the worst observed score (worst rank); claims of
"no difference" leave them out.

**Decisions.** A directional claim is supported when a - b differs from 0 in its direction
(t test), contradicted when it differs the other way, or when two one-sided tests (TOST)
put it inside +-margin; an equivalence claim is supported by TOST and contradicted when
|a - b| exceeds the margin. The margin defaults to :data:`MARGIN_SEED_SD` seed-to-seed
standard deviations, measured in the study (:class:`SeedNoise`). The p-value of the decision
joins the report's Benjamini-Hochberg correction (analysis.findings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydantic
from scipy import stats

from routed_study.analysis.encoding import NA, labels, mark_not_applicable, value_label
from routed_study.analysis.findings import Entry, Evidence, FindingKind, register_kind
from routed_study.analysis.loading import history_epochs
from routed_study.trainables.routed_prompt.config import KNOBS

#: A numeric knob with at most this many distinct values is coded by level.
FEW_LEVELS = 5
#: Multiple-imputation draws of the projected final score of early-stopped trials.
IMPUTATIONS = 10
#: Default equivalence margin, in seed-to-seed standard deviations.
MARGIN_SEED_SD = 0.5
#: Power the trials_needed column plans for.
POWER = 0.8
#: One-sided p below which the progress after the common budget counts as opposing the
#: budget's effect (the knob changes learning speed): liberal, since missing it costs validity.
SPEED_CHECK = 0.3
#: Fewest configurations per side before a claim is judged.
MIN_CONFIGS = 4


def side_mask(raw: pd.Series, side: Any, pool: pd.Series | None = None) -> pd.Series:
    """Rows of a knob column (with 'n/a' marks) that fall on one side of a comparison.

    Quantiles are taken over ``pool`` (default: ``raw`` itself), the rows compared."""
    numeric = pd.to_numeric(raw.where(raw != NA), errors="coerce")
    if isinstance(side, dict):
        if "quantile" in side:
            ref = numeric if pool is None else pd.to_numeric(pool.where(pool != NA), errors="coerce")
            lo, hi = ref.quantile(side["quantile"][0]), ref.quantile(side["quantile"][1])
            upper = numeric <= hi if side["quantile"][1] >= 1 else numeric < hi
            return (numeric >= lo) & upper
        return (numeric >= side.get("min", -np.inf)) & (numeric <= side.get("max", np.inf))
    options = side if isinstance(side, list) else [side]
    return labels(raw).isin([value_label(v) for v in options])


def independent_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns in order, each dropped when it is (numerically) a combination of the kept ones
    and the intercept (so the claim's columns, which come first, are kept where they can be)."""
    kept: dict[str, np.ndarray] = {}
    n = len(next(iter(columns.values()))) if columns else 0
    basis = np.ones((n, 1)) / math.sqrt(max(n, 1))
    for name, col in columns.items():
        col = np.asarray(col, float)
        resid = col - basis @ (basis.T @ col)
        norm = np.linalg.norm(resid)
        if norm > 1e-8 * max(np.linalg.norm(col), 1.0):
            kept[name] = col
            basis = np.column_stack([basis, resid / norm])
    return kept


def knob_columns(raw: pd.DataFrame, knob: str) -> dict[str, np.ndarray]:
    """Main-effect columns of one knob over rows of ``raw`` (mark_not_applicable output)."""
    values = raw[knob]
    present = values != NA
    text = labels(values)
    spec = KNOBS.get(knob)
    numeric = pd.to_numeric(values.where(present), errors="coerce")
    is_number = numeric.notna() & ~values.map({v: isinstance(v, (bool, np.bool_)) for v in pd.unique(values)})
    specials = {value_label(s) for s in (spec.specials if spec is not None else ())}
    continuous = is_number & ~text.isin(specials)
    out: dict[str, np.ndarray] = {}
    if continuous.any() and numeric[continuous].nunique() > FEW_LEVELS:
        x = numeric[continuous].astype(float)
        if spec is not None and spec.log and (x > 0).all():
            x = np.log10(x)
        z = ((x - x.mean()) / (x.std() or 1.0)).reindex(values.index).fillna(0.0).to_numpy()
        out[f"{knob}"] = z
        out[f"{knob}^2"] = np.where(continuous, z ** 2, 0.0)
        levels = text[present & ~continuous]
    else:
        levels = text[present]
    counts = levels.value_counts()
    for level in counts.index[1:] if len(counts) and not continuous.any() else counts.index:
        out[f"{knob}={level}"] = (text == level).to_numpy(float) * present.to_numpy()
    if (~present).any():
        out[f"{knob}={NA}"] = (~present).to_numpy(float)
    return out


@dataclass
class ViewResult:
    """One estimate of a claim's effect (a - b) and its sampling distribution."""

    effect: float
    se: float
    df: float
    n_configs: int
    n_seeds: int
    n_a: int
    n_b: int


def rubin(estimates: list[float], variances: list[float], df_complete: float) -> tuple[float, float, float]:
    """Rubin's rules with the Barnard-Rubin degrees of freedom: (estimate, se, df)."""
    m = len(estimates)
    q = float(np.mean(estimates))
    within = float(np.mean(variances))
    if m == 1:
        return q, math.sqrt(within), df_complete
    between = float(np.var(estimates, ddof=1))
    total = within + (1 + 1 / m) * between
    lam = (1 + 1 / m) * between / total if total > 0 else 0.0
    df_old = (m - 1) / max(lam, 1e-12) ** 2
    df_obs = (df_complete + 1) / (df_complete + 3) * df_complete * (1 - lam)
    return q, math.sqrt(total), float(1 / (1 / df_old + 1 / df_obs)) if df_obs > 0 else df_old


@dataclass
class SeedSpread:
    """One-way ANOVA of scores by configuration (configurations with >= 2 seeds)."""

    sd: float            # seed-to-seed standard deviation (sqrt of the within mean square)
    icc: float           # share of variance between configurations
    icc_low: float
    icc_high: float
    f_stat: float
    df_between: int
    df_within: int
    n0: float            # the ANOVA's average group size
    n_configs: int
    n_seeds: int
    where: str           # which scores it measured

    @classmethod
    def fit(cls, scores: np.ndarray, groups: np.ndarray, where: str, alpha: float) -> "SeedSpread | None":
        frame = pd.DataFrame({"y": scores, "g": groups}).dropna()
        sizes = frame.groupby("g")["y"].transform("size")
        frame = frame[sizes >= 2]
        k, n = frame["g"].nunique(), len(frame)
        if k < 3 or n - k < 2:
            return None
        group = frame.groupby("g")["y"]
        ni = group.size().to_numpy(float)
        msw = float(((frame["y"] - group.transform("mean")) ** 2).sum() / (n - k))
        msb = float((ni * (group.mean() - frame["y"].mean()) ** 2).sum() / (k - 1))
        n0 = (n - (ni ** 2).sum() / n) / (k - 1)
        f = msb / msw if msw > 0 else np.inf
        f_low = f / stats.f.ppf(1 - alpha / 2, k - 1, n - k)
        f_high = f * stats.f.ppf(1 - alpha / 2, n - k, k - 1)
        icc = lambda ratio: float((ratio - 1) / (ratio + n0 - 1))  # noqa: E731
        return cls(sd=math.sqrt(msw), icc=icc(f), icc_low=max(icc(f_low), -1 / (n0 - 1) if n0 > 1 else 0),
                   icc_high=min(icc(f_high), 1.0), f_stat=f, df_between=k - 1, df_within=n - k, n0=n0,
                   n_configs=k, n_seeds=int(round(n / k)), where=where)

    def p_share_above(self, share: float) -> float:
        """p of H0 'seed share <= share' (ICC >= 1 - share) against 'above'."""
        rho = 1 - share
        return float(stats.f.cdf(self.f_stat / (1 + self.n0 * rho / (1 - rho)), self.df_between, self.df_within))

    def p_share_below(self, share: float) -> float:
        rho = 1 - share
        return float(stats.f.sf(self.f_stat / (1 + self.n0 * rho / (1 - rho)), self.df_between, self.df_within))


@dataclass
class StudyEffects:
    """What every claim of one report shares: trial responses, failures, projections, seed spread."""

    evidence: Evidence
    _projections: dict = field(default_factory=dict)
    _columns: dict = field(default_factory=dict)
    _codings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ev = self.evidence
        frame = ev.frame
        self.y = frame[ev.target].to_numpy(float)
        status = frame["status"].to_numpy(str) if "status" in frame else np.full(len(frame), "ok")
        self.failed = (status == "error") | ~np.isfinite(self.y)
        self.stopped = (status == "early_stopped") & ~self.failed
        self.history = history_epochs(frame, ev.target)
        if self.history:
            hist = frame[[c for _, c in self.history]].to_numpy(float)
            reached = np.where(np.isfinite(hist), np.array([e for e, _ in self.history])[None, :], 0).max(axis=1)
        else:
            hist, reached = None, np.full(len(frame), np.nan)
        self.hist, self.reached = hist, reached
        _, self.config = np.unique(ev.clusters, return_inverse=True)
        first = pd.Series(np.arange(len(frame))).groupby(self.config).first().to_numpy()
        # Knob values per configuration (its seeds share them).
        self.config_raw = mark_not_applicable(frame.iloc[first].reset_index(drop=True), ev.knobs)
        self.n_configs = len(first)
        self.rng = np.random.default_rng(ev.random_state)
        self.seed_spread = self._seed_spread()

    # --- seed-to-seed spread ------------------------------------------------------------------
    def _seed_spread(self) -> SeedSpread | None:
        alpha = self.evidence.alpha
        done = ~self.failed & ~self.stopped
        spread = SeedSpread.fit(np.where(done, self.y, np.nan), self.config, "final scores of completed trials",
                                alpha)
        if (spread is None or spread.n_configs < 10) and self.hist is not None and self.stopped.any():
            rung = self.common_rung(~self.failed)
            if rung is not None:
                at = self.score_at(rung)
                fallback = SeedSpread.fit(np.where(self.failed, np.nan, at), self.config,
                                          f"scores at epoch {rung} (every trial's common budget)", alpha)
                spread = fallback or spread
        return spread

    # --- budget ---------------------------------------------------------------------------------
    def common_rung(self, rows: np.ndarray) -> int | None:
        """The last epoch that every non-failed trial among ``rows`` reached (None without history)."""
        if self.hist is None or not rows.any():
            return None
        reached = self.reached[rows & ~self.failed]
        return int(reached.min()) if len(reached) and reached.min() > 0 else None

    def score_at(self, rung: int) -> np.ndarray:
        col = [i for i, (e, _) in enumerate(self.history) if e == rung][0]
        return self.hist[:, col]

    def base_columns(self, exclude: set[str] = frozenset()) -> dict[str, np.ndarray]:
        """Main-effect columns of every varying knob but ``exclude``, one row per configuration."""
        out: dict[str, np.ndarray] = {}
        for knob in self.evidence.knobs:
            if knob not in exclude:
                if knob not in self._columns:
                    self._columns[knob] = knob_columns(self.config_raw, knob)
                out.update(self._columns[knob])
        return out

    def interactions(self, exclude: set[str] = frozenset(), skip: str | None = None) -> dict[str, np.ndarray]:
        """The '|within' columns of every compare claim with a ``within`` (the interactions the
        claims name), one row per configuration; claims on a knob in ``exclude`` and ``skip`` left out."""
        out: dict[str, np.ndarray] = {}
        knobs = set(self.evidence.knobs)
        for other in self.evidence.extras.get("entries", ()):
            if getattr(other, "within", None) and other.id != skip and other.knob not in exclude \
                    and {other.knob, *other.within} <= knobs:
                out.update({f"{other.id}:{k}": v for k, v in self.coding(other)[3].items() if k.endswith("|within")})
        return out

    def coding(self, entry) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """claim_coding of an entry over the configurations, computed once per entry."""
        if entry.id not in self._codings:
            self._codings[entry.id] = claim_coding(entry, self.config_raw)
        return self._codings[entry.id]

    def projections(self) -> tuple[np.ndarray, str]:
        """IMPUTATIONS x trials: the final score of completed trials, and of early-stopped ones a
        draw of its projection from the study's common budget (the last epoch every non-failed
        trial reached), by one regression fitted on the completed trials."""
        if self._projections:
            return self._projections["draws"], self._projections["how"]
        import statsmodels.api as sm

        done = ~self.failed & ~self.stopped
        draws = np.tile(np.where(done, self.y, np.nan), (IMPUTATIONS, 1))
        rung = self.common_rung(~self.failed)
        if rung is None:
            how = "early-stopped trials at their last score (no common epoch in their histories)"
            self._projections.update(draws=np.where(self.failed, np.nan, self.y)[None, :], how=how)
            return self._projections["draws"], how
        at = self.score_at(rung)
        todo = self.stopped & np.isfinite(at)
        train = done & np.isfinite(at)
        base = {k: v[self.config] for k, v in self.base_columns().items()}
        base.update({k: v[self.config] for k, v in self.interactions().items()})
        speed = {k: v for k, v in base.items() if "=" not in k and ":" not in k}   # numeric knobs
        if train.sum() < 10:
            draws[:, todo] = at[todo]
            how = f"early-stopped trials at their epoch-{rung} score (too few completed trials to project)"
        else:
            # The rung score, its slope per numeric knob (learning speed), then the knobs: as many
            # columns as a third of the training trials allow.
            cols = {"rung": at, **{f"rung*{k}": at * v for k, v in speed.items()}, **base}
            names = list(independent_columns({k: v[train] for k, v in cols.items()}))[: max(1, int(train.sum()) // 3)]
            X = sm.add_constant(np.column_stack([cols[k] for k in names]), has_constant="add")
            fit = sm.OLS(self.y[train], X[train]).fit(cov_type="cluster", cov_kwds={"groups": self.config[train]})
            betas = self.rng.multivariate_normal(fit.params, fit.cov_params(), size=IMPUTATIONS, method="eigh")
            sigma = math.sqrt(fit.scale)
            for m in range(IMPUTATIONS):
                scale = sigma * math.sqrt(fit.df_resid / self.rng.chisquare(fit.df_resid))
                draws[m, todo] = X[todo] @ betas[m] + self.rng.normal(0, scale, int(todo.sum()))
            how = (f"{int(todo.sum())} early-stopped trials projected to the final budget from their score at "
                   f"epoch {rung} (the budget every trial reached) by a regression on {int(train.sum())} completed "
                   f"trials; {IMPUTATIONS} imputations (Rubin's rules)")
        self._projections.update(draws=draws, how=how)
        return draws, how


def study_effects(evidence: Evidence) -> StudyEffects:
    found = evidence.extras.get("effects")
    if found is None or found.evidence is not evidence:
        found = evidence.extras["effects"] = StudyEffects(evidence)
    return found


def seed_spread(evidence: Evidence) -> SeedSpread | None:
    """The study's seed-to-seed spread (ANOVA by configuration), computed once per report."""
    return study_effects(evidence).seed_spread


class ClaimModel:
    """OLS of the configuration mean on a claim's design (HC2): the design is fixed once, the
    responses (one per view or imputation) vary."""

    def __init__(self, design: dict[str, np.ndarray], contrast: dict[str, float], have: np.ndarray):
        import statsmodels.api as sm

        have = have.copy()
        self.ok = False
        for _ in range(3):
            names = list(independent_columns({k: v[have] for k, v in design.items()}))
            if not names or not have.any():
                return   # nothing left to estimate the contrast from: the claim is inconclusive
            X = sm.add_constant(np.column_stack([design[k][have] for k in names]), has_constant="add")
            # A configuration that a column fits alone (leverage 1) says nothing about the others
            # and leaves HC2 undefined: it goes, with the columns that then vanish.
            hat = np.einsum("ij,ji->i", X, np.linalg.pinv(X))
            alone = hat > 1 - 1e-6
            if not alone.any():
                break
            have[np.flatnonzero(have)[alone]] = False
        self.have, self.X = have, X
        self.ok = all(k in names for k in contrast) and have.sum() - len(names) - 1 >= 3 and not alone.any()
        self.L = np.zeros(self.X.shape[1])
        for k, w in contrast.items():
            if k in names:
                self.L[1 + names.index(k)] = w

    def fit(self, response: np.ndarray, config: np.ndarray) -> tuple[float, float, float]:
        """Contrast estimate, its variance and the residual df, from trial-level ``response``."""
        import statsmodels.api as sm

        ok = np.isfinite(response)
        n = len(self.have)
        sums = np.bincount(config[ok], weights=response[ok], minlength=n)
        means = sums[self.have] / np.bincount(config[ok], minlength=n)[self.have]
        fit = sm.OLS(means, self.X).fit(cov_type="HC2")
        return float(self.L @ fit.params), float(self.L @ fit.cov_params() @ self.L), float(fit.df_resid)


def configs_with(response: np.ndarray, config: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(config[np.isfinite(response)], minlength=n) > 0


def more_needed(effect: float, se: float, n: int, seeds: int, margin: float, alpha: float,
            equal: bool) -> tuple[int, int] | None:
    """More configurations (and trials) that would decide the claim at POWER, at the observed
    effect and spread (se shrinks as 1/sqrt(configurations))."""
    z_power = stats.norm.ppf(POWER)
    gaps = [(abs(effect), stats.norm.ppf(1 - alpha / 2)), (margin - abs(effect), stats.norm.ppf(1 - alpha))]
    if equal:
        gaps = [(abs(effect) - margin, stats.norm.ppf(1 - alpha)), gaps[1]]
    totals = [n * ((z + z_power) * se / gap) ** 2 for gap, z in gaps if gap > 1e-9 and se > 0]
    if not totals:
        return None
    more = max(1, math.ceil(min(totals) - n))
    return more, more * max(seeds, 1)


class _Decision(pydantic.BaseModel):
    verdict: str
    p: float
    decided_by: str
    reason: str


def claim_margin(entry: Any, spread: SeedSpread | None, config_sd: float, config_sd_from: str) -> tuple[float, str]:
    """A claim's equivalence margin and where it came from: the findings file's ``margin`` when given,
    else MARGIN_SEED_SD seed-to-seed SDs (``spread``), else, without repeats to measure seed noise,
    MARGIN_SEED_SD times ``config_sd``, the spread of one configuration's score (``config_sd_from``)."""
    if entry.margin is not None:
        return float(entry.margin), f"margin {entry.margin:g} points (from the findings file)"
    if spread is not None:
        margin = MARGIN_SEED_SD * spread.sd
        return margin, f"margin {margin:.3g} = {MARGIN_SEED_SD:g} x seed-to-seed SD {spread.sd:.3g} ({spread.where})"
    margin = MARGIN_SEED_SD * config_sd
    return margin, (f"margin {margin:.3g} = {MARGIN_SEED_SD:g} x {config_sd_from} {config_sd:.3g} "
                    f"(no repeats to measure seed noise)")


def decide(expect: str, effect: float, se: float, df: float, margin: float) -> _Decision:
    """Candidate verdict and its p-value (see the module docstring)."""
    t = stats.t
    p_diff = float(2 * t.sf(abs(effect) / se, df))
    p_within = float(max(t.sf((effect + margin) / se, df), t.cdf((effect - margin) / se, df)))  # TOST
    p_beyond = float(min(1.0, 2 * min(t.sf((effect - margin) / se, df), t.cdf((effect + margin) / se, df))))
    if expect == "equal":
        if p_within <= p_beyond:
            return _Decision(verdict="supported", p=p_within, decided_by="equivalence",
                             reason=f"a - b within +-{margin:.3g} (TOST p={p_within:.3g})")
        return _Decision(verdict="contradicted", p=p_beyond, decided_by="difference",
                         reason=f"|a - b| beyond {margin:.3g} (p={p_beyond:.3g})")
    sign = 1 if expect == "greater" else -1
    if p_diff <= p_within:
        if sign * effect > 0:
            return _Decision(verdict="supported", p=p_diff, decided_by="difference",
                             reason=f"a {expect} than b (p={p_diff:.3g})")
        return _Decision(verdict="contradicted", p=p_diff, decided_by="difference",
                         reason=f"the opposite holds (p={p_diff:.3g})")
    return _Decision(verdict="contradicted", p=p_within, decided_by="equivalence",
                     reason=f"no difference: a - b within +-{margin:.3g} (TOST p={p_within:.3g})")


def claim_coding(entry, raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Rows inside ``within``, rows on side a and side b, and the claim's columns: a and b inside
    and outside ``within`` (the reference is side b, or the knob's other values when a and b do
    not cover them). Quantile sides are taken over the configurations inside ``within``."""
    inside = np.ones(len(raw), bool)
    for knob, side in entry.within.items():
        inside &= side_mask(raw[knob], side).to_numpy()
    pool = raw[entry.knob][inside]
    on_a = side_mask(raw[entry.knob], entry.a, pool).to_numpy()
    on_b = side_mask(raw[entry.knob], entry.b, pool).to_numpy() & ~on_a
    w = inside.astype(float)
    coding = {"a|within": on_a * w}
    neither = (~(on_a | on_b) & (raw[entry.knob] != NA).to_numpy()).any()
    if neither:
        coding["b|within"] = on_b * w
    if entry.within and not inside.all():
        coding["a|outside"] = on_a * (1 - w)
        if neither:
            coding["b|outside"] = on_b * (1 - w)
        coding["within"] = w
    return inside, on_a, on_b, coding


def _one_sided(na: pd.Series, side_a: np.ndarray, side_b: np.ndarray) -> bool:
    na = na.to_numpy()
    return bool((na[side_a].all() and not na[side_b].any()) or (na[side_b].all() and not na[side_a].any()))


def judge_compare(entry, evidence: Evidence) -> dict:
    """Verdict of a compare entry (analysis.findings.CompareEntry): keys among VERDICT_COLUMNS."""
    study = study_effects(evidence)
    for knob in [entry.knob, *entry.within]:
        if knob not in evidence.knobs:
            return {"verdict": "inconclusive", "reason": f"knob '{knob}' was never varied in this study"}
    raw = study.config_raw
    inside, on_a, on_b, coding = study.coding(entry)
    n_a, n_b = int((on_a & inside).sum()), int((on_b & inside).sum())
    if min(n_a, n_b) < MIN_CONFIGS:
        return {"verdict": "inconclusive", "n_a": n_a, "n_b": n_b, "n_configs": n_a + n_b,
                "reason": f"too few configurations: {n_a} on side a, {n_b} on side b (need {MIN_CONFIGS} each)"}
    compared_cfg = inside & (on_a | on_b)
    rows = compared_cfg[study.config]
    better_claim = entry.expect != "equal"

    # Knobs that apply on one side only (target_share under add_target) are part of that side:
    # the effect averages over them instead of holding them fixed.
    nested = [k for k in evidence.knobs if k != entry.knob and _one_sided(raw[k] == NA, on_a & inside, on_b & inside)]
    design = dict(coding)
    contrast = {"a|within": 1.0, **({"b|within": -1.0} if "b|within" in design else {})}
    design.update(study.interactions({entry.knob, *nested}, skip=entry.id))
    design.update(study.base_columns({entry.knob, *nested}))

    # Failures: rates per side (configurations with a failed seed), and worst rank for "better".
    failed_cfg = np.bincount(study.config, weights=study.failed, minlength=study.n_configs) > 0
    fa, fb = int((failed_cfg & on_a & inside).sum()), int((failed_cfg & on_b & inside).sum())
    p_fail = float(stats.fisher_exact([[fa, n_a - fa], [fb, n_b - fb]])[1]) if fa + fb else 1.0
    finite = study.y[~study.failed]
    worst = float(finite.min()) if len(finite) else np.nan

    def with_failures(response: np.ndarray) -> np.ndarray:
        out = np.where(study.failed, np.nan, response)
        if better_claim:
            out = np.where(study.failed, worst, out)
        return out

    # Views: the budget-aware one decides; completed trials only is the second.
    models: dict[bytes, ClaimModel] = {}   # one per set of configurations with a response

    def estimate(response: np.ndarray) -> tuple[float, float, float] | None:
        have = configs_with(response, study.config, study.n_configs)
        model = models.get(have.tobytes())
        if model is None:
            model = models[have.tobytes()] = ClaimModel(design, contrast, have)
        if not model.ok:
            return None
        est, var, df = model.fit(response, study.config)
        return (est, math.sqrt(var), df) if np.isfinite(var) and var > 0 else None

    # Views. Without early stops: the final scores. With them: the projected final (decides
    # "no difference"), the common budget (decides a difference unless the knob changes
    # learning speed), completed trials only (a check), and the progress after the budget.
    stops = bool((study.stopped & rows).any())
    rung = study.common_rung(rows) if stops else None
    if stops and study.hist is not None:
        draws, how = study.projections()
    elif stops:
        draws, how = study.y[None, :], "no per-epoch history: early-stopped trials at their last score"
    else:
        draws, how = study.y[None, :], "final scores (no early stops among compared trials)"
    fits = [estimate(with_failures(d)) for d in draws]
    if any(f is None for f in fits):
        return {"verdict": "inconclusive", "n_a": n_a, "n_b": n_b, "n_configs": n_a + n_b,
                "reason": "too few configurations for the adjusted model (knobs that vary outnumber them)"}
    final = rubin([f[0] for f in fits], [f[1] ** 2 for f in fits], fits[0][2])
    margin, margin_text = claim_margin(entry, study.seed_spread, final[1] * math.sqrt(n_a * n_b / (n_a + n_b)),
                                       "the spread of configuration means")
    decision, chosen = decide(entry.expect, *final, margin), final
    views = ["projected final" if stops and study.hist is not None else "last reported" if stops else "final"]
    disagree, completed, p2, speed_differs = [], None, np.nan, False
    if stops:
        done_only = np.where(study.stopped, np.nan, study.y)
        completed = estimate(with_failures(done_only))
        if completed is not None:
            p2 = float(2 * stats.t.sf(abs(completed[0]) / completed[1], completed[2]))
            views.append(f"completed only {completed[0]:+.3g} (p={p2:.3g})")
    if rung is not None:
        budget = estimate(with_failures(study.score_at(rung)))
        progress = estimate(np.where(study.stopped | study.failed, np.nan, study.y - study.score_at(rung)))
        if budget is not None:
            p3 = float(2 * stats.t.sf(abs(budget[0]) / budget[1], budget[2]))
            # A knob that changes learning speed shows an effect at the budget that the progress
            # after it takes back: then the budget is not evidence about the final score.
            # The budget decides only where the progress after it points the same way (a knob that
            # changes the final score keeps its sign as training goes on).
            opposes = progress is not None and np.sign(progress[0]) != np.sign(budget[0])
            speed = progress is None or opposes
            speed_differs = opposes and stats.t.sf(abs(progress[0]) / progress[1], progress[2]) < SPEED_CHECK
            views.append(f"common budget (epoch {rung}) {budget[0]:+.3g} (p={p3:.3g})"
                         + ("" if not speed else "; not decisive: too few completed trials to see the progress "
                            "after it" if progress is None else "; not decisive: the progress after it opposes"
                            + (" (the knob changes learning speed)" if speed_differs else "")))
            at_budget = decide(entry.expect, *budget, margin)
            if not speed and at_budget.decided_by == "difference" and at_budget.p < decision.p:
                decision, chosen = at_budget, budget
                views[0], views[-1] = views[-1] + " [decides]", views[0]
    effect, se, df = chosen
    tcrit = stats.t.ppf(1 - evidence.alpha / 2, df)
    seeds = np.bincount(study.config[rows & ~study.failed], minlength=study.n_configs)[compared_cfg]
    out = {"effect": effect, "ci_low": effect - tcrit * se, "ci_high": effect + tcrit * se,
           "n_configs": n_a + n_b, "n_seeds": int(np.median(seeds)) if len(seeds) else 0,
           "n_a": n_a, "n_b": n_b, "margin": margin, "fail_a": fa, "fail_b": fb, "p_failure": p_fail,
           "verdict": decision.verdict, "p_value": decision.p, "decided_by": decision.decided_by}
    if stops and completed is not None:
        out.update(effect_completed=completed[0], p_completed=p2)
    treatment = [how, "effect adjusted for the other knobs' main effects and the interactions the other claims "
                      "name (OLS on configuration means, HC2)"
                 + (f"; averaged over {', '.join(nested)} (applies on one side only)" if nested else "")]
    if study.failed[rows].any():
        treatment.append(f"errored trials: {'worst observed score (worst rank)' if better_claim else 'left out'}; "
                         f"failure rates {fa}/{n_a} vs {fb}/{n_b} configurations (Fisher exact p={p_fail:.3g})")
    reason = [decision.reason, margin_text]
    if stops and decision.verdict != "inconclusive" and decision.decided_by == "difference":
        # A difference needs the completed trials to point the same way (a projected one would
        # rest on the extrapolation alone, a budget one on early scores alone).
        if completed is None:
            disagree = ["too few completed trials to check the projection"] if chosen is final else []
        elif p2 < evidence.alpha and np.sign(completed[0]) != np.sign(effect):
            disagree = ["completed only decides the opposite"]
        elif np.sign(completed[0]) != np.sign(effect):
            disagree = ["completed only points the other way"]
        if disagree:
            out["verdict"] = "inconclusive"
            reason.insert(0, f"the views disagree ({disagree[0]})")
    if speed_differs and out["verdict"] != "inconclusive":
        # Both the budget and the projection from it carry the speed difference into the verdict;
        # the final difference of such a knob is not identified once most of its trials stopped.
        out["verdict"], out["p_value"] = "inconclusive", np.nan   # its p is not about the final score
        reason.insert(0, f"the knob changes learning speed (the progress after epoch {rung} opposes its effect "
                         f"there) and {(study.stopped & rows).mean() / rows.mean():.0%} of the compared trials "
                         f"stopped early: the final difference is not identified; trials run to the end decide it")
    if better_claim and p_fail < evidence.alpha and decision.verdict == "supported" and (
            (fa / n_a > fb / n_b) == (entry.expect == "greater")):
        out["verdict"] = "inconclusive"
        reason.insert(0, f"side {'a' if entry.expect == 'greater' else 'b'} fails more often")
    if (out["verdict"] == "inconclusive" or decision.p >= evidence.alpha) and not speed_differs:
        needed = more_needed(effect, se, n_a + n_b, out["n_seeds"], margin, evidence.alpha, entry.expect == "equal")
        if needed is not None:
            out["configs_needed"], out["trials_needed"] = needed
            reason.append(f"about {needed[0]} more configurations x {max(out['n_seeds'], 1)} seeds would decide it "
                          f"at the observed effect and spread ({POWER:.0%} power)")
    out["view"] = "; ".join(views)
    out["treatment"] = "; ".join(treatment)
    out["reason"] = "; ".join(reason)
    return out


class SeedNoiseEntry(Entry):
    kind: Literal["seed_noise"]
    min_share: float = pydantic.Field(default=0.1, gt=0, lt=1)


@register_kind
class SeedNoise(FindingKind):
    """Repeats differ: the seed-to-seed share of variance (1 - ICC) is clearly above ``min_share``
    (one-way ANOVA by configuration; exact F interval and test)."""

    name = "seed_noise"
    Entry = SeedNoiseEntry
    family = "claims"

    def evaluate(self, entry, evidence: Evidence) -> dict:
        spread = seed_spread(evidence)
        if spread is None:
            return {"verdict": "inconclusive", "reason": "no configuration was repeated with several seeds"}
        # A share of variance lies in [0, 1]; the ANOVA estimator of the ICC can fall below 0.
        share, low, high = (float(np.clip(1 - v, 0, 1)) for v in (spread.icc, spread.icc_high, spread.icc_low))
        p_above, p_below = spread.p_share_above(entry.min_share), spread.p_share_below(entry.min_share)
        verdict, p = ("supported", p_above) if p_above <= p_below else ("contradicted", p_below)
        return {"verdict": verdict, "p_value": p, "effect": share, "ci_low": low, "ci_high": high,
                "n_configs": spread.n_configs, "n_seeds": spread.n_seeds, "view": spread.where,
                "decided_by": "difference", "treatment": "one-way ANOVA by configuration (configurations with "
                                                          ">= 2 non-failed seeds); exact F interval",
                "reason": f"seed-to-seed share of variance {share:.2f} [{low:.2f}, {high:.2f}] against "
                          f"{entry.min_share:g} (p={p:.3g}); seed SD {spread.sd:.3g}"}
