"""The typed configuration of the routed prompt model: every knob, its values.

The field names are the public knob names of ``routed_prompt_model.md`` (section
6); search spaces, results tables and reports use them verbatim. Each field
carries its allowed values in ``metadata`` so that one table (:data:`KNOBS`)
drives validation here, search-space checks in ``search_spaces/`` and encoding in
``analysis/``.

``RoutedPromptConfig.from_dict`` is the only way user input becomes a config: an
unknown knob, a value outside its allowed set or range, or a contradictory
combination raises :class:`~trainables.errors.InputError` naming the knob and the
allowed values. Nothing falls back silently to a default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from routed_study.trainables.errors import InputError, did_you_mean, format_choices
from routed_study.trainables.routed_prompt import methods
from routed_study.trainables.routed_prompt.conditions import Condition, derived, is_none_of, is_one_of


@dataclass(frozen=True)
class Knob:
    """What one knob accepts. ``kind`` is one of bool, int, float, choice."""

    name: str
    kind: str
    default: Any
    help: str
    # The allowed values of a choice knob: a tuple, or a function of a method registry
    # (methods.py), so that a registered method, a plugin's included, is a valid value.
    choice_source: tuple | Callable[[], tuple] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    nullable: bool = False
    # Extra literal values a numeric knob accepts besides its range (-1 = all).
    specials: tuple = ()
    # When the knob means something in a trial (None: always). The one declaration that
    # validation, search spaces and analysis read (section 7: inert knobs are declared).
    applies: Condition | None = None
    # Setting the knob where it does not apply is an error (not only inert): True, or the
    # narrower Condition outside which setting it is an error (target_share without a target),
    # while where it only fails ``applies`` it is merely inert (target_share under target_mix add).
    strict: bool | Condition = False

    @property
    def required(self) -> Condition | None:
        """Where setting this knob is allowed at all (None: anywhere)."""
        if isinstance(self.strict, Condition):
            return self.strict
        return self.applies if self.strict else None

    @property
    def choices(self) -> tuple | None:
        source = self.choice_source
        return tuple(source()) if callable(source) else source

    def applies_in(self, values: Mapping[str, Any]) -> bool:
        """Whether this knob means something given complete knob values (see :func:`complete`)."""
        return self.applies is None or self.applies(values)

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.kind == "choice":
            return format_choices(self.choices)
        if self.kind == "bool":
            return "true, false"
        parts = []
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            parts.append(f"{self.kind} in [{lo}, {hi}]")
        else:
            parts.append(self.kind)
        parts += [format_choices([s]) for s in self.specials]
        if self.nullable:
            parts.append("null (default)")
        return " or ".join(parts)

    def coerce(self, value: Any, where: str) -> Any:
        """Return ``value`` converted to this knob's type, or raise InputError."""
        prefix = f"{where}: knob '{self.name}'"
        if value is None:
            if self.nullable:
                return None
            raise InputError(f"{prefix} must not be null; allowed: {self.allowed()}")
        if self.kind == "choice":
            for choice in self.choices:
                if isinstance(value, bool) != isinstance(choice, bool):
                    continue  # True == 1 in Python; a boolean is never an integer choice
                # YAML may give -1 as int or "-1"; match on the text form too.
                if value == choice or (isinstance(choice, int) and not isinstance(value, bool)
                                       and str(value) == str(choice)):
                    return choice
            raise InputError(f"{prefix} got {value!r}; allowed values: {self.allowed()}")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise InputError(f"{prefix} must be true or false, got {value!r}")
        if value in self.specials:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{prefix} must be a number, got {value!r}; allowed: {self.allowed()}")
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise InputError(f"{prefix} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"{prefix} must be finite, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise InputError(f"{prefix} got {value!r}; allowed: {self.allowed()}")
        return value


def _candidates(values: Mapping[str, Any]) -> int | None:
    """C seen by one task: sources + its private + its target + its input; None when it depends on
    the study's tasks (``sources: tasks``: one source per task)."""
    if values["sources"] == "tasks":
        return None
    return (values["num_source_prompts"] + int(values["private_prompts"]) + int(values["attend_target"])
            + int(values["attend_input"]))


_POOL = ("sources", "num_source_prompts", "private_prompts", "attend_target", "attend_input")

# When the composed prompt reaches the backbone at all: a convex mix with target_share = 1 is
# plain prompt tuning, whatever the pool and the router do.
COMPOSED = derived(lambda v: not (v["add_target"] and v["target_mix"] == "convex"
                                  and _same_number(v["target_share"], 1)),
                   ("add_target", "target_mix", "target_share"), "target_share is not 1")
# When router scores weigh the prompts: an unweighted composition (concat) uses unit weights.
ROUTED = COMPOSED & derived(lambda v: v["compose_method"] not in methods.unweighted_compose_methods(),
                            ("compose_method",), "compose_method weighs the prompts (not concat)")
# When the temperature schedule changes a score: const scores are all ones.
TEMPERED = ROUTED & derived(lambda v: methods.ROUTE_METHODS.get(v["route_method"]).tempered,
                            ("route_method",), "route_method uses the temperature (not const)")
# When top-k keeps fewer candidates than exist: only then do before/after differ. With task-owned
# sources C depends on the study's tasks, so a k >= 1 is taken to select fewer.
SELECTS_FEWER = derived(lambda v: v["num_selected"] != -1 and (_candidates(v) is None
                                                              or v["num_selected"] < _candidates(v)),
                        ("num_selected", *_POOL), "num_selected is below the number of candidates")
# When more than one prompt is concatenated, so their order changes the prompt.
ORDERS_SEVERAL = derived(lambda v: v["num_selected"] > 1 or (v["num_selected"] == -1 and (
                             _candidates(v) is None or _candidates(v) > 1)),
                         ("num_selected", *_POOL), "more than one candidate is selected")
JOINS = derived(lambda v: v["compose_method"] in methods.joining_compose_methods(), ("compose_method",),
                "compose_method joins the prompts (cat, concat)")
CONVEX = is_one_of("add_target", True) & is_one_of("target_mix", "convex")


#: The sharing patterns of F14 as named presets: ``sharing: <preset>`` fixes these knobs (a trial or a
#: space that sets one of them to another value is an error; a space does not sample them).
SHARING_PRESETS: dict[str, dict[str, Any]] = {
    "custom": {},   # no preset: the knobs as set
    # One prompt shared by all tasks: a single anonymous source, weight 1, nothing task-specific.
    "shared": {"sources": "anonymous", "num_source_prompts": 1, "private_prompts": False, "attend_target": False,
               "attend_input": False, "add_target": False, "route_method": "const", "compose_method": "wavg",
               "num_selected": -1},
    # Partial sharing: the shared sources plus one private prompt per task, routed.
    "partial": {"private_prompts": True, "add_target": False},
    # No sharing: plain prompt tuning of every task on its own (the F13 baseline).
    "separate": {"add_target": True, "target_mix": "convex", "target_share": 1.0},
}

#: Which of the study's tasks a trial trains on (F16): every task, the tasks of the largest group
#: that shares one label space, or one task per label space (both of the same size; TrialSetup.for_trial).
TASK_SETS = ("all", "shared_labels", "distinct_labels")


def _not_preset(name: str) -> Condition:
    """The knob is free: the trial's sharing preset does not fix it."""
    return is_one_of("sharing", *[preset for preset, fixed in SHARING_PRESETS.items() if name not in fixed])


def check_presets(possible: Callable[[str], tuple], fixed: Mapping[str, Any], where: str) -> None:
    """A space that can draw a sharing preset must not fix a knob of that preset to another value;
    ``possible(knob)``: the values the space can give a knob."""
    for preset in possible("sharing"):
        for name, value in SHARING_PRESETS[preset].items():
            if name in fixed and fixed[name] != value:
                raise InputError(f"{where}: knob '{name}' is fixed to {fixed[name]!r} but sharing can be "
                                 f"'{preset}', which fixes it to {value!r}; fix sharing or search "
                                 f"sharing without {preset}")


def _same_number(value: Any, number: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == number


def knob(default: Any, help: str, kind: str, **spec: Any) -> Any:
    """A dataclass field that documents and constrains one knob (``choices``: a tuple or a
    function returning the registered names)."""
    if "choices" in spec:
        spec["choice_source"] = spec.pop("choices")
    return field(default=default, metadata={"knob": dict(kind=kind, help=help, **spec)})


@dataclass(frozen=True)
class RoutedPromptConfig:
    """Every knob of one trial of the routed prompt model (spec sections 2-4, 6, 7)."""

    # --- optimisation (section 4) ---
    learning_rate: float = knob(0.05, "AdamW rate of prompts and prompt encoders.",
                                "float", low=1e-7, high=10.0, log=True)
    router_learning_rate: float = knob(0.05, "AdamW rate of the router (its logits, or the attention "
                                       "router's projections; its own group).",
                                       "float", low=1e-7, high=10.0, log=True, applies=TEMPERED)
    epochs: int = knob(3, "Passes over the training data.", "int", low=1, high=1000)
    batch_size: int = knob(16, "Examples per batch; each batch holds one task.", "int", low=1, high=4096)
    warmup_ratio: float = knob(0.1, "Share of all steps spent in linear warm-up before linear decay.",
                               "float", low=0.0, high=1.0)
    weight_decay: float = knob(0.0, "AdamW weight decay of both groups.", "float", low=0.0, high=1.0)
    task_sampling: str = knob("size", "How batches of different tasks are mixed: in proportion to "
                              "the tasks' sizes, or uniformly.", "choice", choices=("size", "uniform"))
    seed: int = knob(0, "Seed of initialisation, batching and routing noise.", "int", low=0, high=2**31 - 1)
    train_per_task: int | None = knob(None, "Training examples per task in this trial (F3, F15); null: the study's "
                                      "data.train_per_task. Tasks listed in data.train_sizes keep their own.",
                                      "int", low=1, high=10**7, nullable=True)
    task_set: str = knob("all", "Which of the study's tasks this trial trains on (F16): all; shared_labels: the "
                         "largest group of tasks with one label space; distinct_labels: one task per label "
                         "space (as many tasks as shared_labels).", "choice", choices=TASK_SETS)
    sharing: str = knob("custom", "Sharing pattern preset (F14) that fixes the pool and target knobs: shared (one "
                        "prompt for all tasks), partial (sources plus private prompts), separate (prompt tuning "
                        "per task), custom (no preset).", "choice", choices=tuple(SHARING_PRESETS))
    backbone_dropout: bool = knob(True, "The frozen backbone's own dropout during training (prompt tuning "
                                  "and ATTEMPT train with it); always off at evaluation.", "bool")

    # --- prompts (section 1, 7) ---
    num_prompt_tokens: int = knob(10, "L: tokens per prompt.", "int", low=1, high=512)
    sources: str = knob("anonymous", "anonymous: a pool of num_source_prompts shared prompts; tasks: every "
                        "task of the study owns one source prompt (router columns are tasks).", "choice",
                        choices=("anonymous", "tasks"), applies=COMPOSED)
    num_source_prompts: int = knob(4, "Shared source prompts visible to every task.", "int", low=0, high=256,
                                   applies=COMPOSED & is_one_of("sources", "anonymous"))
    source_init: str = knob("random", "Task-owned sources: random, or pretrained (each task's prompt first "
                            "prompt-tuned alone, cached per node).", "choice", choices=("random", "pretrained"),
                            applies=COMPOSED & is_one_of("sources", "tasks"))
    freeze_sources: bool = knob(False, "Keep pre-trained task-owned sources fixed (true) or tune them on.",
                                "bool", applies=COMPOSED & is_one_of("sources", "tasks")
                                & is_one_of("source_init", "pretrained"))
    private_prompts: bool = knob(False, "Add one private prompt per task, visible only to it.", "bool",
                                 applies=COMPOSED)
    attend_target: bool = knob(False, "Add the task's own target prompt (pooled to L tokens) as a candidate.",
                               "bool", applies=COMPOSED)
    attend_input: bool = knob(False, "Add the input itself (pooled to L tokens) as a candidate.", "bool",
                              applies=COMPOSED)
    prompt_encoder: str = knob("emb", "How a raw LxD parameter becomes a prompt (registered encoders: "
                               "identity, Linear-ReLU-Linear, bi-LSTM then MLP, ...).", "choice",
                               choices=methods.PROMPT_ENCODERS.names)
    prompt_encoder_residual: bool = knob(True, "mlp/lstm encoders add their input back (residual).", "bool",
                                         applies=is_none_of("prompt_encoder", "emb"))
    init_from_words: bool = knob(False, "Initialise raw prompts from embeddings of real vocabulary tokens "
                                 "instead of random normal.", "bool")
    prompt_position: str = knob("pre", "Insert the prompt before or after the input.", "choice",
                                choices=("pre", "post"))

    # --- router (section 2, 7) ---
    route_method: str = knob("rb", "Training scores (registered route methods): relaxed Bernoulli sample, "
                             "sigmoid, softmax, all ones, or ATTEMPT's input-dependent attention.",
                             "choice", choices=methods.train_route_methods, applies=ROUTED)
    eval_route_method: str = knob("same", "Evaluation scores: same (the training method's deterministic "
                                  "counterpart: rb -> sigmoid) or an explicit method.",
                                  "choice", choices=methods.eval_route_methods, applies=ROUTED)
    apply_softmax_to: str = knob("after", "'before': softmax over all candidates before selection; "
                                 "otherwise how the k selected weights are normalised.", "choice",
                                 choices=("before", "after", "norm", "normafter", "nothing"),
                                 applies=ROUTED & SELECTS_FEWER)
    num_selected: int = knob(-1, "k: candidates kept by top-k (ties: lowest index first); -1 keeps all.",
                             "int", low=1, high=4096, specials=(-1,), applies=COMPOSED)
    source_order: str = knob("desc", "Order of the k selected (matters only for cat/concat): strongest "
                             "first, weakest first, or a random permutation each step.", "choice",
                             choices=methods.SOURCE_ORDERS.names, applies=COMPOSED & JOINS & ORDERS_SEVERAL)
    compose_method: str = knob("wavg", "wavg: weighted average (L tokens); cat: weighted concatenation "
                               "(k*L tokens); concat: cat with unit weights.", "choice",
                               choices=methods.COMPOSE_METHODS.names, applies=COMPOSED)
    add_target: bool = knob(False, "Mix the task's target prompt into the composed prompt.", "bool")
    target_mix: str = knob("convex", "convex: P <- (1-g)P + g*target; add: P <- target + P (ATTEMPT).",
                           "choice", choices=("convex", "add"), applies=is_one_of("add_target", True))
    target_share: float | str | None = knob(None, "g in P <- (1-g)P + g*target: a number in [0, 1] (1 = plain "
                                            "prompt tuning) or 'learned'. Only with add_target and a convex "
                                            "mix; defaults to 0.5 there.", "float", low=0.0, high=1.0,
                                            specials=("learned",), nullable=True, applies=CONVEX,
                                            strict=is_one_of("add_target", True))
    target_share_temperature: float = knob(1.0, "Temperature of the relaxed-Bernoulli learned target gate.",
                                           "float", low=1e-4, high=100.0, log=True,
                                           applies=CONVEX & is_one_of("target_share", "learned"))

    # --- temperature schedule (section 3) ---
    temperature: float = knob(1.0, "tau_0, the router temperature at step 0.", "float",
                              low=1e-4, high=100.0, log=True, applies=TEMPERED)
    anneal_dir: int = knob(0, "Direction of annealing: -1 cools, +1 heats, 0 keeps tau constant.",
                           "choice", choices=(-1, 0, 1), applies=TEMPERED)
    anneal_rate: float | None = knob(None, "r in tau_0*exp(dir*r*step); null picks r so tau changes by "
                                     "a factor e over the whole run.", "float", low=0.0, high=10.0,
                                     nullable=True, applies=TEMPERED & is_none_of("anneal_dir", 0))
    anneal_min: float = knob(1e-3, "Lower clip of tau.", "float", low=1e-6, high=1e4, applies=TEMPERED)
    anneal_max: float = knob(100.0, "Upper clip of tau.", "float", low=1e-6, high=1e4, applies=TEMPERED)

    # --- output side ---
    head: str = knob("verbalizer", "Encoder backbones only: frozen verbalizer (default) or an explicit "
                     "trainable linear head.", "choice", choices=("verbalizer", "linear"))
    verbalizer_scale: float = knob(0.05, "Fixed scale dividing the cosine between prompt+input and label "
                                   "embeddings.", "float", low=1e-4, high=10.0,
                                   applies=is_one_of("head", "verbalizer"))

    # ------------------------------------------------------------------ API
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config",
                  ignore: Sequence[str] = ()) -> "RoutedPromptConfig":
        """Validate ``values`` (knob name -> value) and build a config.

        ``where`` names the source (a file, a spec key) in error messages.
        Keys listed in ``ignore`` are skipped (e.g. bookkeeping keys of a trial).
        """
        kwargs = {}
        for name, value in values.items():
            if name in ignore:
                continue
            if name not in KNOBS:
                raise InputError(f"{where}: unknown knob '{name}'{did_you_mean(name, KNOBS)}; "
                                 f"known knobs: {', '.join(sorted(KNOBS))}")
            kwargs[name] = KNOBS[name].coerce(value, where)
        preset = kwargs.get("sharing", KNOBS["sharing"].default)
        for name, value in SHARING_PRESETS[preset].items():
            if name in kwargs and kwargs[name] != value:
                raise InputError(f"{where}: knob '{name}' is {kwargs[name]!r} but sharing '{preset}' fixes it "
                                 f"to {value!r}; drop one of the two")
            kwargs[name] = value
        config = cls(**kwargs)
        config.check(where)
        return config

    def check(self, where: str = "config") -> None:
        """Reject contradictory combinations of otherwise valid values."""
        values = self.to_dict()
        for name, value in SHARING_PRESETS[self.sharing].items():
            if values[name] != value:
                raise InputError(f"{where}: knob '{name}' is {values[name]!r} but sharing '{self.sharing}' fixes "
                                 f"it to {value!r}")
        for name, spec in KNOBS.items():
            if spec.required and values[name] != spec.default and not spec.required(values):
                raise InputError(f"{where}: knob '{name}' is set to {values[name]!r} but it only has a "
                                 f"meaning when {spec.required.text}")
        if self.anneal_min > self.anneal_max:
            raise InputError(f"{where}: knob 'anneal_min' ({self.anneal_min:g}) exceeds 'anneal_max' "
                             f"({self.anneal_max:g})")
        self.check_candidates(None, where)

    def check_candidates(self, num_tasks: int | None, where: str = "config") -> None:
        """The router has candidates and num_selected fits them (task-owned sources: needs ``num_tasks``)."""
        count = self.candidates_per_task(num_tasks)
        if count is None:
            return
        if count == 0:
            raise InputError(f"{where}: the router has no candidates: set 'num_source_prompts' >= 1, or "
                             f"enable private_prompts, attend_target or attend_input")
        if self.num_selected != -1 and self.num_selected > count:
            raise InputError(f"{where}: knob 'num_selected' is {self.num_selected} but a task has only "
                             f"{count} candidates; allowed: -1 (all) or 1..{count}")

    def candidates_per_task(self, num_tasks: int | None) -> int | None:
        """C seen by one task: sources (num_source_prompts, or one per task with ``sources: tasks``)
        + its private + its target + its input; None when that needs the unknown number of tasks."""
        if self.sources == "tasks" and num_tasks is None:
            return None
        sources = num_tasks if self.sources == "tasks" else self.num_source_prompts
        return sources + int(self.private_prompts) + int(self.attend_target) + int(self.attend_input)

    @property
    def num_candidates_per_task(self) -> int | None:
        """C seen by one task with anonymous sources (None with task-owned ones)."""
        return self.candidates_per_task(None)

    def prompt_tokens(self, num_tasks: int) -> int:
        """Tokens of the composed prompt P (k*L when the composition joins, L otherwise)."""
        if not COMPOSED(self.to_dict()):
            return self.num_prompt_tokens
        count = self.candidates_per_task(num_tasks)
        k = count if self.num_selected == -1 else self.num_selected
        return k * self.num_prompt_tokens if self.compose_method in methods.joining_compose_methods() \
            else self.num_prompt_tokens

    @property
    def effective_target_share(self) -> float | str | None:
        """target_share with its add_target default applied (0.5), None without add_target."""
        if not self.add_target:
            return None
        return 0.5 if self.target_share is None else self.target_share

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def complete(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every knob that is missing at its default and the sharing preset's knobs at the
    preset's values (what a condition reads)."""
    full = {**{name: spec.default for name, spec in KNOBS.items()}, **values}
    return {**full, **SHARING_PRESETS.get(full["sharing"], {})}


def inert_knobs(values: Mapping[str, Any]) -> dict[str, str]:
    """The knobs that mean nothing in a trial with these values -> the condition they miss.

    ``values`` may be partial (missing knobs are at their defaults). Used by validation (to say
    which knobs of a space are inert), by search spaces (not to sample them) and by analysis
    (to mark them not applicable).
    """
    full = complete(values)
    return {name: spec.applies.text for name, spec in KNOBS.items() if not spec.applies_in(full)}


def with_knob(values: Mapping[str, Any], name: str, value: Any) -> dict[str, Any]:
    """``values`` with knob ``name`` set to ``value`` and the knobs that then mean nothing dropped, as
    define-by-run would leave them out (a matched pair flips one knob: flipping ``sharing`` to a preset
    drops the knobs the preset fixes, so the pair's trial is a valid config)."""
    flipped = {**values, name: value}
    inert = inert_knobs(flipped)
    return {k: v for k, v in flipped.items() if k == name or k not in inert}


def knob_values(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of a trial config: without the bookkeeping keys that start with ``__``
    (Ray's ``__trial_index__`` of a repeat, the study's ``__optuna_trial_number__``)."""
    return {k: v for k, v in trial_config.items() if not k.startswith("__")}


def _knob_table() -> dict[str, Knob]:
    preset_knobs = {name for preset in SHARING_PRESETS.values() for name in preset}
    table = {}
    for f in dataclasses.fields(RoutedPromptConfig):
        spec = dict(f.metadata["knob"])
        if f.name in preset_knobs:   # a knob a preset fixes is not sampled (nor compared) under it
            applies = spec.get("applies")
            spec["applies"] = _not_preset(f.name) if applies is None else applies & _not_preset(f.name)
        table[f.name] = Knob(name=f.name, default=f.default, **spec)
    return table


#: Every knob by public name, in declaration order.
KNOBS: dict[str, Knob] = _knob_table()
