"""Search spaces over the knobs of :class:`~trainables.routed_prompt.config.RoutedPromptConfig`.

A space is a list of :class:`Param` (a knob name, an Optuna distribution and an
optional extra ``when`` condition) plus constants. ``define_by_run`` suggests a knob
only where it applies, by the knob table's one declaration of when a knob applies
(``Knob.applies``) and the param's own ``when``, suggesting the knobs a condition reads
first, so no trial is spent on a meaningless combination (``target_share`` without
``add_target``, ``source_order`` under ``wavg``). Because spaces are declared as
data rather than as free code, a study spec can print them, override a knob's
distribution, fix knobs, and check the result statically before any training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import itertools
import math
from graphlib import TopologicalSorter

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from pydantic import Field, model_validator

from routed_study.trainables.errors import InputError, did_you_mean, format_choices
from routed_study.trainables.registry import Registry
from routed_study.trainables.routed_prompt import methods
from routed_study.trainables.routed_prompt.config import (KNOBS, RoutedPromptConfig, check_presets, complete,
                                                          inert_knobs)
from routed_study.trainables.schema import Section, parse


@dataclass(frozen=True)
class Param:
    """One searched knob.

    name: a knob of RoutedPromptConfig.
    distribution: an Optuna distribution over that knob's allowed values.
    when: knob -> allowed values, a condition of the spec's own on top of the knob's
        ``applies``; the knob is suggested only if every listed knob (already chosen in
        this trial, fixed, or at its default) has one of them.
    """

    name: str
    distribution: BaseDistribution
    when: Mapping[str, tuple] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether to suggest this knob, given the values chosen so far (the rest at defaults)."""
        full = complete(values)
        return KNOBS[self.name].applies_in(full) and all(full[k] in allowed for k, allowed in self.when.items())

    @property
    def reads(self) -> frozenset[str]:
        """The knobs whose values decide whether this one is suggested."""
        condition = KNOBS[self.name].applies
        return (condition.reads if condition else frozenset()) | frozenset(self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.name, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)

    def possible_values(self) -> tuple:
        """The choices, or (low, high) of a range; plus the default when the knob may stay unset."""
        d = self.distribution
        values = tuple(d.choices) if isinstance(d, CategoricalDistribution) else (d.low, d.high)
        return values + ((KNOBS[self.name].default,) if self.reads else ())

    def to_spec(self) -> dict[str, Any]:
        """The inline-override form of this parameter (see :func:`param_from_spec`)."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            spec: dict[str, Any] = {"choices": list(d.choices)}
        else:
            spec = {"low": d.low, "high": d.high}
            if d.log:
                spec["log"] = True
            if d.step is not None and not (isinstance(d, IntDistribution) and d.step == 1):
                spec["step"] = d.step
        if self.when:
            spec["when"] = {k: list(v) for k, v in self.when.items()}
        return spec

    def describe(self) -> str:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            text = f"one of {format_choices(d.choices)}"
        else:
            kind = "int" if isinstance(d, IntDistribution) else "float"
            text = f"{kind} in [{d.low:g}, {d.high:g}]"
            if d.log:
                text += ", log scale"
            if d.step is not None and not (isinstance(d, IntDistribution) and d.step == 1):
                text += f", step {d.step:g}"
        conds = [f"{k} in [{format_choices(v)}]" for k, v in self.when.items()]
        if KNOBS[self.name].applies is not None:
            conds.insert(0, KNOBS[self.name].applies.text)
        if conds:
            text += f"   [only when {' and '.join(conds)}]"
        return text


def choice(name: str, *values: Any, when: Mapping[str, tuple] | None = None) -> Param:
    return Param(name, CategoricalDistribution(values), dict(when or {}))


def floats(name: str, low: float, high: float, log: bool = False,
           when: Mapping[str, tuple] | None = None) -> Param:
    return Param(name, FloatDistribution(low, high, log=log), dict(when or {}))


def ints(name: str, low: int, high: int, step: int = 1, when: Mapping[str, tuple] | None = None) -> Param:
    return Param(name, IntDistribution(low, high, step=step), dict(when or {}))


class SearchSpace(ABC):
    """A named search space; subclasses declare their parameters (and constants).

    Register a subclass with :func:`register`; its docstring says what it is for
    and is what ``routed-study validate`` prints.
    """

    name: ClassVar[str]

    @abstractmethod
    def declare(self) -> list[Param]:
        """The searched knobs, in suggestion order (a condition may only look back)."""

    def constants(self) -> dict[str, Any]:
        """Knobs this space fixes for every trial."""
        return {}

    def parameters(self) -> dict[str, Param]:
        return {p.name: p for p in self.declare()}

    def suggestion_order(self) -> list[Param]:
        """The params with every knob a condition reads before the knob it guards."""
        # Computed once per space (a space's params never change): designs draw thousands of trials.
        if "_suggestion_order" not in self.__dict__:
            params = self.parameters()
            graph = TopologicalSorter({name: [k for k in p.reads if k in params] for name, p in params.items()})
            self._suggestion_order = [params[name] for name in graph.static_order()]
        return list(self._suggestion_order)

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """Suggest every knob that applies on ``trial``; return the constants (Ray merges them)."""
        constants = self.constants()
        values = dict(constants)
        for param in self.suggestion_order():
            if param.active(values):
                values[param.name] = param.suggest(trial)
        return dict(constants) or None

    def grid(self) -> dict[str, list] | None:
        """Every combination as Optuna's GridSampler wants it, if the space is a plain grid.

        A grid exists when every parameter is categorical; ranges have no finite product.
        """
        params = self.declare()
        if not params or any(p.when or not isinstance(p.distribution, CategoricalDistribution)
                             for p in params):
            return None
        return {p.name: list(p.distribution.choices) for p in params}

    def grid_points(self) -> list[dict[str, Any]] | None:
        """The distinct models of a plain grid: what define-by-run suggests at each grid point.

        A grid point whose knob does not apply there (``source_order`` under ``wavg``) is the
        same model as the point that differs only in that knob; it is listed once.
        """
        grid = self.grid()
        if grid is None:
            return None
        order = self.suggestion_order()
        points: dict[tuple, dict[str, Any]] = {}
        for combo in itertools.product(*grid.values()):
            chosen = dict(zip(grid, combo))
            values = dict(self.constants())
            point = {}
            for param in order:
                if param.active(values):
                    values[param.name] = point[param.name] = chosen[param.name]
            points.setdefault(tuple(sorted(point.items(), key=lambda kv: kv[0])), point)
        return list(points.values())

    def grid_size(self) -> int | None:
        """Runs a grid search needs: its distinct models (None without a grid)."""
        points = self.grid_points()
        return None if points is None else len(points)

    def grid_sampler(self, seed: int | None = None):
        """An Optuna GridSampler over :meth:`grid_points`, for ask-and-tell use (Ray's OptunaSearch)."""
        return _distinct_grid_sampler()(self.grid(), self.grid_points(), seed=seed)

    def inert_report(self, samples: int = 64) -> list[str]:
        """Lines for ``validate``: knobs of this space that are inert (never or sometimes), from
        the knob table's ``applies``, and the duplicate runs a grid search is spared."""
        lines = []
        configs = self.sample_configs(samples)
        for name, value in self.constants().items():
            inert = sum(name in inert_knobs(c) for c in configs)
            if inert:
                share = "in every trial" if inert == len(configs) else f"in {inert} of {len(configs)} sampled trials"
                lines.append(f"  {name} = {format_choices([value])} (fixed) is inert {share}: it applies only "
                             f"when {KNOBS[name].applies.text}")
        for name, param in self.parameters().items():
            suggested = sum(name in c for c in configs)
            if suggested == 0:
                lines.append(f"  {name} is searched but inert in every sampled trial: it applies only when "
                             f"{KNOBS[name].applies.text if KNOBS[name].applies else 'its when holds'}")
        grid = self.grid()
        if grid is not None:
            product = math.prod(len(v) for v in grid.values())
            lines.append(f"  grid: {product} points, {self.grid_size()} distinct models "
                         f"({product - self.grid_size()} duplicate runs skipped)")
        return (["inert knobs:"] + lines) if lines else []

    def conditional_knobs(self) -> dict[str, str]:
        """Searched knobs that some configuration of this space does not suggest -> their condition.

        Exact over the values the condition reads (choices, range ends, the default of a read
        knob that is itself conditional), as :meth:`check` does for fixed knobs.
        """
        constants, found = self.constants(), {}
        for name, param in self.parameters().items():
            readers = sorted(param.reads)
            for combo in itertools.product(*(self._possible(k) for k in readers)):
                if not param.active({**constants, **dict(zip(readers, combo))}):
                    applies = KNOBS[name].applies
                    conds = ([applies.text] if applies is not None else []) + [
                        f"{k} in [{format_choices(v)}]" for k, v in param.when.items()]
                    found[name] = " and ".join(conds)
                    break
        return found

    def check_setup(self, setup: Any, where: str = "space") -> None:
        """Checks that need the study's setup: the longest prompt the space can compose plus
        max_length fits the backbone, and num_selected fits task-owned sources (one per task)."""
        from routed_study.trainables.limits import check_fits

        possible = self._possible
        # A trial's data knobs must fit the study's tasks; a task_set trains on fewer of them.
        trial_tasks = [len(setup.for_trial({"train_per_task": n, "task_set": name}, where=f"key '{where}'").tasks)
                       for n, name in itertools.product(possible("train_per_task"), possible("task_set"))]
        joins = [m for m in possible("compose_method") if m in methods.joining_compose_methods()]
        counts = [n for n in possible("num_source_prompts")]
        if "tasks" in possible("sources"):
            counts.append(len(setup.tasks))
        extras = sum(int(max(possible(k))) for k in ("private_prompts", "attend_target", "attend_input"))
        k = max(max(counts) + extras if v == -1 else v for v in possible("num_selected"))
        length = max(possible("num_prompt_tokens"))
        text = (f"num_selected {k} x num_prompt_tokens {length} under compose_method {joins[0]}" if joins and k > 1
                else f"num_prompt_tokens {length}")
        check_fits(k * length if joins else length, text, setup, f"key '{where}'")
        if "tasks" in possible("sources"):
            # A 'when' of the sources param may keep task-owned sources to some num_selected values.
            when = self.parameters()["sources"].when if "sources" in self.parameters() else {}
            ks = [k for k in possible("num_selected") if k in when.get("num_selected", (k,))]
            few = min(trial_tasks) + sum(int(min(possible(x))) for x in ("private_prompts", "attend_target",
                                                                            "attend_input"))
            if ks and max(ks) > few:   # ks empty: no fixed num_selected lets sources be tasks
                raise InputError(f"key '{where}': knob 'num_selected' can be {max(ks)} but "
                                 f"with sources: tasks some trials have only {few} router candidates "
                                 f"({min(trial_tasks)} tasks); fix sources: anonymous or lower num_selected")

    def sample_configs(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` knob dicts drawn at random through define-by-run (checks, previews)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        configs = []
        for _ in range(n):
            trial = study.ask()
            constants = self.define_by_run(trial) or {}
            configs.append({**trial.params, **constants})
            study.tell(trial, 0.0)
        return configs

    def check(self, where: str) -> None:
        """Reject a space that can produce a config RoutedPromptConfig refuses."""
        constants = self.constants()
        for name in [n for n in constants if KNOBS[n].strict]:
            condition = KNOBS[name].required
            readers = sorted(condition.reads)
            points = [dict(zip(readers, combo)) for combo in
                      itertools.product(*(self._possible(k) for k in readers))]
            bad = [p for p in points if not condition(complete({**constants, **p}))]
            if bad:
                raise InputError(
                    f"{where}: knob '{name}' is set while "
                    + " and ".join(f"'{k}' can be {format_choices(dict.fromkeys(p[k] for p in bad))}"
                                   for k in readers if k not in constants)
                    + f"; {name} only has a meaning when {condition.text}: fix those knobs or "
                    f"search {name} instead of fixing it")
        check_presets(self._possible, constants, where)
        min_candidates = (min(self._possible("num_source_prompts"))
                          + sum(int(min(self._possible(k))) for k in
                                ("private_prompts", "attend_target", "attend_input")))
        if min_candidates == 0:
            raise InputError(f"{where}: some trials would have no router candidates: keep "
                             f"num_source_prompts >= 1 or fix one of private_prompts, attend_target, "
                             f"attend_input to true")
        top_k = max(self._possible("num_selected"))
        if top_k > min_candidates:
            raise InputError(f"{where}: knob 'num_selected' can be {top_k} but some trials have only "
                             f"{min_candidates} router candidates; keep num_selected in -1 (all) or "
                             f"1..{min_candidates}, or raise num_source_prompts")
        if max(self._possible("anneal_min")) > min(self._possible("anneal_max")):
            raise InputError(f"{where}: knob 'anneal_min' can exceed 'anneal_max'")
        for config in self.sample_configs(16):
            RoutedPromptConfig.from_dict(config, where=where)

    def _possible(self, knob: str) -> tuple:
        constants = self.constants()
        if knob in constants:
            return (constants[knob],)
        params = self.parameters()
        return params[knob].possible_values() if knob in params else (KNOBS[knob].default,)

    def customise(self, override: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None,
                  where: str = "space") -> "SearchSpace":
        """A copy with knobs re-distributed or added (``override``) and knobs fixed (``fixed``).

        An override keeps the replaced knob's condition unless it gives its own ``when``.
        The result is checked with :meth:`check`.
        """
        params = self.parameters()
        constants = self.constants()
        for name, spec in (override or {}).items():
            param = param_from_spec(name, spec, f"{where}.override.{name}")
            if name in params and "when" not in spec:
                param = Param(name, param.distribution, params[name].when)
            params[name] = param
            constants.pop(name, None)
        for name, value in (fixed or {}).items():
            constants[name] = _knob(name, f"{where}.fixed").coerce(value, f"key '{where}.fixed.{name}'")
            params.pop(name, None)
        custom = CustomSpace(self, list(params.values()), constants)
        custom.check(f"key '{where}'")
        return custom

    def to_spec(self) -> dict[str, Any]:
        """The spec form ``{name, override, fixed}`` that rebuilds exactly this space."""
        return {"name": self.name, "override": {n: p.to_spec() for n, p in self.parameters().items()},
                "fixed": self.constants()}

    def describe(self) -> list[str]:
        lines = [f"  {n}: {p.describe()}" for n, p in self.parameters().items()]
        lines += [f"  {n} = {format_choices([v])} (fixed)" for n, v in self.constants().items()]
        return lines


class CustomSpace(SearchSpace):
    """A registered space after a spec's overrides and fixed knobs."""

    def __init__(self, base: SearchSpace, params: list[Param], constants: dict[str, Any]):
        self.base = base
        self.name = base.name
        self.__doc__ = base.__doc__
        self._params = params
        self._constants = constants

    def declare(self) -> list[Param]:
        return list(self._params)

    def constants(self) -> dict[str, Any]:
        return dict(self._constants)


def _knob(name: str, where: str):
    if name not in KNOBS:
        raise InputError(f"key '{where}.{name}': unknown knob{did_you_mean(name, KNOBS)}; "
                         f"known knobs: {', '.join(KNOBS)}")
    return KNOBS[name]


class Override(Section):
    """One knob's distribution in a spec's ``space.override``: a range or choices, each
    optionally searched only ``when`` other knobs have given values."""

    low: Any = Field(None, description="Lowest value of a range (the knob's own type: int or float).")
    high: Any = Field(None, description="Highest value of a range.")
    log: bool = Field(False, description="Sample the range on a log scale.")
    step: float | None = Field(None, gt=0, description="Grid step of the range.")
    choices: list[Any] | None = Field(None, min_length=1, description="The values to choose from.")
    when: dict[str, Any] = Field(default_factory=dict, description="knob -> value or [values].")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "Override":
        given = [k for k in ("low", "high", "log", "step") if k in self.model_fields_set]
        if self.choices is not None and given:
            raise ValueError(f"'choices' cannot be combined with {', '.join(given)}")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined")
        return self


def param_from_spec(name: str, spec: Any, where: str) -> Param:
    """Parse one inline override: ``{low, high[, log][, step]}``, ``{choices: [...]}`` or a bare list.

    Any form may add ``when: {knob: value or [values]}``. The kind of range (int or
    float) is the knob's own; every bound and choice is checked against KNOBS.
    """
    knob = _knob(name, where.rsplit(".", 1)[0])
    at = f"key '{where}'"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise InputError(f"{at}: expected {{low, high}}, {{choices: [...]}} or a list, got {spec!r} "
                         f"(constants go under 'fixed')")
    override = parse(Override, spec, at=where)
    when = _parse_when(override.when, f"{where}.when")
    if override.choices is not None:
        coerced = [knob.coerce(v, at) for v in override.choices]
        if len(set(map(repr, coerced))) != len(coerced):
            raise InputError(f"{at}: 'choices' lists a value twice: {override.choices!r}")
        return Param(name, CategoricalDistribution(coerced), when)
    if knob.kind not in ("int", "float"):
        raise InputError(f"{at}: knob '{name}' is {knob.kind}; give {{choices: [...]}} "
                         f"from {knob.allowed()}")
    missing = [k for k in ("low", "high") if getattr(override, k) is None]
    if missing:
        raise InputError(f"{at}: missing {' and '.join(missing)} (or give choices)")
    low, high = (knob.coerce(getattr(override, k), at) for k in ("low", "high"))
    if not all(isinstance(v, (int, float)) for v in (low, high)):
        raise InputError(f"{at}: a range needs numbers for low and high, got {low!r} and {high!r}; "
                         f"list other values under 'choices'")
    log, step = override.log, override.step
    if low > high:
        raise InputError(f"{at}: low {low:g} is above high {high:g}")
    if log and low <= 0:
        raise InputError(f"{at}: a log-scale range needs low > 0, got {low:g}")
    if step is not None:
        if knob.kind == "int" and not float(step).is_integer():
            raise InputError(f"{at}: knob '{name}' is an integer; 'step' must be an integer, got {step!r}")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9:
            raise InputError(f"{at}: high - low ({high - low:g}) is not a multiple of step {step:g}")
    if knob.kind == "int":
        dist: BaseDistribution = IntDistribution(low, high, log=log, step=int(step or 1))
    else:
        dist = FloatDistribution(low, high, log=log, step=step)
    return Param(name, dist, when)


def _parse_when(when: Any, where: str) -> dict[str, tuple]:
    if not isinstance(when, Mapping):
        raise InputError(f"key '{where}': expected a mapping knob -> value(s), got {when!r}")
    parsed = {}
    for name, values in when.items():
        knob = _knob(name, where)
        values = values if isinstance(values, list) else [values]
        parsed[name] = tuple(knob.coerce(v, f"key '{where}.{name}'") for v in values)
    return parsed


def _distinct_grid_sampler():
    class DistinctGridSampler(optuna.samplers.GridSampler):
        """Optuna's GridSampler over the distinct models of a grid, for ask-and-tell use.

        GridSampler enumerates the full product; here its list of points is replaced by the
        distinct ones (:meth:`SearchSpace.grid_points`; a knob a point does not suggest keeps a
        placeholder GridSampler never reads), and the rest of GridSampler (visited-point
        bookkeeping, seeded shuffle) is used as is. GridSampler's ``study.stop()`` after the
        last point raises outside ``study.optimize`` (the tell of the last trial would fail):
        Ray already stops after ``trials.num`` trials (at most the grid size).
        """

        def __init__(self, grid, points, seed=None):
            super().__init__(grid, seed=seed)
            names = sorted(grid)   # GridSampler's own order of the values in a point
            self._all_grids = [tuple(p.get(n, grid[n][0]) for n in names) for p in points]
            self._rng.rng.shuffle(self._all_grids)
            self._n_min_trials = len(self._all_grids)

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return DistinctGridSampler


SPACES = Registry("search space", listing="allowed values")


def register(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: make a space available by its ``name``."""
    return SPACES.register(cls.name, cls)


def space_names() -> list[str]:
    return list(SPACES)


def get_space(name: str, where: str = "space") -> SearchSpace:
    return SPACES.get(name, where)()
