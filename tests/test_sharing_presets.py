"""F14's sharing patterns as presets of the knob ``sharing``: what each fixes, the model it builds,
the one-line conflict errors, and how a search space draws them (the fixed knobs not sampled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from routed_study.search_spaces import get_space
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt import RoutedPrompt, RoutedPromptConfig
from routed_study.trainables.routed_prompt.config import KNOBS, SHARING_PRESETS, complete, inert_knobs, with_knob

T, D, L = 3, 8, 4


def model(**knobs) -> RoutedPrompt:
    config = RoutedPromptConfig.from_dict({"num_prompt_tokens": L, **knobs})
    torch.manual_seed(0)
    return RoutedPrompt(config, num_tasks=T, hidden_size=D, total_steps=10).eval()


def prompts(module: RoutedPrompt) -> list[torch.Tensor]:
    embeds, mask = torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        return [module(t, embeds, mask, step=0) for t in range(T)]


def test_the_preset_table_names_knobs_and_values_the_knob_table_accepts():
    assert tuple(SHARING_PRESETS) == KNOBS["sharing"].choices and KNOBS["sharing"].default == "custom"
    for preset, fixed in SHARING_PRESETS.items():
        for name, value in fixed.items():
            assert name != "sharing" and KNOBS[name].coerce(value, preset) == value
        config = RoutedPromptConfig.from_dict({"sharing": preset})
        assert all(getattr(config, k) == v for k, v in fixed.items())


def test_shared_gives_every_task_the_same_single_prompt():
    module = model(sharing="shared", learning_rate=0.01)
    first, *others = prompts(module)
    assert all(torch.equal(first, other) for other in others)
    assert module.private is None and module.sources.shape[0] == 1


def test_partial_routes_over_shared_sources_and_a_private_prompt_per_task():
    module = model(sharing="partial")
    assert module.private is not None and module.private.shape[0] == T and module.sources.shape[0] == 4
    first, second, _ = prompts(module)
    assert not torch.allclose(first, second)   # each task adds its own private prompt


def test_separate_is_plain_prompt_tuning_per_task():
    module = model(sharing="separate")
    out = prompts(module)
    for t in range(T):
        target = module.encoder(module.target[t:t + 1])
        assert torch.allclose(out[t][0], target[0])   # the task's own prompt, nothing routed in
    # Nothing of the composition means anything: the routing knobs are inert.
    assert {"route_method", "compose_method", "num_selected", "temperature"} <= set(inert_knobs({"sharing": "separate"}))


@pytest.mark.parametrize("preset, name, other", [
    ("shared", "num_source_prompts", 3), ("shared", "route_method", "rb"), ("partial", "private_prompts", False),
    ("separate", "target_share", 0.5)])
def test_a_conflicting_underlying_knob_is_a_one_line_error(preset, name, other):
    value = SHARING_PRESETS[preset][name]
    with pytest.raises(InputError) as info:
        RoutedPromptConfig.from_dict({"sharing": preset, name: other}, where="trial config")
    assert str(info.value) == (f"trial config: knob '{name}' is {other!r} but sharing '{preset}' fixes it to "
                               f"{value!r}; drop one of the two")
    # The same value stated twice is no conflict.
    assert getattr(RoutedPromptConfig.from_dict({"sharing": preset, name: value}), name) == value


def test_a_config_built_by_hand_against_its_preset_is_refused():
    with pytest.raises(InputError, match="knob 'private_prompts' is False but sharing 'partial' fixes it to True"):
        RoutedPromptConfig(sharing="partial").check()


def test_the_knobs_a_preset_fixes_are_inert_under_it_and_free_without():
    for preset, fixed in SHARING_PRESETS.items():
        inert = inert_knobs({"sharing": preset})
        assert set(fixed) <= set(inert)
        assert complete({"sharing": preset}) | fixed == complete({"sharing": preset})
    assert not {"private_prompts", "num_source_prompts", "add_target"} & set(inert_knobs({}))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tiny_backbones import save_tiny_bert, write_tiny_glue
    from routed_study.trainables.setup import TrialSetup

    return TrialSetup(tasks=("sst2", "stsb"), backbone=str(save_tiny_bert(tmp_path_factory.mktemp("bert"))),
                      data_dir=str(write_tiny_glue(tmp_path_factory.mktemp("data"))), train_per_task=16,
                      eval_per_task=8, max_length=32)


@pytest.mark.parametrize("preset", list(SHARING_PRESETS))
def test_every_preset_trains(tiny_setup, preset):
    from routed_study.trainables.training import Trainer

    config = RoutedPromptConfig.from_dict({"sharing": preset, "batch_size": 8, "num_prompt_tokens": 4, "epochs": 1})
    result = Trainer(config, tiny_setup).run()
    assert np.isfinite(result.metrics["train_loss"]) and np.isfinite(result.metrics["score"])


def test_the_findings_space_draws_presets_and_never_samples_what_they_fix():
    space = get_space("findings")
    seen = set()
    for values in space.sample_configs(120, seed=5):
        preset = values["sharing"]
        seen.add(preset)
        assert not set(SHARING_PRESETS[preset]) & set(values)
        config = RoutedPromptConfig.from_dict(values)
        assert all(getattr(config, k) == v for k, v in SHARING_PRESETS[preset].items())
    assert seen == set(SHARING_PRESETS)


@pytest.mark.parametrize("fixed, message", [
    ({"num_source_prompts": 3}, "key 'space': knob 'num_source_prompts' is fixed to 3 but sharing can be 'shared', "
                                "which fixes it to 1; fix sharing or search sharing without shared"),
    ({"private_prompts": False}, "knob 'private_prompts' is fixed to False but sharing can be 'partial'"),
    ({"sharing": "separate", "add_target": False}, "knob 'add_target' is fixed to False but sharing can be "
                                                    "'separate', which fixes it to True"),
])
def test_a_space_that_fixes_a_knob_against_a_preset_is_refused_at_validate(fixed, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as info:
        get_space("findings").customise({}, fixed)
    assert "\n" not in str(info.value)


def test_a_space_can_search_presets_without_the_conflicting_one():
    space = get_space("findings").customise({"sharing": ["partial", "separate"]}, {"num_source_prompts": 3})
    assert {v["sharing"] for v in space.sample_configs(30)} == {"partial", "separate"}
    with pytest.raises(InputError, match="^key 'space.override.sharing': knob 'sharing' got 'none'; allowed "
                                         "values: 'custom', 'shared', 'partial', 'separate'$"):
        get_space("findings").customise({"sharing": ["none"]})


def test_a_pair_can_flip_sharing_on_any_sampled_configuration():
    # What a matched-pairs design does: one base configuration, the preset flipped.
    for base in get_space("findings").sample_configs(40, seed=2):
        for preset in SHARING_PRESETS:
            flipped = with_knob(base, "sharing", preset)
            config = RoutedPromptConfig.from_dict(flipped)
            assert config.sharing == preset
            assert {k: v for k, v in flipped.items() if k != "sharing"}.items() <= base.items()
