"""When a knob applies: small predicates over a trial's knob values.

A :class:`Condition` is declared once per knob (``applies=`` in ``config.py``) and read by
everything that needs to know whether a knob means something in a trial: the model's
validation, the search spaces' conditional sampling, ``validate``'s report of inert knobs
and the analysis's "not applicable" marking. It names the knobs it reads, so a search space
can suggest those first, and it writes itself as a sentence for messages and reports.

Conditions are evaluated on *complete* values (every knob present, defaults filled in);
:func:`~trainables.routed_prompt.config.complete` does that. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping


@dataclass(frozen=True)
class Condition:
    """A predicate over complete knob values.

    test: the predicate.
    reads: the knobs it looks at (a space suggests them before the knob it guards).
    text: the condition as a sentence, e.g. ``add_target is true``.
    """

    test: Callable[[Mapping[str, Any]], bool]
    reads: frozenset[str]
    text: str

    def __call__(self, values: Mapping[str, Any]) -> bool:
        return bool(self.test(values))

    def __and__(self, other: "Condition") -> "Condition":
        return Condition(lambda v: self(v) and other(v), self.reads | other.reads,
                         f"{self.text} and {other.text}")

    def __or__(self, other: "Condition") -> "Condition":
        return Condition(lambda v: self(v) or other(v), self.reads | other.reads,
                         f"({self.text} or {other.text})")

    def __invert__(self) -> "Condition":
        return Condition(lambda v: not self(v), self.reads, f"not ({self.text})")

    def __repr__(self) -> str:
        return f"Condition({self.text})"


def _same(value: Any, allowed: Any) -> bool:
    # True == 1 in Python; a boolean never matches a number here.
    return isinstance(value, bool) == isinstance(allowed, bool) and value == allowed


def _words(values: Iterable[Any]) -> str:
    return ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)


def is_one_of(knob: str, *values: Any) -> Condition:
    """The knob has one of ``values``."""
    text = f"{knob} is {_words(values)}" if len(values) == 1 else f"{knob} in [{_words(values)}]"
    return Condition(lambda v: any(_same(v[knob], a) for a in values), frozenset({knob}), text)


def is_none_of(knob: str, *values: Any) -> Condition:
    """The knob has none of ``values``."""
    text = f"{knob} is not {_words(values)}" if len(values) == 1 else f"{knob} not in [{_words(values)}]"
    return Condition(lambda v: not any(_same(v[knob], a) for a in values), frozenset({knob}), text)


def derived(test: Callable[[Mapping[str, Any]], bool], reads: Iterable[str], text: str) -> Condition:
    """A condition computed from several knobs (e.g. "fewer selected than candidates")."""
    return Condition(test, frozenset(reads), text)
