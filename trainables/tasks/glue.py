"""The GLUE tasks: from the Hugging Face hub, or from local files in the hub's schema.

Local files: ``<data_dir>/glue/<task>/{train,validation,test}.{tsv,csv,jsonl}``
with the columns of ``datasets.load_dataset("glue", task)`` (e.g. ``sentence``;
``sentence1``/``sentence2``; ``question1``/``question2``; ``premise``/``hypothesis``;
``question``/``sentence``) and ``label`` as a class id or its target word
("entailment"). Local files win over the hub.

Pair tasks join their two fields as ``"<name1>: <a> <name2>: <b>"`` with the
schema's field names (T5's GLUE format without the task prefix: the router, not
the text, tells tasks apart), e.g. ``"premise: A man sleeps. hypothesis: A person rests."``.

GLUE's test labels are hidden (the hub gives -1). When a task has no labelled
test split, ``test`` is the published validation split and ``validation`` a fixed
held-out part of train (10%, at most 1,000 examples, seed 0), as is usual for
prompt-tuning studies on GLUE; ``train`` is the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks.sources import DataSource, RawRows, find_file, read_table
from routed_study.trainables.tasks.spec import TaskSpec, register_task

SUFFIXES = (".tsv", ".csv", ".jsonl")
HELD_OUT_FRACTION, HELD_OUT_MAX, HELD_OUT_SEED = 0.1, 1000, 0
# The hub names some validation splits differently.
HUB_VALIDATION = {"mnli": "validation_matched"}


@dataclass(frozen=True)
class GlueSource(DataSource):
    fields: tuple[str, ...]   # one field, or the two fields of a pair task

    def read(self, task: TaskSpec, split: str, data_dir: Path) -> RawRows:
        available = self._available(task, data_dir)
        if "test" in available and self._labelled(available["test"]):
            return available[split]
        # Hidden test labels: test <- validation, validation <- a fixed held-out part of train.
        if split == "test":
            return available["validation"]
        held_out, rest = self._held_out(available["train"])
        return available["train"].subset(held_out if split == "validation" else rest)

    def _available(self, task: TaskSpec, data_dir: Path) -> dict[str, RawRows]:
        folder = data_dir / "glue" / task.name
        files = {split: find_file(folder, split, SUFFIXES) for split in ("train", "validation", "test")}
        if files["train"] and files["validation"]:
            return {split: self._rows(read_table(path, (*self.fields, "label")), str(path))
                    for split, path in files.items() if path}
        if any(files.values()):
            raise InputError(f"{folder}: GLUE task {task.name} needs at least train and validation files "
                             f"(train.tsv, validation.tsv; or .csv / .jsonl)")
        return self._from_hub(task, folder)

    def _from_hub(self, task: TaskSpec, folder: Path) -> dict[str, RawRows]:
        if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise InputError(f"GLUE task {task.name}: no local files in {folder} and the hub is offline "
                             f"(HF_DATASETS_OFFLINE=1); put train/validation files there in the GLUE schema")
        import datasets

        try:
            hub = datasets.load_dataset("glue", task.name)
        except Exception as exc:  # network, auth or hub errors all mean: no data
            raise InputError(f"GLUE task {task.name}: cannot load from the hub "
                             f"({str(exc).strip().splitlines()[0]}); put local files in {folder}") from None
        splits = {"train": "train", "validation": HUB_VALIDATION.get(task.name, "validation")}
        return {ours: self._rows(hub[theirs].to_dict(), f"hub:glue/{task.name}/{theirs}")
                for ours, theirs in splits.items()}

    def _rows(self, columns: dict[str, list], origin: str) -> RawRows:
        if len(self.fields) == 1:
            texts = columns[self.fields[0]]
        else:
            first, second = self.fields
            texts = [None if a is None or b is None or not str(a).strip() or not str(b).strip()
                     else f"{first}: {a} {second}: {b}" for a, b in zip(columns[first], columns[second])]
        labels = columns["label"]
        return RawRows(origin, list(texts), list(labels), [], list(range(1, len(labels) + 1)))

    @staticmethod
    def _labelled(rows: RawRows) -> bool:
        return any(str(label).strip() != "-1" for label in rows.label)

    @staticmethod
    def _held_out(train: RawRows) -> tuple[list[int], list[int]]:
        """(held-out indices, remaining indices) of train, fixed for every study."""
        import numpy as np

        count = len(train.rows)
        size = max(1, min(HELD_OUT_MAX, int(count * HELD_OUT_FRACTION)))
        order = np.random.default_rng(HELD_OUT_SEED).permutation(count)
        return sorted(order[:size].tolist()), sorted(order[size:].tolist())


def _pair(name, first, second, label_texts, target_texts, metrics=("accuracy",), main="accuracy", labels=None):
    register_task(TaskSpec(name, "classification", label_texts, target_texts, None, metrics, main, "glue", labels),
                  GlueSource((first, second)))


register_task(TaskSpec("cola", "classification",
                       ("an ungrammatical sentence", "a grammatical sentence"), ("unacceptable", "acceptable"),
                       None, ("mcc", "accuracy"), "mcc", "glue", "acceptability"), GlueSource(("sentence",)))
register_task(TaskSpec("sst2", "classification", ("a negative review", "a positive review"),
                       ("negative", "positive"), None, ("accuracy",), "accuracy", "glue", "sentiment"),
              GlueSource(("sentence",)))
_pair("mrpc", "sentence1", "sentence2",
      ("two sentences with different meanings", "two sentences with the same meaning"),
      ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1", "paraphrase")
register_task(TaskSpec("stsb", "regression", ("two unrelated sentences", "two sentences with the same meaning"),
                       (), (0.0, 5.0), ("pearson", "spearman"), "pearson", "glue", "similarity"),
              GlueSource(("sentence1", "sentence2")))
_pair("qqp", "question1", "question2",
      ("two different questions", "two questions asking the same thing"),
      ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1", "paraphrase")
_pair("mnli", "premise", "hypothesis",
      ("a hypothesis that follows from the premise", "a hypothesis that may or may not be true",
       "a hypothesis that contradicts the premise"),
      ("entailment", "neutral", "contradiction"), labels="entailment")
_pair("qnli", "question", "sentence",
      ("a sentence that answers the question", "a sentence that does not answer the question"),
      ("entailment", "not_entailment"), labels="entailment")
_pair("rte", "sentence1", "sentence2",
      ("a hypothesis that follows from the text", "a hypothesis that does not follow from the text"),
      ("entailment", "not_entailment"), labels="entailment")
