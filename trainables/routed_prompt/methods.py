"""Registries of the routed prompt model's methods: route methods, compositions, source orders, encoders.

A method is ONE decorated function (or class) here or in a plugin module; its registered
name is at once a valid value of its knob (``config.py`` reads the knob's ``choices`` from
the registry), a value the ``findings`` space searches, a name that validation messages list
and a value that analysis reads from ``KNOBS``.

Why this module imports no torch: validating a study spec and analysing its results read the
names only, and must stay light. So route, composition and order functions are written with
tensor *methods* only (``x.sigmoid()``, ``x.softmax(-1)``, ``x.new_empty(...)``), which need no
``import torch``. Prompt encoders are ``nn.Module`` classes and do need torch: their registry
holds the names of the built-in ones with the module that defines them
(:meth:`Registry.lazy`), imported on first :meth:`Registry.get`; a plugin's encoder registers
itself when the plugin is imported (before validation).

Every function sees plain tensors:

- route method ``scores(logits: B x C, tau: float) -> B x C``: router scores from logits
  (a task's router row expanded over the batch, or the attention router's per-example
  key.query scores); ``same`` names the deterministic method evaluation uses for it
  (``eval_route_method: same``); ``train``/``evaluate`` say where it is a valid value;
  ``router`` is ``table`` (per-task logits) or ``attention`` (ATTEMPT's input-dependent router).
- composition ``compose(weights: B x k, picked: B x k x L x D) -> B x P x D``, ``joins`` when
  P = k*L (the target prompt and the length check need to know).
- source order ``order(weights: B x k, chosen: B x k) -> (weights, chosen)``, given strongest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from routed_study.trainables.registry import Registry


# ---------------------------------------------------------------- route methods
@dataclass(frozen=True)
class RouteMethod:
    name: str
    scores: Callable[[Any, float], Any]
    same: str            # the evaluation counterpart (eval_route_method: same)
    train: bool          # a value of route_method
    evaluate: bool       # a value of eval_route_method
    router: str          # "table" or "attention"
    tempered: bool       # whether tau changes its scores (const: no)


ROUTE_METHODS = Registry("route method", reserved=("same",))
ROUTERS = ("table", "attention")


def register_route_method(name: str, *, same: str | None = None, train: bool = True, evaluate: bool = True,
                          router: str = "table", tempered: bool = True):
    """Decorator: ``scores(logits B x C, tau) -> B x C`` becomes route method ``name``.

    ``same``: the evaluation method ``eval_route_method: same`` uses for it (default: itself,
    which must then be deterministic). ``train=False``: evaluation only (direct, sign).
    """
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")

    def decorate(fn):
        ROUTE_METHODS.register(name, RouteMethod(name, fn, same or name, train, evaluate, router, tempered))
        return fn

    return decorate


def train_route_methods() -> tuple[str, ...]:
    return tuple(n for n in ROUTE_METHODS.names() if ROUTE_METHODS.get(n).train)


def eval_route_methods() -> tuple[str, ...]:
    return ("same", *(n for n in ROUTE_METHODS.names() if ROUTE_METHODS.get(n).evaluate))


def eval_method_for(route_method: str, eval_route_method: str) -> RouteMethod:
    """The method that scores at evaluation (``same`` resolves to the training method's counterpart)."""
    name = ROUTE_METHODS.get(route_method).same if eval_route_method == "same" else eval_route_method
    return ROUTE_METHODS.get(name)


#: float32's eps: the uniforms of the logistic noise stay inside (0, 1), as torch's clamp_probs does.
_UNIFORM_EPS = 1.1920928955078125e-07


def relaxed_bernoulli(logits, tau: float):
    """sigmoid((logits + logistic noise) / tau), one sample per row of ``logits`` (B x C).

    Computed from the logits directly, in float64, never through probabilities: torch's
    ``RelaxedBernoulli`` clamps probabilities into [eps, 1 - eps], which zeroes the gradient
    of any logit beyond about +-16; here sigmoid'(z) = sigmoid(z) sigmoid(-z) stays above zero
    in float64 up to |z| of about 700, so a router logit at 20 still learns. The noise uses
    torch's ``rand`` stream (``uniform_`` on a float32 tensor), as ``RelaxedBernoulli`` did.
    """
    u = logits.detach().new_empty(logits.shape).uniform_().clamp(_UNIFORM_EPS, 1 - _UNIFORM_EPS).double()
    noise = u.log() - (-u).log1p()
    return ((logits.double() + noise) / tau).sigmoid().to(logits.dtype)


@register_route_method("rb", same="sigmoid", evaluate=True)
def _rb(logits, tau):
    return relaxed_bernoulli(logits, tau)


@register_route_method("sigmoid")
def _sigmoid(logits, tau):
    return (logits / tau).sigmoid()


@register_route_method("softmax")
def _softmax(logits, tau):
    return (logits / tau).softmax(-1)


@register_route_method("const", tempered=False)
def _const(logits, tau):
    return logits.new_ones(logits.shape)


@register_route_method("attention", same="attention", evaluate=False, router="attention")
def _attention(logits, tau):
    # ATTEMPT: softmax over the candidates of key.query / (D e); the router divides by D e
    # before this, tau scales it so that annealing applies.
    return (logits / tau).softmax(-1)


@register_route_method("direct", train=False, tempered=False)
def _direct(logits, tau):
    return logits


@register_route_method("sign", train=False, tempered=False)
def _sign(logits, tau):
    return (logits > 0).to(logits.dtype)


# ---------------------------------------------------------------- compositions
@dataclass(frozen=True)
class Composition:
    name: str
    compose: Callable[[Any, Any], Any]
    joins: bool          # k*L tokens (cat-like) rather than L
    weighted: bool       # whether the router's weights reach the prompt


COMPOSE_METHODS = Registry("compose method", reserved=("same",))


def register_compose_method(name: str, *, joins: bool, weighted: bool = True):
    """Decorator: ``compose(weights B x k, picked B x k x L x D) -> B x P x D`` becomes ``name``."""
    def decorate(fn):
        COMPOSE_METHODS.register(name, Composition(name, fn, joins, weighted))
        return fn

    return decorate


@register_compose_method("wavg", joins=False)
def _wavg(weights, picked):
    return (weights.to(picked.dtype)[..., None, None] * picked).sum(1)


@register_compose_method("cat", joins=True)
def _cat(weights, picked):
    return (weights.to(picked.dtype)[..., None, None] * picked).flatten(1, 2)


@register_compose_method("concat", joins=True, weighted=False)
def _concat(weights, picked):
    return picked.flatten(1, 2)


def joining_compose_methods() -> tuple[str, ...]:
    return tuple(n for n in COMPOSE_METHODS.names() if COMPOSE_METHODS.get(n).joins)


def unweighted_compose_methods() -> tuple[str, ...]:
    return tuple(n for n in COMPOSE_METHODS.names() if not COMPOSE_METHODS.get(n).weighted)


# ---------------------------------------------------------------- source orders
SOURCE_ORDERS = Registry("source order", reserved=("same",))


def register_source_order(name: str):
    """Decorator: ``order(weights B x k, chosen B x k) -> (weights, chosen)`` becomes ``name``;
    it receives the selection strongest first (ties by lowest candidate index)."""
    def decorate(fn):
        SOURCE_ORDERS.register(name, fn)
        return fn

    return decorate


@register_source_order("desc")
def _desc(weights, chosen):
    return weights, chosen


@register_source_order("asc")
def _asc(weights, chosen):
    return weights.flip(-1), chosen.flip(-1)


@register_source_order("rand")
def _rand(weights, chosen):
    # One permutation per step (argsort of uniforms from torch's global RNG).
    order = weights.detach().new_empty(weights.shape[-1]).uniform_().argsort()
    return weights[:, order], chosen[:, order]


# ---------------------------------------------------------------- prompt encoders (need torch)
PROMPT_ENCODERS = Registry("prompt encoder", reserved=("same",))
PROMPT_ENCODERS.lazy("routed_study.trainables.routed_prompt.encoders", "emb", "mlp", "lstm")
