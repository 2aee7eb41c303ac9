"""GLUE tasks from local files in the hub's schema; the hub itself is offline here."""

from __future__ import annotations

import json

import pytest

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks import get_task, load_split, task_names
from routed_study.trainables.tasks.glue import GlueSource
from routed_study.trainables.tasks.spec import get_source

GLUE = [n for n in task_names() if get_task(n).family == "glue"]


def fields(task):
    return get_source(task).fields


def label_value(task, i):
    spec = get_task(task)
    return f"{(i % 26) / 5:.1f}" if spec.kind == "regression" else str(i % spec.num_labels)


def write_tsv(path, task, n, start=0, labels=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    names = (*fields(task), "label", "idx")
    lines = ["\t".join(names)]
    for i in range(start, start + n):
        texts = [f'{name} "{i}" it\'s' for name in fields(task)]  # bare quotes: TSVs are not quoted
        label = labels[i - start] if labels else label_value(task, i)
        lines.append("\t".join([*texts, label, str(i)]))
    path.write_text("\n".join(lines) + "\n")


def test_all_glue_tasks_are_registered():
    assert GLUE == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    assert get_task("cola").main_metric == "mcc" and get_task("stsb").main_metric == "pearson"
    assert get_task("mrpc").metrics == ("f1", "accuracy") and get_task("qqp").metrics == ("f1", "accuracy")
    assert {get_task(t).main_metric for t in ("sst2", "mnli", "qnli", "rte")} == {"accuracy"}


@pytest.mark.parametrize("task", GLUE)
def test_hidden_test_labels_derive_splits(tmp_path, task):
    folder = tmp_path / "glue" / task
    write_tsv(folder / "train.tsv", task, 40)
    write_tsv(folder / "validation.tsv", task, 6, start=1000)
    write_tsv(folder / "test.tsv", task, 5, start=2000, labels=["-1"] * 5)  # as the hub publishes it
    train = load_split(task, "train", tmp_path)
    validation = load_split(task, "validation", tmp_path)
    test = load_split(task, "test", tmp_path)
    assert (len(train), len(validation), len(test)) == (36, 4, 6)
    assert not set(train["text"]) & set(validation["text"])
    assert all('"100' in t for t in test["text"])  # the published validation split
    first = fields(task)[0]
    if len(fields(task)) == 2:
        assert test[0]["text"] == f'{first}: {first} "1000" it\'s {fields(task)[1]}: {fields(task)[1]} "1000" it\'s'
    else:
        assert test[0]["text"] == f'{first} "1000" it\'s'
    assert set(test.column_names) == {"text", "label", "target"}


def test_labelled_test_file_is_used_as_is(tmp_path):
    folder = tmp_path / "glue" / "rte"
    write_tsv(folder / "train.tsv", "rte", 10)
    write_tsv(folder / "validation.tsv", "rte", 3, start=100)
    write_tsv(folder / "test.tsv", "rte", 4, start=200, labels=["entailment", "not_entailment", "1", "0"])
    assert len(load_split("rte", "train", tmp_path)) == 10
    assert len(load_split("rte", "validation", tmp_path)) == 3
    test = load_split("rte", "test", tmp_path)
    assert test["label"] == [0, 1, 1, 0] and test["target"][0] == "entailment"


def test_csv_and_jsonl_files(tmp_path):
    folder = tmp_path / "glue" / "mnli"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text('premise,hypothesis,label\n"A, b",c,neutral\nd,e,2\n')
    rows = [{"premise": "p", "hypothesis": "h", "label": 0}, {"premise": "q", "hypothesis": "i", "label": 2}]
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = load_split("mnli", "train", tmp_path)
    assert train["label"] == [1, 2] and train["text"][0] == "premise: A, b hypothesis: c"
    assert load_split("mnli", "validation", tmp_path)["target"] == ["entailment", "contradiction"]


def test_stsb_is_regression_in_zero_to_five(tmp_path):
    folder = tmp_path / "glue" / "stsb"
    write_tsv(folder / "train.tsv", "stsb", 20)
    write_tsv(folder / "validation.tsv", "stsb", 3, labels=["0.0", "2.4", "6.0"])
    with pytest.raises(InputError, match=r"validation.tsv: row 3: regression label '6.0' of task stsb is not a "
                                         r"number in \[0, 5\]"):
        load_split("stsb", "test", tmp_path)


def test_held_out_is_fixed_across_calls(tmp_path):
    folder = tmp_path / "glue" / "sst2"
    write_tsv(folder / "train.tsv", "sst2", 30)
    write_tsv(folder / "validation.tsv", "sst2", 3)
    assert load_split("sst2", "validation", tmp_path)["text"] == load_split("sst2", "validation", tmp_path)["text"]


def test_error_row_refers_to_the_train_file(tmp_path):
    folder = tmp_path / "glue" / "cola"
    labels = [str(i % 2) for i in range(30)]
    labels[7] = "maybe"
    write_tsv(folder / "train.tsv", "cola", 30, labels=labels)
    write_tsv(folder / "validation.tsv", "cola", 3)
    with pytest.raises(InputError, match=r"train.tsv: row 8: unknown class label 'maybe' for task cola; "
                                         r"allowed: 0..1 or 'unacceptable', 'acceptable'"):
        load_split("cola", "train", tmp_path)


def test_missing_column(tmp_path):
    folder = tmp_path / "glue" / "qqp"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("question1\tlabel\na\t1\n")
    (folder / "validation.tsv").write_text("question1\tquestion2\tlabel\na\tb\t1\n")
    with pytest.raises(InputError, match=r"train.tsv: missing column 'question2'"):
        load_split("qqp", "train", tmp_path)


def test_only_some_files_is_an_error(tmp_path):
    write_tsv(tmp_path / "glue" / "mrpc" / "train.tsv", "mrpc", 5)
    with pytest.raises(InputError, match="needs at least train and validation files"):
        load_split("mrpc", "train", tmp_path)


def test_offline_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match=r"GLUE task cola: no local files in .*glue/cola and the hub is "
                                         r"offline \(HF_DATASETS_OFFLINE=1\)"):
        load_split("cola", "train", tmp_path)


def test_source_is_a_glue_source():
    assert all(isinstance(get_source(t), GlueSource) for t in GLUE)
