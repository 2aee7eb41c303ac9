"""Every registered task has a coherent spec; names and text round-trips behave."""

from __future__ import annotations

import pytest

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks import METRICS, format_target, get_task, parse_generation, task_names

CONTRACT_TASKS = ["rt_sentiment", "rt_subjectivity", "vader_movies", "vader_tweets", "vader_amazon", "vader_nyt",
                  "bbc_topic", "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte",
                  "atomic_xAttr", "atomic_xIntent", "atomic_xWant", "atomic_oEffect"]
METRIC_KIND = {"classification": "label", "regression": "value", "generation": "text"}


def test_contract_tasks_are_registered():
    assert set(CONTRACT_TASKS) <= set(task_names())
    assert len(task_names()) == len(set(task_names()))


@pytest.mark.parametrize("name", task_names())
def test_spec_is_coherent(name):
    spec = get_task(name)
    assert spec.name == name and get_task(spec) is spec
    assert spec.metrics and spec.main_metric in spec.metrics
    for metric in spec.metrics:
        assert METRICS[metric].kind == METRIC_KIND[spec.kind], (name, metric)
    if spec.kind == "classification":
        assert len(set(spec.label_texts)) == len(spec.label_texts) == len(spec.target_texts) == spec.num_labels
        assert len({t.lower() for t in spec.target_texts}) == spec.num_labels
    if spec.kind == "regression":
        low, high = spec.value_range
        assert low < high and len(spec.label_texts) == 2


@pytest.mark.parametrize("name", [n for n in task_names() if get_task(n).kind != "generation"])
def test_target_text_parses_back_to_label(name):
    spec = get_task(name)
    if spec.kind == "classification":
        for label in range(spec.num_labels):
            assert parse_generation(spec, format_target(spec, label)) == label
            assert parse_generation(spec, f" {format_target(spec, label).upper()}. ") == label
        assert parse_generation(spec, "zzz qqq") == -1
    else:
        low, high = spec.value_range
        for value in (low, (low + high) / 2, high):
            assert parse_generation(spec, format_target(spec, value)) == pytest.approx(value, abs=0.05)
        assert parse_generation(spec, f"{high + 10}") == high          # clipped into the range
        assert parse_generation(spec, "no number") == (low + high) / 2  # neutral guess


def test_parse_prefers_longest_matching_word():
    assert parse_generation("mrpc", "not_equivalent because") == 0
    assert parse_generation("mrpc", "equivalent, surely") == 1
    assert parse_generation("atomic_xAttr", "  kind \n") == "kind"


def test_unknown_task_names_the_allowed_ones():
    with pytest.raises(InputError, match=r"setup: key 'tasks': unknown task 'rt_sentimnet' \(did you mean "
                                         r"'rt_sentiment'\?\); allowed tasks: 'rt_sentiment'"):
        get_task("rt_sentimnet", where="setup: key 'tasks'")
