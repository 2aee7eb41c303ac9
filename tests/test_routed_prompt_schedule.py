"""The router temperature schedule (spec section 3)."""

from __future__ import annotations

import math

import pytest

from routed_study.trainables.routed_prompt import RoutedPrompt, RoutedPromptConfig, default_anneal_rate, temperature_at


@pytest.mark.parametrize("step", [0, 1, 17, 10_000, 10**9])
def test_direction_zero_is_constant(step):
    assert temperature_at(step, 0.7, 0, 0.5, 1e-3, 100.0) == 0.7


def test_direction_zero_still_clips_tau0():
    assert temperature_at(5, 500.0, 0, 0.1, 1e-3, 100.0) == 100.0


@pytest.mark.parametrize("direction", [-1, 1])
def test_closed_form_and_independent_of_call_order(direction):
    rate = 0.01
    steps = [300, 0, 42, 7, 1000, 42]
    values = [temperature_at(s, 2.0, direction, rate, 1e-6, 1e6) for s in steps]
    for s, v in zip(steps, values):
        assert v == pytest.approx(2.0 * math.exp(direction * rate * s), rel=1e-12)
    assert values[2] == values[5]


@pytest.mark.parametrize("direction,expected", [(-1, 0.05), (1, 3.0)])
def test_clipped_into_range(direction, expected):
    assert temperature_at(10**6, 1.0, direction, 1.0, 0.05, 3.0) == expected


@pytest.mark.parametrize("total_steps", [1, 37, 500])
@pytest.mark.parametrize("direction", [-1, 1])
def test_default_rate_changes_tau_by_factor_e_over_the_run(total_steps, direction):
    config = RoutedPromptConfig(temperature=0.5, anneal_dir=direction)
    module = RoutedPrompt(config, num_tasks=2, hidden_size=8, total_steps=total_steps)
    assert default_anneal_rate(total_steps) == pytest.approx(1.0 / total_steps)
    assert module.tau(0) == 0.5
    assert module.tau(total_steps) / module.tau(0) == pytest.approx(math.e ** direction, rel=1e-12)
    assert module.tau(total_steps // 2) == pytest.approx(0.5 * math.exp(direction * (total_steps // 2) / total_steps))


def test_explicit_rate_and_clip_from_config():
    config = RoutedPromptConfig(temperature=1.0, anneal_dir=-1, anneal_rate=0.1, anneal_min=0.2)
    module = RoutedPrompt(config, num_tasks=1, hidden_size=8, total_steps=1000)
    assert module.tau(5) == pytest.approx(math.exp(-0.5))
    assert module.tau(100) == 0.2


@pytest.mark.parametrize("kwargs", [dict(direction=2), dict(low=2.0, high=1.0)])
def test_invalid_arguments_raise(kwargs):
    args = dict(step=1, tau0=1.0, direction=1, rate=0.1, low=0.1, high=1.0) | kwargs
    with pytest.raises(ValueError):
        temperature_at(**args)
