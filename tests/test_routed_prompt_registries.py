"""Methods register themselves: one decorated function (or class) makes a valid knob value everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt import KNOBS, RoutedPrompt, RoutedPromptConfig, methods


def test_validation_reads_the_registries_without_torch():
    code = ("import sys; from trainables.routed_prompt.config import KNOBS; import search_spaces; "
            "print(KNOBS['prompt_encoder'].choices, KNOBS['route_method'].choices); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "('emb', 'mlp', 'lstm')" in out and "'attention'" in out


def test_a_registered_compose_method_and_order_are_knob_values():
    @methods.register_compose_method("wsum_first", joins=False)
    def first_only(weights, picked):
        return (weights[:, :1, None, None].to(picked.dtype) * picked[:, :1]).sum(1)   # the strongest only

    @methods.register_source_order("identity_test")
    def keep(weights, chosen):
        return weights, chosen

    try:
        assert "wsum_first" in KNOBS["compose_method"].choices
        assert "identity_test" in KNOBS["source_order"].choices
        config = RoutedPromptConfig.from_dict({"compose_method": "wsum_first", "route_method": "sigmoid",
                                               "num_prompt_tokens": 2})
        module = RoutedPrompt(config, num_tasks=1, hidden_size=8, total_steps=10)
        prompt = module(0, torch.randn(3, 5, 8), torch.ones(3, 5), step=0)
        assert prompt.shape == (3, 2, 8)
        weights, chosen = module.route(0, 3, step=0)
        torch.testing.assert_close(prompt[0], weights[0, 0] * module.sources[chosen[0, 0]])
    finally:
        methods.COMPOSE_METHODS._entries.pop("wsum_first")
        methods.SOURCE_ORDERS._entries.pop("identity_test")
    with pytest.raises(InputError, match=r"knob 'compose_method' got 'wsum_first'; allowed values: 'wavg', "
                                         r"'cat', 'concat'"):
        RoutedPromptConfig.from_dict({"compose_method": "wsum_first"})


def test_a_registered_prompt_encoder_is_a_knob_value():
    from routed_study.trainables.routed_prompt.encoders import PromptEncoder, build_encoder, register_encoder

    @register_encoder("scale_test")
    class Doubling(PromptEncoder):
        def forward(self, raw):
            return 2 * raw

    try:
        assert "scale_test" in KNOBS["prompt_encoder"].choices
        assert RoutedPromptConfig.from_dict({"prompt_encoder": "scale_test"}).prompt_encoder == "scale_test"
        assert torch.equal(build_encoder("scale_test", 4, True)(torch.ones(1, 2, 4)), torch.full((1, 2, 4), 2.0))
    finally:
        methods.PROMPT_ENCODERS._entries.pop("scale_test")


def test_registries_refuse_duplicates_and_name_the_registered():
    with pytest.raises(ValueError, match="route method 'rb' is registered twice"):
        methods.register_route_method("rb")(lambda logits, tau: logits)
    with pytest.raises(ValueError, match="other than 'same'"):
        methods.register_route_method("same")(lambda logits, tau: logits)
    with pytest.raises(InputError, match=r"unknown route method 'sigmod' \(did you mean 'sigmoid'\?\); "
                                         r"registered: 'rb'"):
        methods.ROUTE_METHODS.get("sigmod")
    # An evaluation-only method is no training value; 'same' is no training value either.
    assert "sign" not in KNOBS["route_method"].choices and "sign" in KNOBS["eval_route_method"].choices
