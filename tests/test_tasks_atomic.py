"""ATOMIC-2020 relations as generation tasks, from local TSV fixtures."""

from __future__ import annotations

import pytest

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks import get_task, load_split, score_predictions, task_names
from routed_study.trainables.tasks.atomic import RELATIONS

ROWS = [
    ("PersonX pays PersonY a compliment", "xAttr", "kind"),
    ("PersonX pays PersonY a compliment", "xIntent", "to be nice"),
    ("PersonX goes to the mall", "xWant", "to buy clothes"),
    ("PersonX goes to the mall", "xAttr", "none"),
    ('PersonX says "hi"', "xAttr", "friendly"),
    ("PersonX wins the race", "oEffect", "none"),
    ("PersonX wins the race", "oEffect", "they lose"),
]


def write(folder, name, rows, header=False):
    folder.mkdir(parents=True, exist_ok=True)
    lines = (["head\trelation\ttail"] if header else []) + ["\t".join(r) for r in rows]
    (folder / name).write_text("\n".join(lines) + "\n")


@pytest.fixture
def data_dir(tmp_path):
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        write(tmp_path / "atomic", name, ROWS, header=name == "test.tsv")
    return tmp_path


def test_every_relation_is_a_generation_task():
    assert [n for n in task_names() if n.startswith("atomic_")] == [f"atomic_{r}" for r in RELATIONS]
    spec = get_task("atomic_xIntent")
    assert (spec.kind, spec.metrics, spec.main_metric, spec.family) == ("generation", ("rouge_l",), "rouge_l", "atomic")


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_rows_of_one_relation_without_none(data_dir, split):
    ds = load_split("atomic_xAttr", split, data_dir)
    assert ds.column_names == ["text", "target"]
    assert ds["text"] == ["PersonX pays PersonY a compliment", 'PersonX says "hi"']
    assert ds["target"] == ["kind", "friendly"]
    assert load_split("atomic_oEffect", split, data_dir)["target"] == ["they lose"]


def test_generation_scoring(data_dir):
    ds = load_split("atomic_xAttr", "test", data_dir)
    assert score_predictions("atomic_xAttr", ds["target"], ds["target"])["main"] == pytest.approx(100.0)


def test_relation_without_rows(data_dir):
    with pytest.raises(InputError, match=r"train.tsv: no rows with relation 'HinderedBy' \(task atomic_HinderedBy\)"):
        load_split("atomic_HinderedBy", "train", data_dir)


def test_unknown_relation_names_row(tmp_path):
    write(tmp_path / "atomic", "dev.tsv", ROWS[:2] + [("PersonX runs", "xWnat", "to rest")], header=True)
    with pytest.raises(InputError, match=r"dev.tsv: row 3: unknown relation 'xWnat'; allowed: xAttr, "):
        load_split("atomic_xWant", "validation", tmp_path)


def test_empty_tail_names_row(tmp_path):
    write(tmp_path / "atomic", "train.tsv", [("PersonX runs", "xWant", "to rest"), ("PersonX sits", "xWant", " ")])
    with pytest.raises(InputError, match=r"train.tsv: row 2: empty target text"):
        load_split("atomic_xWant", "train", tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(InputError, match=r"task atomic_xAttr: .*atomic/test.tsv not found; put the ATOMIC-2020"):
        load_split("atomic_xAttr", "test", tmp_path)
