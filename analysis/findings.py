"""Claims about the knobs, checked on a study's trials: a registry of finding kinds.

A findings file (YAML, see ``analysis/findings.yaml``) lists entries; ``kind`` picks the
class that judges it (:data:`KINDS`, default ``compare``)::

    - id: F8b
      statement: With cat, apply_softmax_to=after beats before.
      kind: compare                      # see KINDS; a plugin module can register more
      within: {compose_method: cat}      # optional: rows the comparison is made in
      knob: apply_softmax_to
      a: after                           # a side: a value, a list of values,
      b: before                          #   {min: x, max: y} or {quantile: [lo, hi]}
      expect: greater                    # greater | less | equal
      margin: 1.0                        # optional: points that count as "no difference"
                                         #   (default: tied to the measured seed-to-seed spread)

Every kind reads one :class:`Evidence` (computed once per report) and returns a row of
:data:`VERDICT_COLUMNS`: a *candidate* verdict and the p-value behind it. The p-values of
one ``family`` are corrected together by Benjamini-Hochberg (false discovery rate at
``alpha`` across the claims of one report); a decided verdict whose corrected p is not
below ``alpha`` becomes inconclusive.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import numpy as np
import pandas as pd
import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from routed_study.analysis.loading import TrialTable
from routed_study.trainables.errors import InputError, did_you_mean, format_choices

DEFAULT_FILE = Path(__file__).with_name("findings.yaml")
VERDICTS = ("supported", "contradicted", "inconclusive")
#: One row per claim in findings.csv and the report, in this order.
VERDICT_COLUMNS = ["id", "statement", "kind", "verdict", "effect", "ci_low", "ci_high", "n_configs", "n_seeds",
                   "p_value", "p_adjusted", "view", "treatment", "trials_needed", "reason",
                   "family", "decided_by", "margin", "n_a", "n_b", "effect_completed", "p_completed",
                   "fail_a", "fail_b", "p_failure", "configs_needed"]
#: How the p-values of a family are corrected (statsmodels.stats.multitest.multipletests method).
CORRECTION = "fdr_bh"
CORRECTION_TEXT = "Benjamini-Hochberg (false discovery rate) across the claims of this report"


@dataclass
class Evidence:
    """Everything a finding kind may read, computed once per report."""

    table: TrialTable
    frame: pd.DataFrame      # table.frame with the target column signed so higher is better
    target: str
    knobs: list[str]         # knobs that vary
    clusters: np.ndarray     # configuration id per row (seeds of one configuration share one)
    alpha: float = 0.05
    random_state: int = 0
    extras: dict = field(default_factory=dict)   # shared results (fitted importance methods, ...)

    @classmethod
    def from_table(cls, table: TrialTable, mode: str = "max", **kwargs) -> "Evidence":
        """Evidence of a loaded table: target signed by ``mode``, knobs that vary, configurations."""
        if mode not in ("max", "min"):
            raise InputError(f"mode got {mode!r}; allowed values: 'max', 'min'")
        frame = table.frame.copy()
        if mode == "min":
            frame[table.target] = -frame[table.target]
            frame[[c for c in history_columns(frame, table.target)]] *= -1
        varying = [k for k in table.knobs if k != "seed" and frame[k].astype(str).nunique(dropna=False) > 1]
        return cls(table=table, frame=frame, target=table.target, knobs=varying,
                   clusters=table.config_key.to_numpy(), **kwargs)


def history_columns(frame: pd.DataFrame, target: str) -> list[str]:
    """The per-epoch history columns of ``target`` (see analysis.loading.history_column)."""
    from routed_study.analysis.loading import history_epochs

    return [c for _, c in history_epochs(frame, target)]


# --- entries -------------------------------------------------------------------------------

Side = Union[bool, int, float, str, list, dict]


def check_side(value: Any) -> Any:
    """A side of a comparison: a value, a list of values, {min, max} or {quantile: [lo, hi]}."""
    if isinstance(value, dict):
        if set(value) == {"quantile"}:
            q = value["quantile"]
            if not (isinstance(q, list) and len(q) == 2 and all(isinstance(x, (int, float)) for x in q)
                    and 0 <= q[0] < q[1] <= 1):
                raise ValueError(f"'quantile' must be [lo, hi] with 0 <= lo < hi <= 1, got {q!r}")
        elif not value or not set(value) <= {"min", "max"}:
            raise ValueError(f"a range takes keys 'min'/'max' or 'quantile', got {sorted(value)}")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            raise ValueError(f"'min'/'max' must be numbers, got {value!r}")
    return value


class Entry(BaseModel):
    """Keys every entry has; a kind's own Entry adds its keys (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    statement: str
    kind: str = "compare"

    @field_validator("id", mode="before")
    @classmethod
    def _text(cls, v):
        return str(v)


class FindingKind(ABC):
    """One way of judging a claim. Subclasses set ``name``, ``Entry`` and ``family``."""

    name: ClassVar[str]
    Entry: ClassVar[type[BaseModel]]
    family: ClassVar[str]

    @abstractmethod
    def evaluate(self, entry, evidence: Evidence) -> dict:
        """A candidate verdict and what backs it: keys among VERDICT_COLUMNS."""


#: Registered kinds by name (findings files pick one with ``kind:``).
KINDS: dict[str, type[FindingKind]] = {}


def register_kind(cls: type[FindingKind]) -> type[FindingKind]:
    """Class decorator: make ``cls`` available as ``kind: <cls.name>``."""
    KINDS[cls.name] = cls
    return cls


class CompareEntry(Entry):
    kind: Literal["compare"] = "compare"
    knob: str
    a: Side
    b: Side
    within: dict[str, Side] = {}
    expect: Literal["greater", "less", "equal"] = "greater"
    margin: float | None = pydantic.Field(default=None, ge=0)

    _side = field_validator("a", "b")(classmethod(lambda cls, v: check_side(v)))

    @field_validator("within")
    @classmethod
    def _within(cls, v):
        return {k: check_side(s) for k, s in v.items()}


@register_kind
class Compare(FindingKind):
    """Side a against side b of one knob, the other knobs held fixed (analysis.effects)."""

    name = "compare"
    Entry = CompareEntry
    family = "claims"

    def evaluate(self, entry, evidence: Evidence) -> dict:
        from routed_study.analysis.designs import is_designed_pair, paired_claim
        from routed_study.analysis.effects import judge_compare

        # A pairs study's own claims are read from their matched pairs; any other claim (or study)
        # from the adjusted model over all trials.
        if is_designed_pair(evidence.frame, entry.id):
            finite = evidence.frame[np.isfinite(evidence.frame[evidence.target].to_numpy(float))]
            row = paired_claim(entry, finite, evidence.target, alpha=evidence.alpha)
            return {k: v for k, v in row.items() if k not in ("id", "statement", "kind", "family")}
        return judge_compare(entry, evidence)


class RankingEntry(Entry):
    kind: Literal["ranking"]
    factors: tuple[str, ...] = pydantic.Field(min_length=1)


@register_kind
class Ranking(FindingKind):
    """The listed factors rank first, in order (analysis.ranking.judge_ranking)."""

    name = "ranking"
    Entry = RankingEntry
    family = "claims"

    def evaluate(self, entry, evidence: Evidence) -> dict:
        try:
            ranking = importlib.import_module("routed_study.analysis.ranking")
        except ModuleNotFoundError:
            return {"verdict": "inconclusive", "reason": "no ranking judge installed (analysis.ranking)"}
        return ranking.judge_ranking(tuple(entry.factors), evidence)


class UntestableEntry(Entry):
    kind: Literal["untestable"]
    reason: str


@register_kind
class Untestable(FindingKind):
    """A claim that needs data a trial table does not hold; carries the reason."""

    name = "untestable"
    Entry = UntestableEntry
    family = "none"

    def evaluate(self, entry, evidence: Evidence) -> dict:
        return {"verdict": "inconclusive", "reason": f"not testable from a trial table: {entry.reason}"}


def _builtin_kinds() -> None:
    """Kinds defined in their own modules register on import."""
    from routed_study.analysis import effects, routing, task_findings  # noqa: F401


def _error_line(path: Path, entry_id: str, kind: type[FindingKind], error: pydantic.ValidationError) -> str:
    err = error.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or len(err["loc"]) == 1) or "?"
    where = f"{path}: finding '{entry_id}'"
    fields = kind.Entry.model_fields
    top = str(err["loc"][0]) if err["loc"] else key
    if err["type"] == "extra_forbidden":
        return (f"{where}: unknown key '{top}'{did_you_mean(top, fields)} for kind {kind.name!r}; "
                f"allowed keys: {', '.join(fields)}")
    if err["type"] == "missing":
        return f"{where}: missing key '{top}'"
    if err["type"] == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{where}: key '{key}' got {err['input']!r}; allowed values: {allowed}"
    return f"{where}: key '{key}': {err['msg'].removeprefix('Value error, ')}"


def load_findings(path: str | Path | None = None) -> list:
    """Read and validate a findings file: one validated entry (pydantic) per claim.

    Bad input is an InputError of one line naming the file, the entry id, the key and the
    allowed values (with a did-you-mean)."""
    _builtin_kinds()
    path = Path(path) if path is not None else DEFAULT_FILE
    if not path.is_file():
        raise InputError(f"{path}: findings file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    raw = data.get("findings") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{path}: expected a top-level key 'findings' holding a list of entries")
    entries, seen = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "id" not in item:
            raise InputError(f"{path}: findings[{i}]: each entry is a mapping with at least 'id' and 'statement'")
        entry_id = str(item["id"])
        if entry_id in seen:
            raise InputError(f"{path}: finding '{entry_id}': duplicate id")
        seen.add(entry_id)
        kind_name = item.get("kind", "compare")
        if kind_name not in KINDS:
            raise InputError(f"{path}: finding '{entry_id}': key 'kind' got {kind_name!r}"
                             f"{did_you_mean(str(kind_name), KINDS)}; allowed values: {format_choices(KINDS)}")
        kind = KINDS[kind_name]
        try:
            entries.append(kind.Entry.model_validate(item))
        except pydantic.ValidationError as exc:
            raise InputError(_error_line(path, entry_id, kind, exc)) from None
    return entries


def evaluate_findings(entries: list, evidence: Evidence) -> pd.DataFrame:
    """One row per entry (columns VERDICT_COLUMNS), p-values corrected per family (CORRECTION)."""
    from threadpoolctl import threadpool_limits

    _builtin_kinds()
    evidence.extras["entries"] = list(entries)   # kinds may adjust for what the other claims name
    rows = []
    for entry in entries:
        kind = KINDS[entry.kind]
        with threadpool_limits(1):  # many small fits: threads only add contention
            out = kind().evaluate(entry, evidence)
        unknown = set(out) - set(VERDICT_COLUMNS)
        if unknown:
            raise ValueError(f"kind {kind.name!r} returned unknown columns {sorted(unknown)}")
        rows.append({"id": entry.id, "statement": entry.statement, "kind": kind.name, "family": kind.family, **out})
    return apply_correction(pd.DataFrame(rows).reindex(columns=VERDICT_COLUMNS), evidence.alpha)


def apply_correction(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """``p_adjusted`` by CORRECTION within each ``family`` (one family where the column is absent); a
    decided verdict whose corrected p is not below ``alpha`` becomes inconclusive, saying why."""
    from statsmodels.stats.multitest import multipletests

    table = table.copy()
    table["p_adjusted"] = np.nan
    families = table["family"].fillna("claims") if "family" in table else pd.Series("claims", index=table.index)
    for _, idx in table.groupby(families).groups.items():
        p = table.loc[idx, "p_value"].astype(float)
        tested = p.notna()
        if tested.any():
            table.loc[p[tested].index, "p_adjusted"] = multipletests(p[tested], alpha=alpha, method=CORRECTION)[1]
    lost = table["verdict"].ne("inconclusive") & table["p_adjusted"].ge(alpha)
    table.loc[lost, "reason"] = table.loc[lost].apply(
        lambda r: f"{r['reason']}; not significant after correction (p_adjusted {r['p_adjusted']:.3g} >= "
                  f"{alpha:g}, {CORRECTION_TEXT})", axis=1)
    table.loc[lost, "verdict"] = "inconclusive"
    return table


def judge(source, findings=None, target: str = "score", mode: str = "max", experiment: str | None = None,
          alpha: float = 0.05, random_state: int = 0, extras: dict | None = None) -> pd.DataFrame:
    """The verdicts of a findings file on a study dir, CSV or MLflow URI (what ``routed-study analyze``
    writes to findings.csv): the file is validated before the trials are read."""
    from routed_study.analysis.loading import load_trials

    entries = load_findings(findings)
    table = load_trials(source, target=target, experiment=experiment)
    evidence = Evidence.from_table(table, mode=mode, alpha=alpha, random_state=random_state, extras=extras or {})
    return evaluate_findings(entries, evidence)
