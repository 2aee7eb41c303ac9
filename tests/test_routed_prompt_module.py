"""RoutedPrompt: shapes, routing (scores, top-k, order, softmax placement), composition, target gate.

Tiny sizes (D=16), no backbone. Routing is checked on hand-set router logits with
expected weights computed independently in numpy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from routed_study.trainables.routed_prompt import KNOBS, RoutedPrompt, RoutedPromptConfig, pool_tokens

D, T, L, B, S = 16, 3, 3, 4, 6
LOGITS = [2.0, 0.0, -1.0, 1.0]   # a hand-set router row for task 1 (4 sources)


def make(total_steps: int = 100, **knobs) -> RoutedPrompt:
    config = RoutedPromptConfig.from_dict({"num_prompt_tokens": L} | knobs)
    return RoutedPrompt(config, num_tasks=T, hidden_size=D, total_steps=total_steps)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(B, S, D, generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, :2] = 0  # left padding
    return embeds, mask


def set_router(module: RoutedPrompt, row: list[float], task: int = 1) -> None:
    with torch.no_grad():
        module.router[task] = torch.tensor(row)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x)))


def softmax(x):
    e = np.exp(np.asarray(x) - np.max(x))
    return e / e.sum()


# ---------------------------------------------------------------- shapes and pool
@pytest.mark.parametrize("compose", KNOBS["compose_method"].choices)
@pytest.mark.parametrize("k", [-1, 1, 2])
@pytest.mark.parametrize("extras", [(), ("private_prompts",), ("attend_target", "attend_input"),
                                    ("private_prompts", "attend_target", "attend_input", "add_target")])
def test_prompt_shape(compose, k, extras):
    module = make(compose_method=compose, num_selected=k, **{e: True for e in extras})
    C = 4 + len([e for e in extras if e != "add_target"])
    kk = C if k == -1 else k
    expected = L if compose == "wavg" else kk * L
    assert module.prompt_length == expected
    assert module.router.shape == (T, C) and module.router_matrix().shape == (T, C)
    for training in (True, False):
        module.train(training)
        prompt = module(2, *batch(), step=3)
        assert prompt.shape == (B, expected, D)
        assert torch.isfinite(prompt).all()


@pytest.mark.parametrize("flags,names", [
    ({}, ["source_0", "source_1", "source_2", "source_3"]),
    ({"num_source_prompts": 2, "private_prompts": True, "attend_target": True, "attend_input": True},
     ["source_0", "source_1", "private", "target", "input"]),
    ({"num_source_prompts": 0, "private_prompts": True}, ["private"]),
])
def test_candidate_names(flags, names):
    module = make(**flags)
    assert module.candidate_names == names
    assert module.candidates(0, *batch()).shape == (B, len(names), L, D)


def test_candidates_are_the_encoded_pool():
    module = make(num_source_prompts=2, private_prompts=True, attend_target=True, attend_input=True)
    embeds, mask = batch()
    cands = module.candidates(2, embeds, mask).detach()
    assert torch.equal(cands[:, 0], module.sources[0].detach().expand(B, L, D))
    assert torch.equal(cands[:, 2], module.private[2].detach().expand(B, L, D))
    assert torch.equal(cands[:, 3], module.target[2].detach().expand(B, L, D))
    assert torch.allclose(cands[:, 4], pool_tokens(embeds, mask, L))
    assert not torch.allclose(cands[0, 4], cands[1, 4])  # the input candidate is per example


def test_attend_target_pools_a_long_target_to_L_tokens():
    module = make(compose_method="cat", num_selected=2, attend_target=True)
    assert module.target.shape == (T, 2 * L, D)
    pooled = module.candidates(0, *batch())[0, 4].detach()
    target = module.target[0].detach()
    assert torch.allclose(pooled, (target[0::2] + target[1::2]) / 2)


def test_pool_tokens_numbers():
    x = torch.arange(1.0, 7.0).reshape(1, 6, 1).repeat(4, 1, 1)           # tokens 1..6
    mask = torch.tensor([[1, 1, 1, 1, 0, 0],    # n=4, right padding
                         [0, 0, 1, 1, 1, 1],    # n=4, left padding
                         [1, 1, 1, 0, 0, 0],    # n=3: overlapping segments [0,2) and [1,3)
                         [1, 0, 0, 0, 0, 0]])   # n=1: every segment is that token
    pooled = pool_tokens(x, mask, 2)[..., 0]
    assert pooled.tolist() == [[1.5, 3.5], [3.5, 5.5], [1.5, 2.5], [1.0, 1.0]]


# ---------------------------------------------------------------- scores (route methods)
def test_train_scores_by_route_method():
    tau = 0.5
    expected = {"sigmoid": sigmoid(np.array(LOGITS) / tau), "softmax": softmax(np.array(LOGITS) / tau),
                "const": np.ones(4)}
    for method, want in expected.items():
        module = make(route_method=method, temperature=tau)
        set_router(module, LOGITS)
        got = module.scores(1, B, step=0).detach().numpy()
        np.testing.assert_allclose(got, np.tile(want, (B, 1)), rtol=1e-6)


def test_rb_scores_are_relaxed_bernoulli_samples_from_torch_rng():
    tau = 0.7
    module = make(route_method="rb", temperature=tau)
    set_router(module, LOGITS)
    torch.manual_seed(11)
    u = torch.rand(B, 4).numpy().astype(np.float64)
    torch.manual_seed(11)
    got = module.scores(1, B, step=0).detach().numpy()
    want = sigmoid((np.array(LOGITS) + np.log(u) - np.log1p(-u)) / tau)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert not np.allclose(got[0], got[1])      # per-example noise


def test_rb_low_temperature_is_nearly_binary():
    module = make(route_method="rb", temperature=1e-3)
    set_router(module, [8.0, -8.0, 8.0, -8.0])
    torch.manual_seed(0)
    scores = module.scores(1, 64, step=0).detach()
    assert torch.equal(scores.round(), torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(64, 4))


@pytest.mark.parametrize("method", KNOBS["eval_route_method"].choices)
def test_eval_scores_by_eval_route_method(method):
    tau = 0.5
    module = make(route_method="softmax", eval_route_method=method, temperature=tau)
    set_router(module, LOGITS)
    module.eval()
    torch.manual_seed(3)
    got = module.scores(1, B, step=0).detach().numpy()
    if method == "rb":
        torch.manual_seed(3)
        u = torch.rand(B, 4).numpy().astype(np.float64)
        want = sigmoid((np.array(LOGITS) + np.log(u) - np.log1p(-u)) / tau)
    else:
        row = {"direct": np.array(LOGITS), "sigmoid": sigmoid(np.array(LOGITS) / tau),
               "sign": np.array([1.0, 0.0, 0.0, 1.0]), "softmax": softmax(np.array(LOGITS) / tau),
               "same": softmax(np.array(LOGITS) / tau),   # the training method (softmax) itself
               "const": np.ones(4)}[method]
        want = np.tile(row, (B, 1))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Training mode uses route_method instead.
    module.train()
    np.testing.assert_allclose(module.scores(1, B, step=0).detach().numpy(),
                               np.tile(softmax(np.array(LOGITS) / tau), (B, 1)), rtol=1e-6)


# ---------------------------------------------------------------- top-k, order, softmax placement
@pytest.mark.parametrize("order", KNOBS["source_order"].choices)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_top_k_and_order(order, k):
    module = make(route_method="sigmoid", num_selected=k, source_order=order, apply_softmax_to="nothing")
    set_router(module, LOGITS)
    ranked = [0, 3, 1, 2]                      # candidates by score, strongest first
    seen = set()
    for _ in range(20):
        weights, chosen = module.route(1, B, step=0)
        assert chosen.shape == (B, k) and weights.shape == (B, k)
        first = chosen[0].tolist()
        assert all(row == first for row in chosen.tolist())   # deterministic scores: same per example
        if order == "desc":
            assert first == ranked[:k]
        elif order == "asc":
            assert first == ranked[:k][::-1]
        else:
            assert sorted(first) == sorted(ranked[:k])
        # The weights travel with their candidates.
        np.testing.assert_allclose(weights[0].detach().numpy(), sigmoid(np.array(LOGITS))[first], rtol=1e-6)
        seen.add(tuple(first))
    if order == "rand" and k >= 3:
        assert len(seen) > 1                   # a fresh permutation each step


@pytest.mark.parametrize("placement", KNOBS["apply_softmax_to"].choices)
def test_softmax_placement_weights(placement):
    module = make(route_method="sigmoid", num_selected=2, apply_softmax_to=placement)
    set_router(module, LOGITS)
    weights, chosen = module.route(1, B, step=0)
    assert chosen[0].tolist() == [0, 3]
    s = sigmoid(np.array(LOGITS))            # [0.8808, 0.5, 0.2689, 0.7311]
    top = s[[0, 3]]
    want = {"before": softmax(s)[[0, 3]],
            "after": softmax(top),
            "norm": top / top.sum(),
            "normafter": softmax(top / top.sum()),
            "nothing": top}[placement]
    np.testing.assert_allclose(weights.detach().numpy(), np.tile(want, (B, 1)), rtol=1e-6)
    hand = {"before": [0.32398, 0.27893], "after": [0.53735, 0.46265], "norm": [0.54643, 0.45357],
            "normafter": [0.52320, 0.47680], "nothing": [0.88080, 0.73106]}[placement]
    np.testing.assert_allclose(weights[0].detach().numpy(), hand, atol=1e-4)


def test_norm_keeps_an_all_zero_selection_at_zero():
    module = make(eval_route_method="sign", apply_softmax_to="norm")
    set_router(module, [-1.0, -2.0, -3.0, -4.0])
    module.eval()
    weights, _ = module.route(1, B, step=0)
    assert torch.equal(weights, torch.zeros(B, 4))


# ---------------------------------------------------------------- composition
def _route_fixed(module, chosen_row, weight_row):
    """Replace routing by a fixed selection so composition can be checked by hand."""
    module.route = lambda t, b, step, logits=None: (torch.tensor([weight_row] * b), torch.tensor([chosen_row] * b))


@pytest.mark.parametrize("compose", KNOBS["compose_method"].choices)
def test_composition(compose):
    module = make(compose_method=compose, num_selected=2)
    _route_fixed(module, [3, 1], [0.25, 0.5])
    prompt = module(0, *batch(), step=0).detach()
    src = module.sources.detach()
    want = {"wavg": 0.25 * src[3] + 0.5 * src[1],
            "cat": torch.cat([0.25 * src[3], 0.5 * src[1]]),
            "concat": torch.cat([src[3], src[1]])}[compose]
    assert torch.allclose(prompt, want.expand(B, -1, -1))


@pytest.mark.parametrize("compose", KNOBS["compose_method"].choices)
def test_target_share_one_is_exactly_the_target_prompt(compose):
    module = make(compose_method=compose, num_selected=2, add_target=True, target_share=1.0)
    for training in (True, False):
        module.train(training)
        prompt = module(2, *batch(), step=5)
        assert torch.equal(prompt, module.target[2].expand(B, -1, -1))
    prompt.sum().backward()
    assert module.target.grad[2].abs().sum() > 0


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_fixed_target_share_mixes(share):
    plain = make(route_method="sigmoid")
    mixed = make(route_method="sigmoid", add_target=True, target_share=share)
    embeds, mask = batch()
    want = (1 - share) * plain(1, embeds, mask, 0) + share * mixed.target[1]
    assert torch.allclose(mixed(1, embeds, mask, 0), want)
    np.testing.assert_allclose(mixed.target_gates(), [share] * T)
    assert plain.target_gates() is None


def test_learned_target_gate_gets_gradient_and_eval_uses_its_mean():
    module = make(add_target=True, target_share="learned", target_share_temperature=0.5)
    torch.manual_seed(0)
    prompt = module(1, *batch(), step=0)
    (prompt * torch.randn_like(prompt)).sum().backward()
    grad = module.target_gate_logits.grad
    assert grad[1] != 0 and grad[0] == 0 and grad[2] == 0
    assert any(p is module.target_gate_logits for p in module.parameter_groups()[0]["params"])

    with torch.no_grad():
        module.target_gate_logits[1] = 0.8
    module.eval()
    fixed = make(add_target=True, target_share=float(torch.sigmoid(torch.tensor(0.8))))
    fixed.eval()
    embeds, mask = batch()
    assert torch.allclose(module(1, embeds, mask, 0), fixed(1, embeds, mask, 0), atol=1e-6)
    np.testing.assert_allclose(module.target_gates()[1], 1 / (1 + np.exp(-0.8)), rtol=1e-6)


def test_learned_gate_is_sampled_per_example_at_training():
    module = make(add_target=True, target_share="learned", route_method="sigmoid")
    embeds = torch.zeros(B, S, D)
    mask = torch.ones(B, S)
    torch.manual_seed(0)
    prompt = module(0, embeds, mask, 0).detach()
    assert not torch.allclose(prompt[0], prompt[1])
    module.eval()
    prompt = module(0, embeds, mask, 0).detach()
    assert torch.allclose(prompt[0], prompt[1])


# ---------------------------------------------------------------- gradients, groups, RNG
ROUTING_KNOBS = ["route_method", "eval_route_method", "apply_softmax_to", "source_order", "compose_method"]


@pytest.mark.parametrize("knob,value", [(k, v) for k in ROUTING_KNOBS for v in KNOBS[k].choices])
def test_every_routing_value_trains_and_evaluates(knob, value):
    module = make(num_selected=3, private_prompts=True, attend_input=True, **{knob: value})
    torch.manual_seed(0)
    prompt = module(1, *batch(), step=2)
    (prompt * torch.randn_like(prompt)).sum().backward()
    assert torch.isfinite(prompt).all()
    if value == "attention":              # ATTEMPT's router: its projections learn, per example
        assert module.router is None
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.router_parameters())
        assert module.sources.grad.abs().sum() > 0
        module.eval()
        assert module(1, *batch(), step=2).shape == prompt.shape
        return
    router_grad = module.router.grad
    if (knob, value) in (("route_method", "const"), ("compose_method", "concat")):
        assert router_grad is None        # constant or unit weights: the router plays no part
    else:
        assert torch.equal(router_grad[[0, 2]], torch.zeros(2, 6))   # only the batch's task moves
        assert router_grad[1].abs().sum() > 0
    assert module.sources.grad.abs().sum() > 0
    module.eval()
    assert module(1, *batch(), step=2).shape == prompt.shape


def test_parameter_groups_cover_every_parameter_once():
    module = make(private_prompts=True, add_target=True, target_share="learned", prompt_encoder="mlp",
                  learning_rate=0.3, router_learning_rate=0.02)
    groups = module.parameter_groups()
    assert [g["name"] for g in groups] == ["prompts", "router"]
    assert [g["lr"] for g in groups] == [0.3, 0.02]
    assert groups[1]["params"] == [module.router]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.parameters()) and len(set(ids)) == len(ids)
    torch.optim.AdamW(groups)  # accepted as is


def test_router_starts_at_zero():
    module = make(private_prompts=True)
    assert np.array_equal(module.router_matrix(), np.zeros((T, 5)))


def test_same_rng_state_gives_the_same_prompt():
    module = make(route_method="rb", source_order="rand", compose_method="cat",
                  add_target=True, target_share="learned")
    embeds, mask = batch()
    torch.manual_seed(4)
    state = torch.get_rng_state()
    first = module(0, embeds, mask, 1)
    second = module(0, embeds, mask, 1)
    torch.set_rng_state(state)
    again = module(0, embeds, mask, 1)
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_output_follows_input_dtype():
    module = make()
    embeds, mask = batch()
    assert module(0, embeds.double(), mask, 0).dtype == torch.float64


def test_task_id_out_of_range():
    with pytest.raises(IndexError):
        make()(T, *batch(), step=0)


@pytest.mark.parametrize("combo", list(itertools.product(["wavg", "cat"], [True, False])))
def test_default_rb_router_learns_to_prefer_a_useful_source(combo):
    """A few optimiser steps move the router toward the source that matches a goal prompt."""
    compose, private = combo
    module = make(compose_method=compose, private_prompts=private, router_learning_rate=0.2)
    goal = module.sources.detach()[2]
    optim = torch.optim.AdamW(module.parameter_groups()[1:])   # the router alone learns
    torch.manual_seed(0)
    for _ in range(40):
        prompt = module(0, *batch(), step=0)
        loss = ((prompt.reshape(B, -1, L, D) - goal) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    row = module.router_matrix()[0]
    assert row.argmax() == 2


def test_routing_registries_match_the_knob_vocabulary():
    from routed_study.trainables.routed_prompt import methods
    from routed_study.trainables.routed_prompt.module import AFTER_SELECTION

    assert set(methods.train_route_methods()) == set(KNOBS["route_method"].choices)
    assert set(methods.eval_route_methods()) == set(KNOBS["eval_route_method"].choices)
    assert set(methods.COMPOSE_METHODS) == set(KNOBS["compose_method"].choices)
    assert set(methods.SOURCE_ORDERS) == set(KNOBS["source_order"].choices)
    assert set(AFTER_SELECTION) == set(KNOBS["apply_softmax_to"].choices)
