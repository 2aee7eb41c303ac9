"""Section 7 of the model spec: evaluation routes as training does, ties, rb numerics at large
logits, ATTEMPT's attention router, target_mix, task-owned sources. Tiny sizes, no backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt import KNOBS, RoutedPrompt, RoutedPromptConfig
from routed_study.trainables.routed_prompt import methods
from routed_study.trainables.routed_prompt.config import inert_knobs
from routed_study.trainables.routed_prompt.module import select_top_k

D, T, L, B, S = 16, 3, 3, 4, 6
LOGITS = [2.0, 0.0, -1.0, 1.0]


def make(**knobs) -> RoutedPrompt:
    config = RoutedPromptConfig.from_dict({"num_prompt_tokens": L} | knobs)
    return RoutedPrompt(config, num_tasks=T, hidden_size=D, total_steps=100,
                        task_names=["cola", "mrpc", "sst2"])


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(B, S, D, generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 4:] = 0
    return embeds, mask


def set_router(module, row, task=1):
    with torch.no_grad():
        module.router[task] = torch.tensor(row)


# ---------------------------------------------------------------- eval_route_method: same
def test_same_is_the_default():
    assert KNOBS["eval_route_method"].default == "same"
    assert RoutedPromptConfig().eval_route_method == "same"


@pytest.mark.parametrize("route", KNOBS["route_method"].choices)
@pytest.mark.parametrize("placement", ["after", "nothing", "norm"])
def test_evaluation_weights_equal_training_weights(route, placement):
    """Deterministic methods: the same weights exactly; rb: those of its sigmoid counterpart."""
    module = make(route_method=route, apply_softmax_to=placement, num_selected=2, temperature=0.7)
    embeds, mask = batch()
    if module.router is not None:
        set_router(module, LOGITS)
    logits = (module.attention(embeds, mask, module.candidates(1, embeds, mask))
              if module.attention is not None else None)
    module.eval()
    eval_w, eval_c = module.route(1, B, step=3, logits=logits)
    reference = module
    if route == "rb":
        reference = make(route_method="sigmoid", apply_softmax_to=placement, num_selected=2, temperature=0.7)
        set_router(reference, LOGITS)
    reference.train()
    train_w, train_c = reference.route(1, B, step=3, logits=logits)
    assert torch.equal(eval_c, train_c)
    assert torch.equal(eval_w, train_w)


def test_same_resolves_per_method_and_explicit_values_stay():
    assert {m: methods.ROUTE_METHODS.get(m).same for m in methods.train_route_methods()} == {
        "rb": "sigmoid", "sigmoid": "sigmoid", "softmax": "softmax", "const": "const", "attention": "attention"}
    for value in ("direct", "sigmoid", "sign", "rb"):
        assert value in KNOBS["eval_route_method"].choices
    with pytest.raises(InputError, match=r"knob 'eval_route_method' got 'similar'; allowed values: 'same', 'rb'"):
        RoutedPromptConfig.from_dict({"eval_route_method": "similar"})


# ---------------------------------------------------------------- ties
def test_ties_break_by_candidate_index_lowest_first():
    assert select_top_k(torch.ones(2, 6), 2)[1].tolist() == [[0, 1], [0, 1]]
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    assert select_top_k(scores, 3)[1].tolist() == [[1, 3, 0]]
    # At initialisation (router all zeros) and under const every method selects 0..k-1.
    for route in ("const", "sigmoid", "softmax"):
        module = make(route_method=route, num_selected=2)
        assert module.route(0, B, step=0)[1].tolist() == [[0, 1]] * B
    module = make(route_method="sigmoid", eval_route_method="sign", num_selected=2)
    set_router(module, [1.0, 3.0, -1.0, 2.0])   # sign: 1, 1, 0, 1 -> the lowest two of the ones
    module.eval()
    assert module.route(1, B, step=0)[1].tolist() == [[0, 1]] * B


# ---------------------------------------------------------------- rb at large logits
@pytest.mark.parametrize("logit", [20.0, -20.0])
def test_rb_keeps_a_gradient_at_large_logits(logit):
    tau = 1.0
    logits = torch.full((B, 4), logit, requires_grad=True)
    torch.manual_seed(0)
    sample = methods.relaxed_bernoulli(logits, tau)
    sample.sum().backward()
    torch.manual_seed(0)
    u = torch.rand(B, 4).double().clamp(1.1920928955078125e-07, 1 - 1.1920928955078125e-07)
    z = (logit + u.log() - (-u).log1p()) / tau
    want = (torch.sigmoid(z) * torch.sigmoid(-z) / tau).float()   # sigmoid'(z) / tau, in float64
    assert (logits.grad > 0).all()
    torch.testing.assert_close(logits.grad, want, rtol=1e-5, atol=0)
    # torch's RelaxedBernoulli clamps probabilities: its gradient is exactly zero there.
    from torch.distributions import RelaxedBernoulli

    old = torch.full((4,), logit, requires_grad=True)
    RelaxedBernoulli(torch.tensor(tau), logits=old).rsample((B,)).sum().backward()
    assert torch.equal(old.grad, torch.zeros(4))


def test_rb_router_at_logit_20_still_moves_under_adam():
    module = make(route_method="rb", num_selected=-1)
    set_router(module, [20.0, 20.0, 20.0, 20.0])
    optimizer = torch.optim.AdamW(module.parameter_groups())
    before = module.router_matrix()[1].copy()
    torch.manual_seed(0)
    prompt = module(1, *batch(), step=0)
    (prompt * torch.randn_like(prompt)).sum().backward()
    optimizer.step()
    assert np.abs(module.router_matrix()[1] - before).min() > 1e-4


# ---------------------------------------------------------------- attention router
def test_attention_router_is_attempts_formula():
    module = make(route_method="attention", temperature=0.5, attend_target=True, num_selected=-1)
    embeds, mask = batch()
    candidates = module.candidates(1, embeds, mask)
    att = module.attention
    pooled = torch.stack([embeds[b, mask[b].bool()].max(0).values for b in range(B)])
    query = att.norm(att.up(torch.nn.functional.silu(att.down(pooled))))
    keys = candidates.max(2).values                                  # B x C x D
    logits = (keys * query[:, None]).sum(-1) / (D * math.e)
    want = torch.softmax(logits / 0.5, dim=-1)
    module.train()
    got = module.scores(1, B, step=0, logits=att(embeds, mask, candidates))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (B, 5)                                    # 4 sources + the target
    assert not torch.allclose(got[0], got[2])                     # per example, not per task


def test_attention_router_trains_at_the_router_rate_and_anneals():
    module = make(route_method="attention", router_learning_rate=0.02, anneal_dir=-1, anneal_rate=0.1)
    groups = module.parameter_groups()
    assert groups[1]["lr"] == 0.02 and groups[1]["params"] == list(module.attention.parameters())
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.parameters())
    assert module.tau(10) < module.tau(0)
    embeds, mask = batch()
    logits = module.attention(embeds, mask, module.candidates(0, embeds, mask))
    assert not torch.allclose(module.scores(0, B, 0, logits), module.scores(0, B, 10, logits))
    for knob in ("temperature", "anneal_dir", "router_learning_rate", "apply_softmax_to", "compose_method"):
        assert knob not in inert_knobs({"route_method": "attention", "num_selected": 2})


def test_attention_router_matrix_is_the_mean_evaluation_score_per_task():
    module = make(route_method="attention")
    module.eval()
    embeds, mask = batch()
    with torch.no_grad():
        module(1, embeds, mask, 0)
        logits = module.attention(embeds, mask, module.candidates(1, embeds, mask))
    matrix = module.router_matrix()
    assert matrix.shape == (T, 4)
    np.testing.assert_allclose(matrix[1], torch.softmax(logits, -1).mean(0).numpy(), rtol=1e-5)
    assert np.array_equal(matrix[0], np.zeros(4))


# ---------------------------------------------------------------- target_mix
def test_target_mix_add_adds_the_target_with_weight_one():
    plain = make(route_method="sigmoid", compose_method="cat", num_selected=2)
    added = make(route_method="sigmoid", compose_method="cat", num_selected=2, add_target=True, target_mix="add")
    embeds, mask = batch()
    assert added.target.shape == (T, 2 * L, D)
    torch.testing.assert_close(added(1, embeds, mask, 0), plain(1, embeds, mask, 0) + added.target[1])
    np.testing.assert_array_equal(added.target_gates(), np.ones(T))
    assert "target_share" in inert_knobs({"add_target": True, "target_mix": "add"})
    # A share under the add mix is inert (declared, reported by validate), not a contradiction;
    # without a target at all it is one.
    config = RoutedPromptConfig.from_dict({"add_target": True, "target_mix": "add", "target_share": 0.5})
    assert "target_share" in inert_knobs(config.to_dict())
    with pytest.raises(InputError, match="'target_share' is set to 0.5 but it only has a meaning when "
                                         "add_target is true$"):
        RoutedPromptConfig.from_dict({"target_mix": "add", "target_share": 0.5})
    with pytest.raises(InputError, match=r"knob 'target_mix' got 'mul'; allowed values: 'convex', 'add'"):
        RoutedPromptConfig.from_dict({"target_mix": "mul"})


def test_plain_prompt_tuning_is_l_tokens_whatever_the_composition():
    module = make(compose_method="cat", num_selected=2, add_target=True, target_share=1.0)
    assert module.prompt_length == L and module.target.shape == (T, L, D)
    assert "compose_method" in inert_knobs({"add_target": True, "target_share": 1.0})


# ---------------------------------------------------------------- task-owned sources
def test_task_owned_sources_are_labelled_with_task_names():
    module = make(sources="tasks", private_prompts=True)
    assert module.candidate_names == ["cola", "mrpc", "sst2", "private"]
    assert module.sources.shape == (T, L, D) and module.router.shape == (T, 4)
    assert "num_source_prompts" in inert_knobs({"sources": "tasks"})
    assert "source_init" in inert_knobs({}) and "freeze_sources" in inert_knobs({"sources": "tasks"})
    assert "freeze_sources" not in inert_knobs({"sources": "tasks", "source_init": "pretrained"})
    with pytest.raises(InputError, match=r"knob 'sources' got 'shared'; allowed values: 'anonymous', 'tasks'"):
        RoutedPromptConfig.from_dict({"sources": "shared"})
    with pytest.raises(InputError, match="knob 'num_selected' is 5 but a task has only 4 candidates"):
        RoutedPromptConfig.from_dict({"sources": "tasks", "private_prompts": True,
                                      "num_selected": 5}).check_candidates(3)


@pytest.mark.parametrize("freeze", [True, False])
def test_pretrained_sources_load_and_freeze(freeze):
    module = make(sources="tasks", source_init="pretrained", freeze_sources=freeze)
    prompts = torch.randn(T, L, D)
    module.load_sources(prompts, freeze=freeze)
    assert torch.equal(module.sources.detach(), prompts)
    in_groups = any(p is module.sources for g in module.parameter_groups() for p in g["params"])
    assert in_groups is (not freeze) and module.sources.requires_grad is (not freeze)


@pytest.mark.parametrize("knob,value,message", [
    ("sources", "pool", r"knob 'sources' got 'pool'; allowed values: 'anonymous', 'tasks'$"),
    ("source_init", "zeros", r"knob 'source_init' got 'zeros'; allowed values: 'random', 'pretrained'$"),
    ("freeze_sources", "yes", r"knob 'freeze_sources' must be true or false, got 'yes'$"),
    ("backbone_dropout", 0.1, r"knob 'backbone_dropout' must be true or false, got 0.1$"),
    ("target_mix", "sum", r"knob 'target_mix' got 'sum'; allowed values: 'convex', 'add'$"),
    ("route_method", "attn", r"knob 'route_method' got 'attn'; allowed values: 'rb', 'sigmoid', 'softmax', "
                             r"'const', 'attention'$"),
])
def test_new_knobs_reject_bad_values_in_one_line(knob, value, message):
    with pytest.raises(InputError, match=message) as info:
        RoutedPromptConfig.from_dict({knob: value}, where="spec.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("spec.yaml: ")
