"""Metrics: every registered one is maximal on perfect predictions; scores match hand computations."""

from __future__ import annotations

import math

import pytest

from routed_study.trainables.tasks import METRICS, get_task, score_predictions
from routed_study.trainables.tasks.metrics import rouge_l_pair

# A task whose inputs suit each metric kind.
TASK_FOR_KIND = {"label": "mnli", "value": "stsb", "text": "atomic_xAttr"}
REFERENCES = {"label": [0, 1, 2, 1, 0, 2], "value": [0.0, 1.5, 3.0, 4.2, 5.0, 2.2],
              "text": ["to be kind", "helpful", "a good person", "brave", "rich and famous", "tired"]}
WRONG = {"label": [1, 2, 0, 0, 2, 1], "value": [5.0, 3.5, 2.0, 0.2, 0.0, 2.9],
         "text": ["x", "y", "z", "w", "v", "u"]}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_is_best_on_perfect_predictions(name):
    metric = METRICS[name]
    spec = get_task(TASK_FOR_KIND[metric.kind])
    refs = REFERENCES[metric.kind]
    assert metric.fn(refs, refs, spec) == pytest.approx(1.0)
    assert metric.fn(WRONG[metric.kind], refs, spec) < 0.5


def test_classification_scores_by_hand():
    scores = score_predictions("mrpc", [1, 1, 0, 0], [1, 0, 0, 1])
    assert scores["accuracy"] == 0.5
    assert scores["f1"] == pytest.approx(0.5)  # class 1: precision 1/2, recall 1/2
    assert scores["main"] == pytest.approx(50.0)


def test_invalid_prediction_counts_as_wrong_not_as_a_class():
    scores = score_predictions("bbc_topic", [0, 1, -1, 3], [0, 1, 2, 3])
    assert scores["accuracy"] == 0.75
    # class 2 has F1 0; the others 1; -1 is not a fifth class: (1+1+0+1+0)/5 (class 4 absent, F1 0).
    assert scores["macro_f1"] == pytest.approx(0.6)


def test_generated_strings_are_parsed():
    assert score_predictions("rte", ["entailment", "Not_entailment.", "maybe"], [0, 1, 1])["accuracy"] == \
        pytest.approx(2 / 3)
    assert score_predictions("stsb", ["1.0", "2.0", "4"], [1.0, 2.0, 4.0])["pearson"] == pytest.approx(1.0)


def test_correlation_main_is_clipped_at_zero_and_raw_metric_is_not():
    scores = score_predictions("vader_tweets", [3.0, 1.0, -1.0, -3.0], [-3.0, -1.0, 1.0, 3.0])
    assert scores["pearson"] == pytest.approx(-1.0) and scores["spearman"] == pytest.approx(-1.0)
    assert scores["main"] == 0.0
    cola = score_predictions("cola", [1, 0, 1, 0], [0, 1, 0, 1])
    assert cola["mcc"] == pytest.approx(-1.0) and cola["main"] == 0.0


def test_constant_predictions_have_zero_correlation():
    scores = score_predictions("vader_nyt", [0.5, 0.5, 0.5], [-1.0, 0.0, 2.0])
    assert scores == {"pearson": 0.0, "spearman": 0.0, "main": 0.0}


def test_rouge_l_by_hand():
    # LCS("the cat sat down", "the cat is down") = "the cat down" = 3; P = R = 3/4.
    assert rouge_l_pair("The cat sat down.", "the cat is down") == pytest.approx(0.75)
    # P = 2/2, R = 2/4 -> F1 = 2/3
    assert rouge_l_pair("cat down", "the cat is down") == pytest.approx(2 / 3)
    assert rouge_l_pair("", "anything") == 0.0
    scores = score_predictions("atomic_xWant", ["to eat", "nothing here"], ["to eat", "to sleep"])
    assert scores["rouge_l"] == pytest.approx(0.5) and scores["main"] == pytest.approx(50.0)


def test_scores_are_finite_floats_scaled_main():
    scores = score_predictions("sst2", [0, 1, 1], [0, 1, 0])
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert scores["main"] == pytest.approx(100 * scores["accuracy"])


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        score_predictions("sst2", [0, 1], [0, 1, 1])
