"""Finding kinds about data size, task sets and sharing (F3, F14, F15, F16).

They judge claims that the knobs ``train_per_task``, ``task_set`` and ``sharing`` make testable
(trainables/routed_prompt/config.py), on the same footing as ``compare`` (analysis.effects): the
unit is the configuration (its seeds averaged), effects are adjusted for the main effects of the
other knobs that vary, by OLS with HC2 errors (:class:`~analysis.effects.ClaimModel`), early-stopped
trials are projected to the final budget by multiple imputation, and the candidate verdict comes
from :func:`~analysis.effects.decide` (a t test for a direction, TOST against the margin for "no
difference"), so every p-value joins the report's false-discovery correction.

- ``interaction``: the effect of a knob (side a - side b) is larger in one group of rows than in
  another (``by``: a knob, ``by_a`` / ``by_b``: its two sides), optionally ``within`` some rows.
  ``size_interaction`` (F3: the best rate depends on ``train_per_task``) and ``label_overlap``
  (F16: ``private_prompts`` helps more in a ``task_set`` without shared labels) are interactions
  with those defaults.
- ``size_gain`` (F15): the per-task gain of side a over side b shrinks as the task's number of
  training examples grows: one row per trial and task (``val/<task>`` and the reported
  ``train/<task>/examples``), OLS with task effects, errors clustered by configuration.
- ``sharing_order`` (F14): the levels of ``sharing`` rank in the listed order (best first): every
  adjacent pair differs in that direction (an intersection-union test: the largest of the pair
  p-values), contradicted when some pair is significantly reversed (Bonferroni over the pairs).
"""

from __future__ import annotations

import abc
import math
from typing import Literal

import numpy as np
import pandas as pd
import pydantic
from scipy import stats

from routed_study.analysis.effects import (MARGIN_SEED_SD, MIN_CONFIGS, POWER, ClaimModel, configs_with,
                                           independent_columns, more_needed, study_effects, decide, rubin, side_mask)
from routed_study.analysis.encoding import NA, value_label
from routed_study.analysis.findings import Entry, Evidence, FindingKind, Side, check_side, register_kind
from routed_study.trainables.results import train_examples_metric

#: What the kinds' treatment column says about the model behind an effect.
ADJUSTED = "adjusted for the other knobs' main effects (OLS on configuration means, HC2)"


class _StudyKind(FindingKind):
    """A claim about the knobs ``claim_knobs(entry)``: inconclusive where one never varied, else
    judged on the study's configurations (``judge``)."""

    family = "claims"

    def claim_knobs(self, entry) -> tuple[str, ...]:
        return (entry.knob,)

    def evaluate(self, entry, evidence: Evidence) -> dict:
        for knob in self.claim_knobs(entry):
            if knob not in evidence.knobs:
                return {"verdict": "inconclusive", "reason": f"knob '{knob}' was never varied in this study"}
        return self.judge(entry, evidence, study_effects(evidence))

    @abc.abstractmethod
    def judge(self, entry, evidence: Evidence, study) -> dict:
        """The verdict's keys (VERDICT_COLUMNS) from the study's configuration-level view."""


def _responses(study, rows: np.ndarray) -> tuple[list[np.ndarray], str, str]:
    """Trial responses (one per imputation) for the configurations in ``rows``: final scores, with
    early-stopped trials projected to the final budget (analysis.effects.StudyEffects.projections)."""
    if (study.stopped & rows).any() and study.hist is not None:
        draws, how = study.projections()
        view = "projected final"
    elif (study.stopped & rows).any():
        draws, how, view = study.y[None, :], "early-stopped trials at their last score (no history)", "last reported"
    else:
        draws, how, view = study.y[None, :], "final scores (no early stops among compared trials)", "final"
    return [np.where(study.failed | ~rows, np.nan, d) for d in draws], view, how


def _margin(study, scale: float) -> tuple[float, str]:
    """The equivalence margin: MARGIN_SEED_SD seed-to-seed SDs (as compare), else of ``scale``."""
    spread = study.seed_spread
    if spread is not None:
        return MARGIN_SEED_SD * spread.sd, f"margin {MARGIN_SEED_SD * spread.sd:.3g} = {MARGIN_SEED_SD:g} x seed SD"
    return MARGIN_SEED_SD * scale, f"margin {MARGIN_SEED_SD * scale:.3g} = {MARGIN_SEED_SD:g} x configuration spread"


def _result(decision, effect: float, se: float, df: float, alpha: float, **extra) -> dict:
    """The row of a decided contrast; where it is not significant, the configurations that would decide
    it at POWER (at the observed effect and spread, as compare)."""
    t = stats.t.ppf(1 - alpha / 2, df)
    out = {"verdict": decision.verdict, "p_value": decision.p, "decided_by": decision.decided_by,
           "effect": effect, "ci_low": effect - t * se, "ci_high": effect + t * se, **extra}
    if decision.p >= alpha:
        needed = more_needed(effect, se, out["n_configs"], out["n_seeds"], out["margin"], alpha, equal=False)
        if needed is not None:
            out["configs_needed"], out["trials_needed"] = needed
            out["reason"] += (f"; about {needed[0]} more configurations x {max(out['n_seeds'], 1)} seeds would "
                              f"decide it at the observed effect and spread ({POWER:.0%} power)")
    return out


# --- interaction (F3, F16) -------------------------------------------------------------------
class InteractionEntry(Entry):
    """(a - b where ``by`` is on ``by_a``) - (a - b where ``by`` is on ``by_b``) is ``expect`` than 0."""

    kind: Literal["interaction"] = "interaction"
    knob: str
    a: Side
    b: Side
    by: str
    by_a: Side
    by_b: Side
    within: dict[str, Side] = {}
    expect: Literal["greater", "less"] = "greater"

    _side = pydantic.field_validator("a", "b", "by_a", "by_b")(classmethod(lambda cls, v: check_side(v)))

    @pydantic.field_validator("within")
    @classmethod
    def _within(cls, v):
        return {k: check_side(s) for k, s in v.items()}


class SizeInteractionEntry(InteractionEntry):
    """F3: the effect of a higher learning rate is larger with few examples than with many."""

    kind: Literal["size_interaction"] = "size_interaction"
    knob: str = "learning_rate"
    a: Side = {"quantile": [0.5, 1.0]}
    b: Side = {"quantile": [0.0, 0.5]}
    by: str = "train_per_task"
    by_a: Side = {"quantile": [0.0, 0.5]}
    by_b: Side = {"quantile": [0.5, 1.0]}


class LabelOverlapEntry(InteractionEntry):
    """F16: private prompts help more in a task set without shared labels than in one with."""

    kind: Literal["label_overlap"] = "label_overlap"
    knob: str = "private_prompts"
    a: Side = True
    b: Side = False
    by: str = "task_set"
    by_a: Side = "distinct_labels"
    by_b: Side = "shared_labels"


@register_kind
class Interaction(_StudyKind):
    """The effect of one knob differs between two groups of another (a difference of differences)."""

    name = "interaction"
    Entry = InteractionEntry

    def claim_knobs(self, entry) -> tuple[str, ...]:
        return (entry.knob, entry.by, *entry.within)

    def judge(self, entry, evidence: Evidence, study) -> dict:
        raw = study.config_raw
        inside = np.ones(study.n_configs, bool)
        for knob, side in entry.within.items():
            inside &= side_mask(raw[knob], side).to_numpy()
        group_a = side_mask(raw[entry.by], entry.by_a, raw[entry.by][inside]).to_numpy() & inside
        group_b = side_mask(raw[entry.by], entry.by_b, raw[entry.by][inside]).to_numpy() & inside & ~group_a
        grouped = group_a | group_b
        pool = raw[entry.knob][grouped]
        on_a = side_mask(raw[entry.knob], entry.a, pool).to_numpy() & grouped
        on_b = side_mask(raw[entry.knob], entry.b, pool).to_numpy() & grouped & ~on_a
        cells = {"a|by_a": on_a & group_a, "b|by_a": on_b & group_a, "a|by_b": on_a & group_b,
                 "b|by_b": on_b & group_b}
        counts = {k: int(v.sum()) for k, v in cells.items()}
        n_configs = sum(counts.values())
        if min(counts.values()) < MIN_CONFIGS:
            return {"verdict": "inconclusive", "n_configs": n_configs,
                    "reason": "too few configurations per cell (" + ", ".join(f"{k}: {n}" for k, n in counts.items())
                              + f"; need {MIN_CONFIGS} each)"}
        compared = on_a | on_b
        design = {"a|by_a": cells["a|by_a"].astype(float), "a|by_b": cells["a|by_b"].astype(float),
                  "by_a": group_a.astype(float)}
        design.update(study.interactions({entry.knob, entry.by}, skip=entry.id))
        design.update(study.base_columns({entry.knob, entry.by}))
        responses, view, how = _responses(study, compared[study.config])
        model = ClaimModel(design, {"a|by_a": 1.0, "a|by_b": -1.0},
                           configs_with(responses[0], study.config, study.n_configs))
        if not model.ok:
            return {"verdict": "inconclusive", "n_configs": n_configs,
                    "reason": "too few configurations for the adjusted model (knobs that vary outnumber them)"}
        fits = [model.fit(r, study.config) for r in responses]
        effect, se, df = rubin([f[0] for f in fits], [f[1] for f in fits], fits[0][2])
        margin, margin_text = _margin(study, se * math.sqrt(n_configs / 4))
        decision = decide(entry.expect, effect, se, df, margin)
        seeds = np.bincount(study.config[~study.failed], minlength=study.n_configs)[compared]
        return _result(decision, effect, se, df, evidence.alpha, n_configs=n_configs,
                       n_seeds=int(np.median(seeds)), n_a=counts["a|by_a"] + counts["a|by_b"],
                       n_b=counts["b|by_a"] + counts["b|by_b"], margin=margin, view=view,
                       treatment=f"{how}; (a - b | {entry.by} on by_a) - (a - b | on by_b), {ADJUSTED}",
                       reason=f"(a - b | {entry.by} on by_a) - (a - b | on by_b) = {effect:+.3g}: {decision.reason}; "
                              f"{margin_text}; configurations per cell: {counts}")


@register_kind
class SizeInteraction(Interaction):
    """F3: the best learning rate depends on the training-set size (an interaction over train_per_task)."""

    name = "size_interaction"
    Entry = SizeInteractionEntry


@register_kind
class LabelOverlap(Interaction):
    """F16: private prompts compensate where tasks do not share labels (an interaction over task_set)."""

    name = "label_overlap"
    Entry = LabelOverlapEntry


# --- per-task gain against task size (F15) ---------------------------------------------------
class SizeGainEntry(Entry):
    """The gain of side a over side b on one task, per doubling of that task's training examples,
    is ``expect`` than 0 (``less``: the gain is largest where the examples are fewest)."""

    kind: Literal["size_gain"]
    knob: str = "sharing"
    a: Side = ["partial", "custom"]
    b: Side = "separate"
    expect: Literal["greater", "less"] = "less"

    _side = pydantic.field_validator("a", "b")(classmethod(lambda cls, v: check_side(v)))


def task_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial and task: ``row`` (the trial's row), ``task``, ``score`` (``val/<task>``) and
    ``examples`` (the reported ``train/<task>/examples``); tasks without a reported size are left out."""
    parts = []
    for column in frame.columns:
        task = column[len("val/"):] if isinstance(column, str) and column.startswith("val/") else None
        if not task or "/" in task or train_examples_metric(task) not in frame:
            continue
        part = pd.DataFrame({"row": np.arange(len(frame)), "task": task,
                             "score": pd.to_numeric(frame[column], errors="coerce").to_numpy(float),
                             "examples": pd.to_numeric(frame[train_examples_metric(task)], errors="coerce")
                             .to_numpy(float)})
        parts.append(part[np.isfinite(part["score"]) & (part["examples"] > 0)])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row", "task", "score", "examples"])


@register_kind
class SizeGain(_StudyKind):
    """F15: the per-task gain of routing shrinks with the task's number of training examples."""

    name = "size_gain"
    Entry = SizeGainEntry

    def judge(self, entry, evidence: Evidence, study) -> dict:
        import statsmodels.api as sm

        raw = study.config_raw
        on_a = side_mask(raw[entry.knob], entry.a).to_numpy()
        on_b = side_mask(raw[entry.knob], entry.b).to_numpy() & ~on_a
        n_a, n_b = int(on_a.sum()), int(on_b.sum())
        if min(n_a, n_b) < MIN_CONFIGS:
            return {"verdict": "inconclusive", "n_a": n_a, "n_b": n_b, "n_configs": n_a + n_b,
                    "reason": f"too few configurations: {n_a} on side a, {n_b} on side b (need {MIN_CONFIGS} each)"}
        rows = task_rows(evidence.frame)
        config = study.config[rows["row"].to_numpy(int)]
        keep = (on_a | on_b)[config] & ~study.failed[rows["row"].to_numpy(int)]
        rows, config = rows[keep].reset_index(drop=True), config[keep]
        if rows.empty:
            return {"verdict": "inconclusive", "n_a": n_a, "n_b": n_b,
                    "reason": "no per-task scores with their training sizes (val/<task> and "
                              f"{train_examples_metric('<task>')}) in this table"}
        size = np.log2(rows["examples"].to_numpy(float))
        if np.ptp(size) == 0:
            return {"verdict": "inconclusive", "n_a": n_a, "n_b": n_b,
                    "reason": f"every task trained on {int(rows['examples'].iloc[0])} examples: vary train_per_task "
                              f"or data.train_sizes"}
        side = on_a[config].astype(float)
        tasks = pd.get_dummies(rows["task"], drop_first=True, dtype=float)
        centred = size - size.mean()
        columns = {"a*log2(examples)": side * centred, "a": side, "log2(examples)": centred,
                   **{f"task={t}": tasks[t].to_numpy() for t in tasks},
                   **{f"task={t}*log2(examples)": tasks[t].to_numpy() * centred for t in tasks}}
        columns.update({k: v[config] for k, v in study.base_columns({entry.knob}).items()})
        names = list(independent_columns(columns))
        if "a*log2(examples)" not in names or len(np.unique(config)) - len(names) - 1 < 3:
            return {"verdict": "inconclusive", "n_a": n_a, "n_b": n_b,
                    "reason": "the task sizes do not separate the gain's dependence on size from the tasks "
                              "themselves (or too few configurations for the model)"}
        X = sm.add_constant(np.column_stack([columns[k] for k in names]), has_constant="add")
        fit = sm.OLS(rows["score"].to_numpy(float), X).fit(cov_type="cluster", cov_kwds={"groups": config})
        at = 1 + names.index("a*log2(examples)")
        effect, se = float(fit.params[at]), float(fit.bse[at])
        clusters = len(np.unique(config))
        df = clusters - 1   # cluster-robust errors: the number of configurations, not of rows, counts
        margin, margin_text = _margin(study, float(np.std(rows["score"])))
        decision = decide(entry.expect, effect, se, df, margin)
        return _result(decision, effect, se, df, evidence.alpha, n_a=n_a, n_b=n_b, n_configs=clusters,
                       n_seeds=int(np.median(np.bincount(study.config[~study.failed],
                                                                          minlength=study.n_configs)[np.unique(config)])),
                       margin=margin, view="final scores per task",
                       treatment=("one row per trial and task; OLS of val/<task> on side a x log2(examples), task "
                                  "effects and their size slopes, the other knobs' main effects; errors "
                                  "clustered by configuration"),
                       reason=f"change of the gain (a - b) per doubling of a task's examples = {effect:+.3g}: "
                              f"{decision.reason}; {margin_text}; {rows['task'].nunique()} tasks, {len(rows)} task scores")


# --- sharing presets in order (F14) ----------------------------------------------------------
class SharingOrderEntry(Entry):
    """The levels of ``knob`` rank in ``order``, best first (each better than the next)."""

    kind: Literal["sharing_order"]
    knob: str = "sharing"
    order: tuple[str, ...] = pydantic.Field(("shared", "partial", "separate"), min_length=2)

    @pydantic.field_validator("order", mode="before")
    @classmethod
    def _distinct(cls, v):
        if isinstance(v, list) and len(set(map(str, v))) != len(v):
            raise ValueError(f"'order' lists a level twice: {v!r}")
        return tuple(str(x) for x in v) if isinstance(v, list) else v


@register_kind
class SharingOrder(_StudyKind):
    """F14: one shared prompt beats partial sharing, which beats none (adjacent pairs, adjusted)."""

    name = "sharing_order"
    Entry = SharingOrderEntry

    def judge(self, entry, evidence: Evidence, study) -> dict:
        text = study.config_raw[entry.knob].map(value_label)
        levels = {level: (text == level).to_numpy() for level in entry.order}
        counts = {level: int(m.sum()) for level, m in levels.items()}
        if min(counts.values()) < MIN_CONFIGS:
            return {"verdict": "inconclusive", "n_configs": sum(counts.values()),
                    "reason": f"too few configurations per level ({counts}; need {MIN_CONFIGS} each)"}
        compared = np.any(list(levels.values()), axis=0)
        *coded, reference = entry.order
        design = {f"{entry.knob}={level}": levels[level].astype(float) for level in coded}
        others = (study.config_raw[entry.knob] != NA).to_numpy() & ~compared
        design.update(study.base_columns({entry.knob}))
        responses, view, how = _responses(study, compared[study.config])
        pairs = []
        for better, worse in zip(entry.order, entry.order[1:]):
            contrast = {f"{entry.knob}={better}": 1.0}
            if worse != reference:
                contrast[f"{entry.knob}={worse}"] = -1.0
            model = ClaimModel(design, contrast, configs_with(responses[0], study.config, study.n_configs))
            if not model.ok:
                return {"verdict": "inconclusive", "n_configs": int(compared.sum()),
                        "reason": "too few configurations for the adjusted model (knobs that vary outnumber them)"}
            fits = [model.fit(r, study.config) for r in responses]
            effect, se, df = rubin([f[0] for f in fits], [f[1] for f in fits], fits[0][2])
            # Two-sided p-values, kept in the direction they point to (as compare's t test).
            pairs.append((better, worse, effect, se, df, min(1.0, float(2 * stats.t.sf(effect / se, df))),
                          min(1.0, float(2 * stats.t.cdf(effect / se, df)))))
        worst = min(pairs, key=lambda p: p[2] / p[3])   # the weakest link of the order
        p_order = max(p[5] for p in pairs)               # every pair in order (intersection-union)
        p_reversed = min(1.0, len(pairs) * min(p[6] for p in pairs))   # some pair reversed (Bonferroni)
        detail = ", ".join(f"{b} - {w} = {e:+.3g} (p={po:.3g})" for b, w, e, _, _, po, _ in pairs)
        if all(pair[2] > 0 for pair in pairs):
            verdict, p, reason = "supported", p_order, f"each level scores above the next: {detail}"
        else:
            reversed_pair = min(pairs, key=lambda p: p[6])
            verdict, p = "contradicted", p_reversed
            reason = f"{reversed_pair[1]} scores above {reversed_pair[0]} (Bonferroni p={p_reversed:.3g}): {detail}"
        if others.any():
            how += f"; {int(others.sum())} configurations at other levels of {entry.knob} left out"
        t = stats.t.ppf(1 - evidence.alpha / 2, worst[4])
        seeds = np.bincount(study.config[~study.failed], minlength=study.n_configs)[compared]
        return {"verdict": verdict, "p_value": p, "decided_by": "difference", "effect": worst[2],
                "ci_low": worst[2] - t * worst[3], "ci_high": worst[2] + t * worst[3],
                "n_configs": int(compared.sum()), "n_seeds": int(np.median(seeds)), "view": view,
                "treatment": f"{how}; adjacent levels compared, {ADJUSTED}; effect: the weakest adjacent pair",
                "reason": reason}
