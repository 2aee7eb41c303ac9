"""Knob values -> a numeric design matrix with readable column names.

Categorical knobs become one-hot columns named ``knob=value``; a knob with two
levels gets one column (``compose_method=cat``: the other level is its zero), booleans
one 0/1 column, numbers stay numbers (``log10(knob)`` where the knob's space is log),
with an indicator per special literal (``num_selected=-1``, ``target_share=learned``).

A knob that means nothing in a trial is *not applicable* there: the knob table's one
declaration of when a knob applies (``applies=`` in ``trainables/routed_prompt/config.py``,
the condition that ``inert_knobs`` reads) decides it, as does an empty cell. Its columns hold
NaN in those rows (scikit-learn's trees route missing values explicitly); there is no
``knob=n/a`` indicator, which would only copy the knobs the condition reads.
Every column belongs to one knob (``groups_``) so importances can be summed per knob.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from routed_study.trainables.routed_prompt.config import KNOBS, complete

NA = "n/a"

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


def _knob_value(name: str, value):
    """A table cell as the knob table's type (CSV gives -1.0 for -1, 'True' for true); as is if it
    does not coerce (then the condition reads the raw value)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    try:
        return KNOBS[name].coerce(value.item() if hasattr(value, "item") else value, "table")
    except Exception:  # a value outside the table's choices: conditions see it unchanged
        return value


def inert_mask(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """Boolean frame (rows x ``knobs``): True where the knob table says the knob is inert.

    Each knob's declared condition (``Knob.applies``, the one :func:`inert_knobs` reads) is
    evaluated once per distinct combination of the knobs it reads (a study has few), with
    absent knobs at their defaults.
    """
    mask = pd.DataFrame(False, index=frame.index, columns=knobs)
    for knob in knobs:
        spec = KNOBS.get(knob)
        if spec is None or spec.applies is None:
            continue
        reads = sorted(k for k in spec.applies.reads if k in frame)
        if not reads:
            mask[knob] = not spec.applies_in(complete({}))
            continue
        context = frame[reads].astype(object).where(frame[reads].notna(), None)
        group = context.groupby(reads, sort=False, dropna=False).ngroup().to_numpy()
        _, first = np.unique(group, return_index=True)
        inert = np.array([not spec.applies_in(complete({k: _knob_value(k, v) for k, v in zip(reads, row)
                                                        if v is not None}))
                          for row in context.to_numpy()[first]])
        mask[knob] = inert[group]
    return mask


def mark_not_applicable(frame: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """Copy of ``frame[knobs]`` with the string 'n/a' wherever a knob did not apply (an empty
    cell, or inert by the knob table's condition given the row's other knobs)."""
    raw = frame[knobs].astype(object).where(frame[knobs].notna(), NA)
    return raw.mask(inert_mask(frame, knobs), NA)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_numeric_column(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


class KnobEncoder(TransformerMixin, BaseEstimator):
    """One-hot / 0-1 / numeric encoding of knob columns (scikit-learn transformer).

    ``fit`` and ``transform`` take the trial table's knob columns (raw values); a knob
    that does not apply in a row is NaN in all its columns.

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
            spec = KNOBS.get(knob)
            if _is_numeric_column(frame[knob]):
                # Fast path (a float column may hold 10k distinct values): no text labels.
                numbers = present.astype(float)
                specials = [value_label(s) for s in (spec.specials if spec else ()) if _is_number(s)
                            and (numbers == s).any()]
                numbers = numbers[~numbers.isin([float(x) for x in specials])]
                n_distinct = numbers.nunique() + len(specials)
            else:
                text = labels(present)
                is_number = present.map({v: _is_number(v) for v in pd.unique(present)}).astype(bool)
                numbers = present[is_number]
                specials = sorted(set(text[~is_number]))
                if spec is not None and spec.specials:
                    specials = sorted(set(specials) | {value_label(s) for s in spec.specials
                                                       if (text == value_label(s)).any()})
                    numbers = numbers[~labels(numbers).isin(specials)]
                n_distinct = text.nunique()
            if n_distinct <= 1:
                # One value where it applies (n/a elsewhere adds nothing its condition's knobs lack).
                self.constant_knobs_.append(knob)
                continue
            is_bool = (spec is not None and spec.kind == "bool") or all(
                isinstance(v, (bool, np.bool_)) for v in pd.unique(present))
            if is_bool:
                self.plan_.append((knob, "bool", None))
            elif (spec is not None and spec.kind == "choice") or len(numbers) == 0 or numbers.nunique() < 2:
                levels = sorted(pd.unique(labels(present)), key=str)
                if len(levels) > self.max_categories:
                    raise ValueError(f"knob column '{knob}' has {len(levels)} distinct text values")
                if len(levels) == 2:  # one column: the level that is not the default (else the second)
                    default = value_label(spec.default) if spec is not None else None
                    levels = [next(v for v in levels[::-1] if v != default)]
                self.plan_ += [(knob, "indicator", v) for v in levels]
            else:
                log = bool(spec is not None and spec.log and (numbers.astype(float) > 0).all())
                self.plan_.append((knob, "numeric", log))
                self.plan_ += [(knob, "indicator", s) for s in specials]
        self.feature_names_out_ = [self._name(k, kind, d) for k, kind, d in self.plan_]
        self.groups_ = {name: knob for name, (knob, _, _) in zip(self.feature_names_out_, self.plan_)}
        self.knobs_ = list(dict.fromkeys(self.groups_.values()))
        return self

    @staticmethod
    def _name(knob: str, kind: str, detail) -> str:
        if kind == "indicator":
            return f"{knob}={detail}"
        if kind == "numeric" and detail:
            return f"log10({knob})"
        return knob

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        raw = mark_not_applicable(frame, list(frame.columns))
        text: dict[str, pd.Series] = {}  # labels, computed only for knobs with indicator columns
        out = {}
        for name, (knob, kind, detail) in zip(self.feature_names_out_, self.plan_):
            values, na = raw[knob], (raw[knob] == NA).to_numpy()
            if kind == "numeric":
                if _is_numeric_column(frame[knob]):
                    numeric = frame[knob].astype(float)
                else:
                    is_number = values.map({v: _is_number(v) for v in pd.unique(values)}).astype(bool)
                    numeric = pd.to_numeric(values.where(is_number), errors="coerce").astype(float)
                column = np.log10(numeric) if detail else numeric
            else:
                if knob not in text:
                    text[knob] = labels(values)
                column = ((text[knob] == detail).astype(float) if kind == "indicator" else
                          text[knob].map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}).astype(float))
            out[name] = column.mask(na)
        return pd.DataFrame(out, index=frame.index)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.feature_names_out_, dtype=object)
