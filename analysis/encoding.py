"""Knob values -> a numeric design matrix with readable column names.

Categorical knobs become one-hot columns named ``knob=value``
(``apply_softmax_to=after``), booleans 0/1, numbers stay numbers (``log10(knob)``
where the knob's space is log). A knob that did not apply in a trial
(``target_share`` without ``add_target``, or a column left empty) is *not*
imputed: its numeric column holds NaN there (scikit-learn's trees route missing
values explicitly) and an indicator ``knob=n/a`` marks those rows.
Every column belongs to one knob (``groups_``) so importances can be summed per knob.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from routed_study.trainables.routed_prompt.config import KNOBS

NA = "n/a"

#: knob -> rows where it has no effect, given the other knobs (spec sections 2-3).
NOT_APPLICABLE: dict[str, tuple[str, Callable[[pd.Series], pd.Series]]] = {
    "target_share": ("add_target", lambda v: v.astype(str).str.lower() != "true"),
    "target_share_temperature": ("target_share", lambda v: v.astype(str) != "learned"),
    "source_order": ("compose_method", lambda v: v == "wavg"),
    "anneal_rate": ("anneal_dir", lambda v: v.astype(str) == "0"),
    "prompt_encoder_residual": ("prompt_encoder", lambda v: v == "emb"),
}


def value_label(value) -> str:
    """How a knob value is written in a column name or a findings file."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def labels(values: pd.Series) -> pd.Series:
    """``value_label`` of every entry, computed once per distinct value (tables can be large)."""
    return values.map({v: value_label(v) for v in pd.unique(values)})


def mark_not_applicable(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """Copy of ``frame[knobs]`` with the string 'n/a' wherever a knob did not apply."""
    raw = frame[knobs].astype(object).where(frame[knobs].notna(), NA)
    for knob, (condition, inactive) in NOT_APPLICABLE.items():
        if knob in raw and condition in frame:
            raw.loc[inactive(frame[condition]).to_numpy(), knob] = NA
    return raw


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class KnobEncoder(TransformerMixin, BaseEstimator):
    """One-hot / 0-1 / numeric encoding of knob columns (scikit-learn transformer).

    Parameters
    ----------
    max_categories : int
        A non-numeric knob with more distinct values than this is still one-hot
        encoded; the limit only guards against a free-text column (an id) being
        taken for a knob, which raises ValueError.
    """

    def __init__(self, max_categories: int = 200):
        self.max_categories = max_categories

    def fit(self, frame: pd.DataFrame, y=None) -> "KnobEncoder":
        raw = mark_not_applicable(frame, list(frame.columns))
        self.plan_: list[tuple[str, str, object]] = []  # (knob, kind, detail)
        self.constant_knobs_: list[str] = []
        for knob in raw.columns:
            values = raw[knob]
            present = values[values != NA]
            has_na = bool((values == NA).any())
            distinct = pd.unique(labels(present))
            if len(distinct) + has_na <= 1:
                self.constant_knobs_.append(knob)
                continue
            spec = KNOBS.get(knob)
            is_number = present.map({v: _is_number(v) for v in pd.unique(present)}).astype(bool)
            numbers = present[is_number]
            specials = sorted(set(labels(present[~is_number])))
            if spec is not None and spec.specials:
                specials = sorted(set(specials) | {value_label(s) for s in spec.specials
                                                   if (labels(present) == value_label(s)).any()})
                numbers = numbers[~labels(numbers).isin(specials)]
            is_bool = (spec is not None and spec.kind == "bool") or present.map(
                lambda v: isinstance(v, (bool, np.bool_))).all()
            if is_bool:
                self.plan_.append((knob, "bool", None))
            elif (spec is not None and spec.kind == "choice") or len(numbers) == 0:
                if len(distinct) > self.max_categories:
                    raise ValueError(f"knob column '{knob}' has {len(distinct)} distinct text values")
                self.plan_.append((knob, "onehot", sorted(distinct, key=str)))
            else:
                log = bool(spec is not None and spec.log and (numbers.astype(float) > 0).all())
                self.plan_.append((knob, "numeric", log))
                self.plan_ += [(knob, "indicator", s) for s in specials]
            if has_na:
                self.plan_.append((knob, "indicator", NA))
        self.feature_names_out_ = [self._name(k, kind, d) for k, kind, d in self._columns()]
        self.groups_ = {name: knob for name, (knob, _, _) in zip(self.feature_names_out_, self._columns())}
        self.knobs_ = list(dict.fromkeys(self.groups_.values()))
        return self

    def _columns(self):
        for knob, kind, detail in self.plan_:
            if kind == "onehot":
                yield from ((knob, "indicator", value) for value in detail)
            else:
                yield knob, kind, detail

    @staticmethod
    def _name(knob: str, kind: str, detail) -> str:
        if kind == "indicator":
            return f"{knob}={detail}"
        if kind == "numeric" and detail:
            return f"log10({knob})"
        return knob

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        raw = mark_not_applicable(frame, list(frame.columns))
        out = {}
        for name, (knob, kind, detail) in zip(self.feature_names_out_, self._columns()):
            values = raw[knob]
            text = labels(values)
            if kind == "indicator":
                out[name] = (text == detail).astype(float)
            elif kind == "bool":
                out[name] = text.map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}).astype(float)
            else:
                is_number = values.map({v: _is_number(v) for v in pd.unique(values)}).astype(bool)
                numeric = pd.to_numeric(values.where(is_number), errors="coerce").astype(float)
                out[name] = np.log10(numeric) if detail else numeric
        return pd.DataFrame(out, index=frame.index)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.feature_names_out_, dtype=object)
