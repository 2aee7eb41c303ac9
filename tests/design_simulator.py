"""Simulated studies with planted effects, for ``bench/verdict_cost.py`` and the design tests.

A :class:`PlantedSurface` is a score over a search space's configurations:

    score = 60 + main effects of the knobs no claim compares (sd ``main_sd`` per knob)
               + each claim's planted effect (on its side a, within its condition)
               + pairwise interactions of all knobs (double-centred random tables; total sd
                 ``interaction_sd``): the configuration-level effect a pair does not cancel
                 where it involves the flipped knob
               + a configuration's own random effect (sd ``config_sd``, one per distinct config)
               + a seed effect shared by every trial of that seed (sd ``shared_seed_sd``)
               + a trial's own seed noise (sd ``seed_sd``).

Continuous knobs enter through four quantile bins of their range; an inert knob is one more
level. Configurations are drawn as frames (one row per trial, NaN where a knob is inert),
in bulk: uniform (what Optuna's RandomSampler draws) or scrambled Sobol (the engine of
Optuna's QMCSampler, mapped to knob values as it maps them), each knob suggested only where
it applies, by the space's own conditions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from routed_study.search_spaces.base import SearchSpace
from routed_study.study.designs import Side, _constant_meets, _label, discrete_values
from routed_study.trainables.routed_prompt.config import KNOBS

BINS = 4
#: Planted effects (a - b, score points) of the shipped findings' compared claims: most true,
#: F10 false (the opposite holds), F8a and F12b true equalities (no effect).
PLANTED = {"F2": 6.0, "F4": -4.0, "F5": 2.0, "F6": 2.5, "F7": 2.0, "F8a": 0.0, "F8b": 2.5, "F9": 2.5,
           "F10": -2.5, "F11": 2.5, "F12a": 4.0, "F12b": 0.0, "F13": 3.0}


@dataclass(frozen=True)
class Noise:
    seed_sd: float = 1.5
    shared_seed_sd: float = 1.0
    config_sd: float = 1.0
    interaction_sd: float = 3.0
    main_sd: float = 2.5


def correct_verdict(finding: Any, truth: float) -> str:
    """The verdict a study should reach on a claim whose population difference is ``truth``."""
    if finding.expect == "equal":
        return "supported" if abs(truth) < finding.margin else "contradicted"
    sign = 1 if finding.expect == "greater" else -1
    return "supported" if sign * truth > 0 else "contradicted"


def map_unique(values: np.ndarray, function) -> np.ndarray:
    """``function`` of every entry, computed once per distinct value."""
    series = pd.Series(values, dtype=object)
    return series.map({v: function(v) for v in pd.unique(series)}).to_numpy()


def unit_values(space: SearchSpace, name: str, u: np.ndarray) -> np.ndarray:
    """Knob values at unit coordinates: a finite set's values uniformly (floor), a range in its scale."""
    d = space.parameters()[name].distribution
    finite = discrete_values(d)
    if finite is not None:
        index = np.minimum((u * len(finite)).astype(int), len(finite) - 1)
        return np.array(finite + [None], dtype=object)[index]
    if d.log:
        return np.exp(np.log(d.low) + u * (np.log(d.high) - np.log(d.low))).astype(object)
    return (d.low + u * (d.high - d.low)).astype(object)


def draw_frame(space: SearchSpace, unit: np.ndarray) -> pd.DataFrame:
    """Configurations at unit points (rows x searched knobs, in ``space.parameters()`` order), each
    knob kept only where it applies (NaN elsewhere), as define-by-run suggests them."""
    params = space.parameters()
    names = list(params)
    constants = space.constants()
    effective: dict[str, np.ndarray] = {}   # value a condition reads: the default where inert
    columns: dict[str, np.ndarray] = {}
    for param in space.suggestion_order():
        drawn = unit_values(space, param.name, unit[:, names.index(param.name)])
        if param.reads:
            reads = sorted(param.reads)
            looked = [effective.get(k, np.full(len(unit), constants.get(k, KNOBS[k].default), dtype=object))
                      for k in reads]
            keys = np.empty(len(unit), dtype=object)
            keys[:] = list(zip(*looked))
            active = map_unique(keys, lambda key: param.active({**constants, **dict(zip(reads, key))}))
            active = active.astype(bool)
        else:
            active = np.ones(len(unit), dtype=bool)
        effective[param.name] = np.where(active, drawn, KNOBS[param.name].default)
        columns[param.name] = np.where(active, drawn, np.nan)
    return pd.DataFrame({n: columns[n] for n in names})


def random_frame(space: SearchSpace, n: int, rng: np.random.Generator) -> pd.DataFrame:
    return draw_frame(space, rng.random((n, len(space.parameters()))))


def sobol_frame(space: SearchSpace, n: int, seed: int) -> pd.DataFrame:
    from scipy.stats import qmc

    engine = qmc.Sobol(d=len(space.parameters()), scramble=True, seed=seed)
    return draw_frame(space, engine.random(n))


class ClaimMasks:
    """A claim's sides and condition evaluated on frames, by the designs' own :class:`Side`."""

    def __init__(self, finding: Any, space: SearchSpace):
        params, constants = space.parameters(), space.constants()
        self.finding = finding
        d = params[finding.knob].distribution
        self.a, self.b = Side.of(finding.a, d), Side.of(finding.b, d)
        self.within = {k: Side.of(v, params[k].distribution) for k, v in finding.within.items() if k in params}
        assert all(_constant_meets(constants.get(k, KNOBS[k].default), v)
                   for k, v in finding.within.items() if k not in params)

    @staticmethod
    def _mask(column: pd.Series, side: Side) -> np.ndarray:
        present = pd.notna(column).to_numpy()
        out = np.zeros(len(column), dtype=bool)
        values = column.to_numpy(object)[present]
        if side.interval is not None:
            numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
            out[present] = (numeric >= side.interval[0]) & (numeric <= side.interval[1])
        else:
            out[present] = map_unique(values, side.contains).astype(bool)
        return out

    def masks(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        rows = np.ones(len(frame), dtype=bool)
        for knob, side in self.within.items():
            rows &= self._mask(frame[knob], side)
        column = frame[self.finding.knob]
        return rows & self._mask(column, self.a), rows & self._mask(column, self.b)


class PlantedSurface:
    """The simulated score of a space's configurations; see the module docstring."""

    def __init__(self, space: SearchSpace, findings: list, planted: Mapping[str, float] = PLANTED,
                 noise: Noise = Noise(), seed: int = 0):
        rng = np.random.default_rng(seed)
        self.space, self.noise = space, noise
        self.claims = [ClaimMasks(f, space) for f in findings if f.id in planted]
        self.planted = {f.id: planted[f.id] for f in findings if f.id in planted}
        params = space.parameters()
        self.names = list(params)
        compared = {c.finding.knob for c in self.claims}
        self.levels = {n: len(discrete_values(p.distribution) or range(BINS)) + 1 for n, p in params.items()}
        # The last level of every table is "inert": 0, the mean of the active levels, so that a knob
        # turning inert moves no average (a claim's planted effect stays its population difference).
        self.main = {}
        for n, k in self.levels.items():
            effects = np.zeros(k)
            if n not in compared:
                effects[:-1] = rng.normal(0, noise.main_sd, k - 1)
                effects[:-1] -= effects[:-1].mean()
            self.main[n] = effects
        pairs = list(itertools.combinations(self.names, 2))
        tau = noise.interaction_sd / np.sqrt(len(pairs)) if pairs else 0.0
        self.interactions = {}
        for j, k in pairs:
            table = np.zeros((self.levels[j], self.levels[k]))
            active = rng.normal(0, tau, (self.levels[j] - 1, self.levels[k] - 1))
            # Double-centred: an interaction moves no knob's average effect (planted effects stay planted).
            active -= active.mean(axis=0, keepdims=True)
            active -= active.mean(axis=1, keepdims=True)
            table[:-1, :-1] = active
            self.interactions[(j, k)] = table
        # A claim's knob does not interact with the knobs of its condition: its effect within the
        # condition is the planted one, not the planted one plus a random conditional part.
        for claim in self.claims:
            for knob in claim.within:
                self.interactions.pop(tuple(sorted((claim.finding.knob, knob), key=self.names.index)), None)
        self.shared_seed = rng.normal(0, noise.shared_seed_sd, 100_000)

    def level_index(self, frame: pd.DataFrame, name: str) -> np.ndarray:
        d = self.space.parameters()[name].distribution
        column = frame[name]
        present = pd.notna(column).to_numpy()
        finite = discrete_values(d)
        index = np.full(len(frame), self.levels[name] - 1)  # the inert level
        if finite is not None:
            lookup = {_label(v): i for i, v in enumerate(finite)}
            index[present] = map_unique(column.to_numpy(object)[present], lambda v: lookup[_label(v)])
        else:
            values = column.to_numpy(object)[present].astype(float)
            unit = ((np.log(values) - np.log(d.low)) / (np.log(d.high) - np.log(d.low)) if d.log
                    else (values - d.low) / (d.high - d.low))
            index[present] = np.minimum((unit * BINS).astype(int), BINS - 1)
        return index

    def mean(self, frame: pd.DataFrame) -> np.ndarray:
        """The noise-free score of every row."""
        index = {n: self.level_index(frame, n) for n in self.names}
        out = np.full(len(frame), 60.0)
        for n in self.names:
            out += self.main[n][index[n]]
        for (j, k), table in self.interactions.items():
            out += table[index[j], index[k]]
        for claim in self.claims:
            side_a, _ = claim.masks(frame)
            out += np.where(side_a, self.planted[claim.finding.id], 0.0)
        return out

    def score(self, frame: pd.DataFrame, seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy scores: every row a distinct configuration run once with its seed."""
        n = len(frame)
        return (self.mean(frame) + rng.normal(0, self.noise.config_sd, n)
                + self.shared_seed[np.asarray(seeds, dtype=int) % len(self.shared_seed)]
                + rng.normal(0, self.noise.seed_sd, n))

    def truth(self, n: int = 20000, seed: int = 0) -> dict[str, float]:
        """Each claim's population difference E[score | a, within] - E[score | b, within] over the
        space's uniform distribution (Monte Carlo, noise-free)."""
        frame = random_frame(self.space, n, np.random.default_rng(seed))
        y = self.mean(frame)
        out = {}
        for claim in self.claims:
            a, b = claim.masks(frame)
            out[claim.finding.id] = float(y[a].mean() - y[b].mean()) if a.any() and b.any() else float("nan")
        return out


def design_frame(points: list) -> pd.DataFrame:
    """A design's points as a frame of knob values (NaN where inert) plus its design keys and seed."""
    rows = [{**p.params, **p.keys, "seed": p.seed} for p in points]
    return pd.DataFrame(rows)
