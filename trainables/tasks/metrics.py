"""Task metrics (a registry of named functions) and :func:`score_predictions`.

Each metric maps (predictions, references) to one float. ``kind`` says what it
consumes: class ids ("label"), real values ("value") or strings ("text").
Correlation-like metrics (``clip_at_zero``) are clipped below at 0 when they
become a task's 0-100 ``main`` score, so a worse-than-chance trial does not pull a
study's mean below the floor of the other tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from routed_study.trainables.tasks.spec import TaskSpec, get_task
from routed_study.trainables.tasks.text2text import parse_generation


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str            # "label" | "value" | "text"
    clip_at_zero: bool   # correlations and MCC range over [-1, 1]
    fn: Callable[[Sequence, Sequence, TaskSpec], float]


METRICS: dict[str, Metric] = {}


def register_metric(name: str, kind: str, clip_at_zero: bool = False):
    """Decorator: register ``fn(predictions, references, spec) -> float`` as ``name``."""
    def add(fn):
        METRICS[name] = Metric(name, kind, clip_at_zero, fn)
        return fn
    return add


def _class_ids(spec: TaskSpec) -> list[int]:
    # Passing the class ids keeps an invalid prediction (-1) from becoming a class.
    return list(range(spec.num_labels))


@register_metric("accuracy", "label")
def accuracy(predictions, references, spec) -> float:
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(references, predictions))


@register_metric("macro_f1", "label")
def macro_f1(predictions, references, spec) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(references, predictions, labels=_class_ids(spec), average="macro",
                          zero_division=0))


@register_metric("f1", "label")
def f1(predictions, references, spec) -> float:
    """F1 of class 1 (the positive class of the GLUE pair tasks)."""
    from sklearn.metrics import f1_score
    return float(f1_score(references, predictions, labels=[1], average="macro", zero_division=0))


@register_metric("mcc", "label", clip_at_zero=True)
def mcc(predictions, references, spec) -> float:
    from sklearn.metrics import matthews_corrcoef
    return float(matthews_corrcoef(references, predictions))


def _correlation(statistic, predictions, references) -> float:
    predictions, references = np.asarray(predictions, float), np.asarray(references, float)
    # Constant inputs have no correlation; scoring them 0 keeps the study's mean finite.
    if len(predictions) < 2 or np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return 0.0
    return float(statistic(predictions, references).statistic)


@register_metric("pearson", "value", clip_at_zero=True)
def pearson(predictions, references, spec) -> float:
    from scipy.stats import pearsonr
    return _correlation(pearsonr, predictions, references)


@register_metric("spearman", "value", clip_at_zero=True)
def spearman(predictions, references, spec) -> float:
    from scipy.stats import spearmanr
    return _correlation(spearmanr, predictions, references)


def _tokens(text: str) -> list[str]:
    # The tokenisation of the reference ROUGE scorer without stemming.
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_pair(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one prediction against one reference (Lin, 2004)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@register_metric("rouge_l", "text")
def rouge_l(predictions, references, spec) -> float:
    return float(np.mean([rouge_l_pair(str(p), str(r)) for p, r in zip(predictions, references)]))


def score_predictions(task: "str | TaskSpec", predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Every metric of ``task`` plus ``main``: the main metric x100 (clipped at 0 if a correlation).

    Classification predictions are class ids (-1 = no valid class) and regression
    predictions numbers; generated strings are accepted for both and read with
    :func:`~trainables.tasks.text2text.parse_generation`.
    """
    spec = get_task(task)
    if len(predictions) != len(references) or not len(references):
        raise ValueError(f"task {spec.name}: {len(predictions)} predictions for {len(references)} references")
    predictions = [parse_generation(spec, p) if isinstance(p, str) and spec.kind != "generation" else p
                   for p in predictions]
    scores = {name: METRICS[name].fn(predictions, references, spec) for name in spec.metrics}
    main = METRICS[spec.main_metric]
    value = max(scores[main.name], 0.0) if main.clip_at_zero else scores[main.name]
    scores["main"] = 100.0 * value
    return scores
