"""load_split on the prepared-CSV layout: columns, sampling, and every kind of malformed file."""

from __future__ import annotations

import re

import pytest

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks import load_split


def write(data_dir, task, split, content):
    path = data_dir / task / f"{split}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def sentiment_rows(n):
    return "text,label\n" + "".join(f"\"review number {i}, {'good' if i % 2 else 'bad'}\","
                                    f"{'positive' if i % 2 else 'negative'}\n" for i in range(n))


def test_classification_columns_and_types(tmp_path):
    write(tmp_path, "rt_sentiment", "train", 'text,label\n"fine, really",positive\n  dull   film ,0\nNA,1\n')
    ds = load_split("rt_sentiment", "train", tmp_path)
    assert ds.column_names == ["text", "target", "label"]
    assert ds["label"] == [1, 0, 1]                      # by word or by id
    assert ds["text"] == ["fine, really", "dull film", "NA"]  # "NA" is text, not a missing value
    assert ds["target"] == ["positive", "negative", "positive"]
    assert ds.features["label"].dtype == "int64"


def test_regression_columns_and_types(tmp_path):
    write(tmp_path, "vader_tweets", "validation", "text,label\nyay,2.5\nmeh,-0.25\nugh,-4\n")
    ds = load_split("vader_tweets", "validation", tmp_path)
    assert ds["label"] == [2.5, -0.25, -4.0] and ds.features["label"].dtype == "float64"
    assert ds["target"] == ["2.5", "-0.2", "-4.0"]


def test_limit_is_deterministic_by_seed(tmp_path):
    write(tmp_path, "rt_sentiment", "train", sentiment_rows(50))
    first = load_split("rt_sentiment", "train", tmp_path, limit=10, seed=3)
    again = load_split("rt_sentiment", "train", tmp_path, limit=10, seed=3)
    other = load_split("rt_sentiment", "train", tmp_path, limit=10, seed=4)
    assert len(first) == 10 and first["text"] == again["text"]
    assert first["text"] != other["text"]
    assert len(load_split("rt_sentiment", "train", tmp_path, limit=500)) == 50


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_bad_limit(tmp_path, limit):
    write(tmp_path, "rt_sentiment", "train", sentiment_rows(3))
    with pytest.raises(InputError, match="limit must be a positive integer"):
        load_split("rt_sentiment", "train", tmp_path, limit=limit)


def test_missing_data_says_how_to_prepare(tmp_path):
    with pytest.raises(InputError, match=r"task bbc_topic: .*bbc_topic/test.csv not found; run "
                                         r"`routed-study data prepare --data-dir "):
        load_split("bbc_topic", "test", tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(InputError, match="unknown split 'dev'; allowed: 'train', 'validation', 'test'"):
        load_split("bbc_topic", "dev", tmp_path)


MALFORMED = [
    ("rt_sentiment", "text,labels\na,positive\n", r"missing column 'label'; found columns: 'text', 'labels'"),
    ("rt_sentiment", "", r"empty file"),
    ("rt_sentiment", "text,label\n", r"no data rows"),
    ("vader_amazon", "text,label\ngood,1.5\nbad,very low\n", r"row 2: regression label 'very low' of task "
                                                            r"vader_amazon is not a number in \[-4, 4\]"),
    ("vader_amazon", "text,label\ngood,1.5\nbad,\n", r"row 2: regression label '' .* not a number"),
    ("vader_amazon", "text,label\ngood,4.5\n", r"row 1: regression label '4.5' .* not a number in \[-4, 4\]"),
    ("bbc_topic", "text,label\na,sport\nb,tech\nc,weather\n",
     r"row 3: unknown class label 'weather' for task bbc_topic; allowed: 0..4 or 'business', "
     r"'entertainment', 'politics', 'sport', 'tech'"),
    ("bbc_topic", "text,label\na,5\n", r"row 1: unknown class label '5'"),
    ("rt_subjectivity", "text,label\na,plot\n   ,review\n", r"row 2: empty text"),
    ("rt_subjectivity", "text,label\na,plot\nb,review,extra\n", r"cannot parse: .*Expected 2 fields in line 3"),
    ("rt_subjectivity", "text,label\na,plot,extra\nb,review\n", r"a data row has more fields than the header"),
    ("rt_subjectivity", 'text,label\n"multi\nline",plot\nb,nope\n', r"row 2: unknown class label 'nope'"),
]


@pytest.mark.parametrize("task, content, message", MALFORMED,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(MALFORMED)])
def test_malformed_file_names_file_and_row(tmp_path, task, content, message):
    path = write(tmp_path, task, "train", content)
    with pytest.raises(InputError, match=re.escape(str(path)) + ": " + message) as info:
        load_split(task, "train", tmp_path)
    assert "\n" not in str(info.value)
