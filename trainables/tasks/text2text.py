"""The text-to-text view of a task: label -> target text, generated text -> label.

Seq2seq backbones train on ``target`` strings and are scored on what they
generate; these two functions are inverse on every valid label.
"""

from __future__ import annotations

import math
import re

from routed_study.trainables.tasks.spec import TaskSpec, get_task

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _normalise(text: str) -> str:
    # "Not_Equivalent." and "not equivalent" are the same answer.
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def format_target(task: "str | TaskSpec", label: "int | float | str") -> str:
    """The seq2seq target text of a (validated) label."""
    spec = get_task(task)
    if spec.kind == "classification":
        return spec.target_texts[int(label)]
    if spec.kind == "regression":
        return f"{float(label):.1f}"
    return str(label)


def parse_generation(task: "str | TaskSpec", text: str) -> "int | float | str":
    """Seq2seq output -> label id (-1 when no class matches) / value / stripped text.

    A class matches when the normalised output equals its target word, or else
    starts with it (longest word first). A regression output takes its first
    number, clipped to the task's range; an output without a number reads as the
    centre of the range (a neutral guess, so correlations stay defined).
    """
    spec = get_task(task)
    if spec.kind == "generation":
        return text.strip()
    if spec.kind == "regression":
        low, high = spec.value_range
        match = _NUMBER.search(text)
        value = float(match.group()) if match else math.nan
        if not math.isfinite(value):
            return (low + high) / 2
        return min(max(value, low), high)
    answer = _normalise(text)
    words = [_normalise(t) for t in spec.target_texts]
    if answer in words:
        return words.index(answer)
    for index in sorted(range(len(words)), key=lambda i: -len(words[i])):
        if answer.startswith(words[index] + " "):
            return index
    return -1
