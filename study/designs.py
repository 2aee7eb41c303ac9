"""Search algorithms: which trials a study runs (``search.algorithm`` of a spec).

Two kinds, one registry (:func:`register`, :func:`get_algorithm`):

- *sampled*: an Optuna sampler proposes each trial as the study goes (``tpe``, ``random``,
  ``grid``, ``qmc``); ``trials.num`` says how many.
- *designed*: every trial is fixed before the first runs (``pairs``, ``screening``); the study
  enqueues them in ``optuna.db`` (``study/runner.py``) and ``trials.num`` is their count.

A designed trial carries the design's bookkeeping keys (``trainables/results.py``,
``DESIGN_KEYS``): its design, point, base, the claim or knob it flips, its side. Tracking
writes them as MLflow tags and the analysis (``analysis/designs.py``) reads them, so that a
pair is analysed as a pair. Every base (pairs) or trajectory (screening) has its own seeds,
shared by all its trials: ``seed`` = the space's seed + base x ``trials.repeats``, plus the
repeat index as in any study (seed-matched differences, seeds nested in bases).

Why designs: a findings study estimates effects, it does not look for the best trial. TPE
concentrates on good regions and confounds the knobs; random sampling wastes most trials on
configurations a conditional claim cannot use and leaves the other knobs' effects in every
comparison. A matched pair differs in one knob only, so its difference is free of the other
knobs' effects and of the configuration's own random effect; a base shared by several claims
pays its trial once.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from routed_study.search_spaces.base import Param, SearchSpace
from routed_study.trainables.errors import InputError, format_choices
from routed_study.trainables.registry import Registry
from routed_study.trainables.results import (DESIGN_BASE_KEY, DESIGN_DELTA_KEY, DESIGN_FLIP_KEY, DESIGN_KEY,
                                             DESIGN_POINT_KEY, DESIGN_SIDE_KEY)
from routed_study.trainables.routed_prompt.config import KNOBS

SEED_KNOB = "seed"
#: Draws per wanted base before a pairs design gives up on a claim's condition.
DRAWS_PER_BASE = 200


@dataclass(frozen=True)
class DesignPoint:
    """One trial of a design: the knobs define-by-run suggests, the design keys, the base's seed."""

    params: dict[str, Any]
    keys: dict[str, Any]
    seed: int | None = None


class SearchAlgorithm(ABC):
    """One value of ``search.algorithm``. ``reads``: the other ``search.*`` keys it uses."""

    name: ClassVar[str]
    help: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()
    #: Needs scheduler none: an early stop would cut one trial of a comparison and bias it.
    needs_full_trials: ClassVar[bool] = False

    def __init__(self, search: Any, space: SearchSpace, repeats: int = 1):
        self.search, self.space, self.repeats = search, space, repeats
        self.seed = search.seed

    @abstractmethod
    def sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of the study's searcher."""

    def points(self) -> list[DesignPoint] | None:
        """The designed trials, or None for a sampled study."""
        return None

    @property
    def design_name(self) -> str | None:
        """The value of DESIGN_KEY on every trial (None: a sampled study without design keys)."""
        return None

    def describe(self) -> list[str]:
        return []


ALGORITHMS = Registry("search algorithm", listing="allowed values")


def register(cls: type[SearchAlgorithm]) -> type[SearchAlgorithm]:
    """Class decorator: make an algorithm available as a ``search.algorithm`` value."""
    return ALGORITHMS.register(cls.name, cls)


def algorithm_names() -> tuple[str, ...]:
    return ALGORITHMS.names()


def get_algorithm(name: str) -> type[SearchAlgorithm]:
    return ALGORITHMS.get(name, "key 'search.algorithm'")


# ------------------------------------------------------------------ sampled
@register
class TPE(SearchAlgorithm):
    name, help = "tpe", "Optuna's TPE: optimisation (finds good configurations; confounds the knobs)"

    def sampler(self):
        return optuna.samplers.TPESampler(seed=self.seed)


@register
class RandomSearch(SearchAlgorithm):
    name, help = "random", "independent uniform draws"

    def sampler(self):
        return optuna.samplers.RandomSampler(seed=self.seed)


@register
class Grid(SearchAlgorithm):
    name, help = "grid", "every distinct model of a space of unconditional choices"

    def sampler(self):
        return self.space.grid_sampler(seed=self.seed)


class FullSpaceQMCSampler(optuna.samplers.QMCSampler):
    """Optuna's QMCSampler over every searched knob from the first trial on.

    QMCSampler takes its dimensions from the first finished trial, so knobs inert there
    would be drawn at random ever after; here the space's own distributions are the
    dimensions, and a conditional knob takes its Sobol coordinate wherever it applies.
    """

    def __init__(self, distributions: Mapping[str, BaseDistribution], seed: int):
        super().__init__(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)
        self._distributions = dict(distributions)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)


@register
class QMC(SearchAlgorithm):
    name, help = "qmc", ("a scrambled Sobol sample (space-filling): every knob balanced and nearly "
                         "uncorrelated with the others; for importance studies")

    def sampler(self):
        return FullSpaceQMCSampler({n: p.distribution for n, p in self.space.parameters().items()}, self.seed)

    @property
    def design_name(self) -> str:
        return self.name


class DesignSampler(optuna.samplers.BaseSampler):
    """The sampler of a designed study: every value is fixed by the enqueued design point, so a
    request for one is a bug (a point that misses a knob its configuration suggests)."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise RuntimeError(f"designed trial {trial.number} asked for knob '{param_name}', which its design "
                           f"point does not fix")


class Designed(SearchAlgorithm):
    """A design: its points are computed once from the spec (deterministic in ``search.seed``)."""

    needs_full_trials = True

    def sampler(self):
        return DesignSampler()

    @property
    def design_name(self) -> str:
        return self.name

    def base_seed(self, base: int) -> int:
        """The first seed of a base: bases never share a seed, repeats of one base add 0..r-1."""
        first = self.space.constants().get(SEED_KNOB, KNOBS[SEED_KNOB].default)
        return int(first) + base * self.repeats

    def check_point(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` exactly as define-by-run suggests them (a missing knob is a bug here)."""
        trial = optuna.trial.FixedTrial(params)
        self.space.define_by_run(trial)
        return dict(trial.params)


# ------------------------------------------------------------------ sides of a claim
def _scale(d: BaseDistribution):
    """(to unit, from unit) maps of a numeric range in its sampling scale (log or linear)."""
    lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
    if d.log:
        return (lambda v: (math.log(v) - lo) / (hi - lo) if hi > lo else 0.0,
                lambda u: math.exp(lo + u * (hi - lo)))
    return (lambda v: (v - lo) / (hi - lo) if hi > lo else 0.0, lambda u: lo + u * (hi - lo))


def discrete_values(d: BaseDistribution) -> list | None:
    """Every value of a finite distribution in order; None for a continuous range."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    if d.step is not None:
        return [d.low + i * d.step for i in range(int(round((d.high - d.low) / d.step)) + 1)]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label(value: Any) -> str:
    """How a knob value is written in a findings file (true, 1, mlp)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Side:
    """The values of one searched knob that a side of a claim (a, b or a within entry) names:
    a finite set, or an interval of a continuous range (drawn in the range's own scale)."""

    values: list | None = None
    interval: tuple[float, float] | None = None
    log: bool = False

    @classmethod
    def of(cls, spec: Any, distribution: BaseDistribution) -> "Side":
        finite = discrete_values(distribution)
        if finite is not None:
            return cls(values=_finite_side(spec, finite))
        low, high = distribution.low, distribution.high
        if isinstance(spec, dict) and "quantile" in spec:
            _, from_unit = _scale(distribution)
            q0, q1 = spec["quantile"]
            return cls(interval=(from_unit(q0), from_unit(q1)), log=distribution.log)
        if isinstance(spec, dict):
            lo, hi = max(low, spec.get("min", -math.inf)), min(high, spec.get("max", math.inf))
            return cls(interval=(lo, hi), log=distribution.log) if lo <= hi else cls(values=[])
        options = spec if isinstance(spec, list) else [spec]
        return cls(values=[float(v) for v in options if _is_number(v) and low <= v <= high])

    @property
    def empty(self) -> bool:
        return self.interval is None and not self.values

    def contains(self, value: Any) -> bool:
        if self.interval is not None:
            return _is_number(value) and self.interval[0] <= value <= self.interval[1]
        return _label(value) in {_label(v) for v in self.values}

    def overlaps(self, other: "Side") -> bool:
        if self.interval is not None and other.interval is not None:
            return max(self.interval[0], other.interval[0]) < min(self.interval[1], other.interval[1])
        finite, rest = (self, other) if self.interval is None else (other, self)
        return any(rest.contains(v) for v in finite.values)

    def draw(self, rng: np.random.Generator) -> Any:
        if self.interval is None:
            return self.values[int(rng.integers(len(self.values)))]
        lo, hi = self.interval
        if self.log:
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return float(rng.uniform(lo, hi))

    def describe(self) -> str:
        if self.interval is not None:
            return f"[{self.interval[0]:.4g}, {self.interval[1]:.4g}]"
        return format_choices(self.values)


def _finite_side(spec: Any, finite: list) -> list:
    if isinstance(spec, dict) and "quantile" in spec:
        numeric = sorted(v for v in finite if _is_number(v))
        q0, q1 = spec["quantile"]
        # A value belongs to the quantile band its share of the (uniform) distribution centres in.
        mids = [(i + 0.5) / len(numeric) for i in range(len(numeric))]
        return [v for v, m in zip(numeric, mids) if q0 <= m and (m < q1 or q1 >= 1)]
    if isinstance(spec, dict):
        return [v for v in finite if _is_number(v) and spec.get("min", -math.inf) <= v <= spec.get("max", math.inf)]
    options = {_label(v) for v in (spec if isinstance(spec, list) else [spec])}
    return [v for v in finite if _label(v) in options]


def _constant_meets(value: Any, spec: Any) -> bool:
    """Whether a knob the space does not search (fixed, or at its default) meets a within entry."""
    if isinstance(spec, dict) and "quantile" in spec:
        return True  # a single value is every quantile of itself
    if isinstance(spec, dict):
        return _is_number(value) and spec.get("min", -math.inf) <= value <= spec.get("max", math.inf)
    return _label(value) in {_label(v) for v in (spec if isinstance(spec, list) else [spec])}


class DrawTrial:
    """A define-by-run trial that returns ``forced`` values where given and uniform draws (as
    Optuna's RandomSampler makes them) elsewhere. A design draws thousands of configurations;
    an Optuna ask and tell per draw costs ten times the draw."""

    def __init__(self, forced: Mapping[str, Any], rng: np.random.Generator):
        self.forced, self.rng, self.params = forced, rng, {}

    def _take(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self.forced:
            value = self.forced[name]
        else:
            finite = discrete_values(distribution)
            value = (finite[int(self.rng.integers(len(finite)))] if finite is not None
                     else _scale(distribution)[1](float(self.rng.random())))
        self.params[name] = value
        return value

    def suggest_categorical(self, name, choices):
        return self._take(name, CategoricalDistribution(choices))

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._take(name, IntDistribution(low, high, step=step, log=log))

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._take(name, FloatDistribution(low, high, step=step, log=log))


# ------------------------------------------------------------------ pairs
@dataclass
class _Claim:
    finding: Any
    a: Side
    b: Side
    within: dict[str, Side]   # searched knobs only; unsearched ones were checked once
    key: frozenset            # the within condition as written, to compare conditions
    found: int = 0

    def meets(self, values: Mapping[str, Any]) -> bool:
        return all(k in values and side.contains(values[k]) for k, side in self.within.items())

    def side_of(self, values: Mapping[str, Any]) -> str | None:
        if self.finding.knob not in values:
            return None  # the knob is inert in this configuration
        value = values[self.finding.knob]
        return "a" if self.a.contains(value) else "b" if self.b.contains(value) else None


@register
class Pairs(Designed):
    name, help = "pairs", ("claim-driven matched pairs: each compared claim of search.findings runs on "
                           "search.bases base configurations (within its condition), once with its a and "
                           "once with its b value, same seeds; a base serves every claim whose condition "
                           "it meets")
    reads = ("findings", "claims", "bases")

    def __init__(self, search: Any, space: SearchSpace, repeats: int = 1):
        super().__init__(search, space, repeats)
        self.left_out: dict[str, str] = {}   # claim id -> why this space cannot design it
        self.claims = self._claims()
        self._points: list[DesignPoint] | None = None

    def _claims(self) -> list[_Claim]:
        from routed_study.analysis.findings import DEFAULT_FILE, load_findings

        path = self.search.findings or DEFAULT_FILE
        try:
            compared = [f for f in load_findings(path) if f.kind == "compare"]
        except InputError as exc:
            raise InputError(f"key 'search.findings': {exc}") from None
        ids = [f.id for f in compared]
        if self.search.claims is not None:
            unknown = [c for c in self.search.claims if c not in ids]
            if unknown:
                raise InputError(f"key 'search.claims': {', '.join(unknown)} not a compared claim of {path}; "
                                 f"allowed values: {format_choices(ids)}")
            compared = [f for f in compared if f.id in self.search.claims]
        if not compared:
            raise InputError(f"key 'search.findings': {path} has no compared claim (kind compare) to design")
        if self.search.claims is not None:
            return [self._claim(f, path) for f in compared]
        # Every claim of the file: those this space cannot express (a knob it does not search, a
        # condition it never meets) are left out and said so by validate; a claim named in
        # search.claims must be designable.
        claims, self.left_out = [], {}
        for f in compared:
            try:
                claims.append(self._claim(f, path))
            except InputError as exc:
                self.left_out[f.id] = str(exc).removeprefix("key 'search.findings': ")
        if not claims:
            raise InputError(f"key 'search.findings': no compared claim can be designed on space "
                             f"'{self.space.name}': {'; '.join(self.left_out.values())}")
        return claims

    def _claim(self, f: Any, path: Any) -> _Claim:
        params, constants = self.space.parameters(), self.space.constants()
        at = f"key 'search.findings': claim '{f.id}' of {path}"
        leave_out = "or leave the claim out with search.claims"
        if f.knob not in params:
            raise InputError(f"{at}: knob '{f.knob}' is not searched by space '{self.space.name}'; search it "
                             f"(space.override) {leave_out}")
        if f.knob in f.within:
            raise InputError(f"{at}: knob '{f.knob}' is both compared and in 'within'")
        distribution = params[f.knob].distribution
        sides = {}
        for name in ("a", "b"):
            spec = getattr(f, name)
            sides[name] = Side.of(spec, distribution)
            if sides[name].empty:
                raise InputError(f"{at}: key '{name}' ({_label(spec) if not isinstance(spec, dict) else spec}) "
                                 f"lies outside space '{self.space.name}', where knob '{f.knob}' takes "
                                 f"{params[f.knob].describe()}")
        if sides["a"].overlaps(sides["b"]):
            raise InputError(f"{at}: sides a ({sides['a'].describe()}) and b ({sides['b'].describe()}) share "
                             f"values in space '{self.space.name}'; a pair needs two different values")
        within = {}
        for knob, spec in f.within.items():
            if knob not in KNOBS:
                raise InputError(f"{at}: key 'within.{knob}': unknown knob")
            if knob in params:
                within[knob] = Side.of(spec, params[knob].distribution)
                if within[knob].empty:
                    raise InputError(f"{at}: no configuration of space '{self.space.name}' meets "
                                     f"within {knob} = {spec}: the space's {knob} takes "
                                     f"{params[knob].describe()}")
            else:
                value = constants.get(knob, KNOBS[knob].default)
                if not _constant_meets(value, spec):
                    how = "fixes" if knob in constants else "leaves at its default"
                    raise InputError(f"{at}: no configuration of space '{self.space.name}' meets within "
                                     f"{knob} = {spec}: the space {how} {knob} = {_label(value)}")
        key = frozenset((k, json.dumps(v, sort_keys=True, default=str)) for k, v in f.within.items())
        return _Claim(f, sides["a"], sides["b"], within, key)

    def points(self) -> list[DesignPoint]:
        if self._points is None:
            self._points = self._build()
        return self._points

    def _build(self) -> list[DesignPoint]:
        rng = np.random.default_rng(self.seed)

        def complete(forced: Mapping[str, Any]) -> dict[str, Any]:
            """A configuration of the space with ``forced`` values where they apply, the rest drawn."""
            trial = DrawTrial(forced, rng)
            self.space.define_by_run(trial)
            return trial.params

        wanted = self.search.bases
        points: list[DesignPoint] = []
        base = 0
        # Broad conditions first: their bases also serve the narrower claims they happen to meet.
        conditions = sorted({c.key for c in self.claims}, key=lambda k: (len(k), sorted(k)))
        for condition in conditions:
            own = [c for c in self.claims if c.key == condition]
            served_by = [c for c in self.claims if condition <= c.key]
            sides = own[0].within
            attempts = 0
            while any(c.found < wanted for c in own):
                attempts += 1
                if attempts > DRAWS_PER_BASE * wanted:
                    self._give_up(own, attempts - 1)
                values = complete({k: s.draw(rng) for k, s in sides.items()})
                candidates = [c for c in served_by if c.found < wanted and c.meets(values)]
                # A claim's knob outside both of its sides is moved onto one (a or b at random).
                moved = {c.finding.knob: (c.a if rng.random() < 0.5 else c.b).draw(rng) for c in candidates
                         if c.finding.knob in values and c.side_of(values) is None}
                if moved:
                    values = complete({**values, **moved})
                flips = []
                for claim in candidates:
                    side = claim.side_of(values)
                    if side is None or not claim.meets(values):
                        continue
                    other, other_side = (claim.b, "b") if side == "a" else (claim.a, "a")
                    flipped = complete({**values, claim.finding.knob: other.draw(rng)})
                    if claim.side_of(flipped) == other_side and claim.meets(flipped):
                        flips.append((claim, other_side, flipped))
                if not flips:
                    continue
                seed = self.base_seed(base)
                keys = {DESIGN_KEY: self.name, DESIGN_BASE_KEY: base}
                points.append(DesignPoint(self.check_point(values), {**keys, DESIGN_FLIP_KEY: "",
                                                                     DESIGN_SIDE_KEY: "base"}, seed))
                for claim, side, flipped in flips:
                    claim.found += 1
                    points.append(DesignPoint(self.check_point(flipped), {
                        **keys, DESIGN_FLIP_KEY: claim.finding.id, DESIGN_SIDE_KEY: side}, seed))
                base += 1
        return [DesignPoint(p.params, {**p.keys, DESIGN_POINT_KEY: i}, p.seed) for i, p in enumerate(points)]

    def _give_up(self, claims: list[_Claim], attempts: int) -> None:
        claim = min(claims, key=lambda c: c.found)
        f = claim.finding
        applies = KNOBS[f.knob].applies
        why = f" ({f.knob} applies only when {applies.text})" if applies is not None else ""
        within = ", ".join(f"{k} = {v}" for k, v in f.within.items()) or "no condition"
        raise InputError(f"key 'search.findings': claim '{f.id}': {claim.found} of {self.search.bases} bases "
                         f"found in {attempts} configurations drawn from space '{self.space.name}' under "
                         f"{within} with knob '{f.knob}' applying on both sides{why}; widen the space or "
                         f"leave the claim out with search.claims")

    def describe(self) -> list[str]:
        points = self.points()
        bases = len({p.keys[DESIGN_BASE_KEY] for p in points})
        lines = [f"  pairs: {len(self.claims)} claim(s), {bases} base configuration(s), {len(points)} "
                 f"configurations ({len(points) - bases} flips); unshared pairs would need "
                 f"{2 * sum(c.found for c in self.claims)}"]
        for c in self.claims:
            f = c.finding
            within = ", ".join(f"{k} in {s.describe()}" for k, s in c.within.items())
            lines.append(f"    {f.id}: {f.knob} a {c.a.describe()} vs b {c.b.describe()}"
                         + (f" within {within}" if within else "") + f", {c.found} bases")
        lines += [f"    left out: {why}" for why in self.left_out.values()]
        return lines


# ------------------------------------------------------------------ screening
@register
class Screening(Designed):
    name, help = "screening", ("Morris elementary effects (SALib): search.trajectories one-at-a-time "
                               "trajectories over every searched knob on a grid of search.levels levels")
    reads = ("trajectories", "levels")

    def __init__(self, search: Any, space: SearchSpace, repeats: int = 1):
        super().__init__(search, space, repeats)
        if search.levels % 2:
            raise InputError(f"key 'search.levels': Morris screening needs an even number of levels, "
                             f"got {search.levels}")
        params = space.parameters()
        if not params:
            raise InputError(f"key 'search.algorithm': screening needs searched knobs; space "
                             f"'{space.name}' fixes every knob")
        inert = space.conditional_knobs()
        if inert:
            name, condition = next(iter(inert.items()))
            raise InputError(f"key 'search.algorithm': screening moves one knob at a time and cannot flip "
                             f"knob '{name}' of space '{space.name}', inert in some configurations (it applies "
                             f"only when {condition}); fix the knobs its condition reads or fix {name} itself "
                             f"(space.fixed); conditional: {', '.join(inert)}")
        self.params: dict[str, Param] = params
        self._points: list[DesignPoint] | None = None

    def problem(self) -> dict[str, Any]:
        """SALib's problem: one unit interval per searched knob (mapped by :meth:`value`)."""
        return {"num_vars": len(self.params), "names": list(self.params), "bounds": [[0.0, 1.0]] * len(self.params)}

    @staticmethod
    def value(param: Param, u: float) -> Any:
        """The knob value at unit coordinate ``u``: the nearest of a finite set's ordered values, or
        the range's quantile ``u`` in its own scale."""
        d = param.distribution
        finite = discrete_values(d)
        if finite is not None:
            return finite[int(round(u * (len(finite) - 1)))]
        return float(min(max(_scale(d)[1](u), d.low), d.high))

    def points(self) -> list[DesignPoint]:
        if self._points is None:
            from SALib.sample import morris

            unit = morris.sample(self.problem(), N=self.search.trajectories, num_levels=self.search.levels,
                                 seed=self.seed)
            names, size = list(self.params), len(self.params) + 1
            points = []
            for row, u in enumerate(unit):
                trajectory, step = divmod(row, size)
                values = self.check_point({n: self.value(self.params[n], x) for n, x in zip(names, u)})
                keys = {DESIGN_KEY: self.name, DESIGN_POINT_KEY: row, DESIGN_BASE_KEY: trajectory,
                        DESIGN_FLIP_KEY: "", DESIGN_DELTA_KEY: 0.0}
                if step:
                    moved = int(np.argmax(np.abs(u - unit[row - 1])))
                    keys.update({DESIGN_FLIP_KEY: names[moved], DESIGN_DELTA_KEY: float(u[moved] - unit[row - 1][moved])})
                points.append(DesignPoint(values, keys, self.base_seed(trajectory)))
            self._points = points
        return self._points

    def describe(self) -> list[str]:
        return [f"  screening: {self.search.trajectories} trajectories x ({len(self.params)} knobs + 1) = "
                f"{len(self.points())} configurations on {self.search.levels} levels"]
