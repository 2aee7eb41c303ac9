"""Where a task's examples come from, and :func:`load_split`.

A :class:`DataSource` reads one split of one task into :class:`RawRows` (text,
raw label or target, and the file and 1-based data row each example came from).
:func:`load_split` validates those rows the same way for every source — empty
text, non-numeric or out-of-range regression values, unknown classes are
InputErrors naming the file and row — and returns a ``datasets.Dataset`` with
columns ``text``, ``label`` (not for generation) and ``target``.

Files are read with ``datasets.load_dataset`` ("csv" for CSV/TSV, "json" for
JSON lines), every column as a string so that validation, not type inference,
decides what a value means.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from routed_study.trainables.errors import InputError, format_choices
from routed_study.trainables.tasks.spec import SPLITS, TaskSpec, get_source, get_task
from routed_study.trainables.tasks.text2text import format_target

PREPARE_HINT = "run `routed-study data prepare --data-dir {data_dir}`"


@dataclass
class RawRows:
    """One split as read, before validation. ``rows[i]`` is the 1-based data row of example i in ``origin``."""

    origin: str
    text: list[str] = field(default_factory=list)
    label: list[object] = field(default_factory=list)   # raw label (classification, regression)
    target: list[str] = field(default_factory=list)     # raw target text (generation)
    rows: list[int] = field(default_factory=list)

    def subset(self, indices: Sequence[int]) -> "RawRows":
        def pick(values: list) -> list:
            return [values[i] for i in indices] if values else []
        return RawRows(self.origin, pick(self.text), pick(self.label), pick(self.target), pick(self.rows))


class DataSource(ABC):
    """Reads the raw rows of one split of a task from ``data_dir``."""

    @abstractmethod
    def read(self, task: TaskSpec, split: str, data_dir: Path) -> RawRows:
        """Raise InputError (with a fix) when the data is missing or malformed."""


def read_table(path: Path, columns: Sequence[str] | None = None, header: bool = True) -> dict[str, list]:
    """Read a CSV, TSV or JSON-lines file through ``datasets``; every value a string (or None).

    With ``header=False`` the file has no header row and ``columns`` names its
    fields. With a header, ``columns`` are the ones that must be present.
    """
    import datasets
    import pandas as pd

    where = str(path)
    if path.stat().st_size == 0:
        raise InputError(f"{where}: empty file")
    suffix = path.suffix.lower()
    datasets.disable_progress_bars()  # one bar per read would flood the trial logs
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            first = next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])
        names = list(columns) if not header else first
        if header:
            _require_columns(where, names, columns or ())
        kwargs = dict(
            sep="\t" if suffix == ".tsv" else ",",
            # TSVs (GLUE, ATOMIC) carry bare quotes inside fields.
            quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            keep_default_na=False, index_col=False,
            features=datasets.Features({name: datasets.Value("string") for name in names}))
        if not header:
            kwargs.update(header=None, column_names=names)
        builder = "csv"
    elif suffix in (".jsonl", ".json"):
        builder, kwargs = "json", {}
    else:
        raise InputError(f"{where}: unsupported file type {suffix!r}; allowed: .csv, .tsv, .jsonl")
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header; that is malformed data.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = datasets.load_dataset(builder, data_files={"rows": str(path)}, split="rows", **kwargs)
    except Exception as exc:  # datasets wraps the parser's error; report the parser's words
        cause = exc.__cause__ or exc
        if "corresponds to no data" in str(exc):
            raise InputError(f"{where}: no data rows") from None
        if isinstance(cause, pd.errors.ParserWarning):
            raise InputError(f"{where}: a data row has more fields than the header") from None
        raise InputError(f"{where}: cannot parse: {str(cause).strip().splitlines()[0]}") from None
    if len(table) == 0:
        raise InputError(f"{where}: no data rows")
    if builder == "json":
        _require_columns(where, table.column_names, columns or ())
    data = table.to_dict()
    return {name: [None if v is None else str(v) for v in values] for name, values in data.items()}


def _require_columns(where: str, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(f"{where}: missing column {missing[0]!r}; found columns: "
                         f"{format_choices(present) or 'none'}; required: {format_choices(required)}")


def find_file(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """The first ``folder/stem.<suffix>`` that exists."""
    for suffix in suffixes:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _class_id(spec: TaskSpec, value: object, where: str) -> int:
    text = "" if value is None else str(value).strip()
    if text.lstrip("-").isdigit() and 0 <= int(text) < spec.num_labels:
        return int(text)
    lowered = [t.lower() for t in spec.target_texts]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise InputError(f"{where}: unknown class label {text!r} for task {spec.name}; allowed: "
                     f"0..{spec.num_labels - 1} or {format_choices(spec.target_texts)}")


def _value(spec: TaskSpec, value: object, where: str) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    low, high = spec.value_range
    if not math.isfinite(number) or not low <= number <= high:
        raise InputError(f"{where}: regression label {value!r} of task {spec.name} is not a number "
                         f"in [{low:g}, {high:g}]")
    return number


def validate(spec: TaskSpec, raw: RawRows):
    """RawRows -> ``datasets.Dataset`` (text, label, target); InputError on the first bad row."""
    import datasets

    texts, labels, targets = [], [], []
    for i, row in enumerate(raw.rows):
        where = f"{raw.origin}: row {row}"
        text = raw.text[i]
        if text is None or not str(text).strip():
            raise InputError(f"{where}: empty text")
        texts.append(" ".join(str(text).split()))
        if spec.kind == "generation":
            target = raw.target[i]
            if target is None or not str(target).strip():
                raise InputError(f"{where}: empty target text")
            targets.append(str(target).strip())
            continue
        if spec.kind == "classification":
            label = _class_id(spec, raw.label[i], where)
        else:
            label = _value(spec, raw.label[i], where)
        labels.append(label)
        targets.append(format_target(spec, label))
    columns = {"text": texts, "target": targets}
    features = {"text": datasets.Value("string"), "target": datasets.Value("string")}
    if spec.kind != "generation":
        columns["label"] = labels
        features["label"] = datasets.Value("int64" if spec.kind == "classification" else "float64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def load_split(task: "str | TaskSpec", split: str, data_dir: "str | os.PathLike", limit: int | None = None,
               seed: int = 0):
    """Validated examples of one split; ``limit`` of them sampled deterministically by ``seed``."""
    spec = get_task(task)
    if split not in SPLITS:
        raise InputError(f"task {spec.name}: unknown split {split!r}; allowed: {format_choices(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"task {spec.name}: limit must be a positive integer or None, got {limit!r}")
    dataset = validate(spec, get_source(spec).read(spec, split, Path(data_dir)))
    if limit is not None and limit < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(limit)).flatten_indices()
    return dataset
