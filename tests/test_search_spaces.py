"""Search spaces: every registered space yields only valid configs; overrides are checked."""

from __future__ import annotations

import itertools

import optuna
import pytest

from routed_study.search_spaces import SearchSpace, get_space, param_from_spec, space_names
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import KNOBS, RoutedPromptConfig, complete, inert_knobs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_registry_has_the_contract_spaces():
    assert {"core", "findings", "original_grid"} <= set(space_names())
    with pytest.raises(InputError, match="did you mean 'findings'"):
        get_space("findngs")


@pytest.mark.parametrize("name", space_names())
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_every_sampled_trial_is_a_valid_config(name, sampler):
    space = get_space(name)
    assert (type(space).__doc__ or "").strip(), "a space says what it is for"
    space.check(name)  # the static checks accept every shipped space
    sampler = (optuna.samplers.TPESampler(seed=1, n_startup_trials=5) if sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=1))
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen = {}
    for i in range(120):   # the deepest conditional knob (freeze_sources) applies in ~1 of 20 trials
        trial = study.ask()
        constants = space.define_by_run(trial) or {}
        values = {**trial.params, **constants}
        config = RoutedPromptConfig.from_dict(values, where=f"{name} trial {i}")
        study.tell(trial, float(config.learning_rate))
        for knob, value in values.items():
            seen.setdefault(knob, set()).add(repr(value))
    assert set(seen) == set(space.parameters()) | set(space.constants())
    for knob in space.parameters():
        assert knob in KNOBS
        assert len(seen[knob]) > 1, f"{knob} never varied in 120 trials"


def test_findings_conditions_are_honoured():
    space = get_space("findings")
    for values in space.sample_configs(80, seed=3):
        # target_mix add adds the target with weight 1: no share to choose.
        full = complete(values)  # a sharing preset fixes add_target; separate fixes target_share to 1
        assert ("target_share" in values) == (full["add_target"] and full["target_mix"] == "convex"
                                              and full["sharing"] != "separate")
        if "compose_method" in values:
            assert ("source_order" in values) <= (values["compose_method"] in ("cat", "concat"))
        # Exactly the knobs that apply are sampled: the knob table's one declaration decides, and
        # the space's own 'when' on top (task-owned sources only with num_selected all or 1).
        inert = set(inert_knobs(values))
        assert set(values) - {"sources"} == set(space.parameters()) - inert - {"sources"}
        assert ("sources" in values) == ("sources" not in inert and complete(values)["num_selected"] in (-1, 1))


def model_of(values) -> tuple:
    """What a trial trains: its complete knob values without the inert ones."""
    full = complete(values)
    inert = inert_knobs(full)
    return tuple(sorted((k, repr(v)) for k, v in full.items() if k not in inert))


def test_original_grid_runs_only_its_distinct_models():
    space = get_space("original_grid")
    grid = space.grid()
    assert set(grid) == set(space.parameters())
    size = 1
    for values in grid.values():
        size *= len(values)
    assert size == 48
    # The full product trains 36 models: source_order means nothing under wavg (12 duplicates).
    product = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    assert len({model_of({**p, **space.constants()}) for p in product}) == 36
    assert space.grid_size() == len(space.grid_points()) == 36
    study = optuna.create_study(sampler=space.grid_sampler(seed=0))
    models = set()
    for _ in range(space.grid_size()):   # as Ray's OptunaSearch drives it: ask, then tell
        trial = study.ask()
        constants = space.define_by_run(trial)
        RoutedPromptConfig.from_dict({**trial.params, **constants})
        models.add(model_of({**trial.params, **constants}))
        study.tell(trial, 0.0)
    assert len(models) == 36 == len(study.trials)


def test_inert_report_names_fixed_inert_knobs_and_the_grid_saving():
    space = get_space("original_grid")
    assert "  grid: 48 points, 36 distinct models (12 duplicate runs skipped)" in space.inert_report()
    custom = get_space("core").customise({}, {"apply_softmax_to": "before", "route_method": "const"})
    report = custom.inert_report()
    assert report[0] == "inert knobs:"
    assert any(line.startswith("  apply_softmax_to = 'before' (fixed) is inert in every trial: it applies only "
                               "when") and "num_selected is below the number of candidates" in line
               for line in report)
    assert any(line.startswith("  temperature is searched but inert in every sampled trial") for line in report)
    assert get_space("findings").inert_report() == []


@pytest.mark.parametrize("name", ["core", "findings"])
def test_spaces_with_ranges_have_no_grid(name):
    assert get_space(name).grid() is None


def test_override_replaces_extends_and_keeps_condition():
    space = get_space("findings").customise(
        override={"learning_rate": {"low": 0.01, "high": 0.1, "log": True},
                  "target_share": {"choices": [0.5, "learned"]},
                  "router_learning_rate": [0.01, 0.1],
                  "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"route_method": "rb"}}},
        fixed={"prompt_encoder": "mlp", "batch_size": 8})
    params = space.parameters()
    assert params["learning_rate"].distribution.low == 0.01
    assert params["target_share"].reads == {"add_target", "target_mix", "sharing"}  # the knob table's, kept by the override
    assert params["router_learning_rate"].distribution.choices == (0.01, 0.1)
    assert params["warmup_ratio"].when == {"route_method": ("rb",)}
    assert "prompt_encoder" not in params
    assert space.constants() == {"prompt_encoder": "mlp", "batch_size": 8}
    for values in space.sample_configs(40):
        assert values["prompt_encoder"] == "mlp"
        assert ("warmup_ratio" in values) == (complete(values)["route_method"] == "rb")


def test_int_override_uses_step_and_round_trips():
    space = get_space("core").customise({"epochs": {"low": 1, "high": 9, "step": 2}})
    assert {v["epochs"] for v in space.sample_configs(40)} <= {1, 3, 5, 7, 9}
    rebuilt = get_space("core").customise(space.to_spec()["override"], space.to_spec()["fixed"])
    assert rebuilt.to_spec() == space.to_spec()


@pytest.mark.parametrize("name, spec, message", [
    ("learning_rte", {"low": 0.1, "high": 1}, "unknown knob.*did you mean 'learning_rate'"),
    ("learning_rate", {"low": 0.1, "high": 20.0}, "allowed"),
    ("warmup_ratio", {"low": 0.0, "high": 0.1, "log": True}, "needs low > 0"),
    ("learning_rate", {"low": 0.2, "high": 0.1}, "above high"),
    ("learning_rate", {"high": 0.1}, "missing low"),
    ("learning_rate", 0.1, "constants go under 'fixed'"),
    ("learning_rate", {"low": 0.01, "high": 0.1, "logg": True}, "did you mean 'log'"),
    ("epochs", {"low": 1, "high": 2.5}, "integer"),
    ("epochs", {"low": 1, "high": 6, "step": 2}, "not a multiple of step"),
    ("compose_method", {"choices": ["wavg", "mean"]}, "allowed values: 'wavg', 'cat', 'concat'"),
    ("compose_method", {"low": 0, "high": 1}, "give {choices"),
    ("compose_method", {"choices": []}, "non-empty list"),
    ("compose_method", {"choices": ["cat", "cat"]}, "twice"),
    ("add_target", ["yes"], "must be true or false"),
    ("source_order", {"choices": ["asc"], "when": {"compose": "cat"}}, "unknown knob.*compose_method"),
])
def test_bad_override_names_the_key(name, spec, message):
    with pytest.raises(InputError, match=message) as info:
        param_from_spec(name, spec, f"space.override.{name}")
    assert "space.override" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override, fixed, message", [
    ({}, {"target_share": 0.5}, "'target_share' is set while 'add_target' can be false"),
    ({}, {"num_source_prompts": 1}, "'num_selected' can be 2 but some trials have only 1"),
    ({"num_source_prompts": {"low": 0, "high": 2}}, {"num_selected": -1}, "no router candidates"),
    ({}, {"anneal_min": 50.0, "anneal_max": 10.0}, "'anneal_min' can exceed 'anneal_max'"),
    ({}, {"epochs": 0}, "space.fixed.epochs"),
    ({}, {"epoch": 3}, "did you mean 'epochs'"),
])
def test_space_check_rejects_combinations_the_config_refuses(override, fixed, message):
    with pytest.raises(InputError, match=message):
        get_space("findings").customise(override, fixed)


def test_fixing_add_target_makes_target_share_legal():
    space = get_space("findings").customise({}, {"add_target": True, "target_share": "learned", "sharing": "custom"})
    assert all(v["target_share"] == "learned" for v in space.sample_configs(5))


def test_strict_knobs_follow_the_config_rule():
    # A strict knob set where it does not apply is refused by the config and by a space alike.
    strict = [name for name, spec in KNOBS.items() if spec.strict]
    assert strict == ["target_share"]
    with pytest.raises(InputError, match="only has a meaning when add_target is true"):
        RoutedPromptConfig.from_dict({"target_share": 0.5, "add_target": False})
    with pytest.raises(InputError, match="'target_share' is set while 'add_target' can be false"):
        get_space("findings").customise({}, {"target_share": 0.5})


def test_an_empty_when_cannot_lift_the_knob_tables_condition():
    space = get_space("findings").customise({"target_share": {"choices": [0.5], "when": {}}})
    for values in space.sample_configs(40):
        full = complete(values)  # a sharing preset fixes add_target; separate fixes target_share to 1
        assert ("target_share" in values) == (full["add_target"] and full["target_mix"] == "convex"
                                              and full["sharing"] != "separate")


def test_custom_space_is_a_search_space_with_the_base_docstring():
    space = get_space("core").customise({}, {"epochs": 2})
    assert isinstance(space, SearchSpace) and space.name == "core"
    assert space.__doc__ == type(get_space("core")).__doc__
    assert any("epochs = 2 (fixed)" in line for line in space.describe())
