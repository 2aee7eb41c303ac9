"""What a task is (:class:`TaskSpec`) and the registry of named tasks.

A task couples a spec (kind, verbalizer texts, metrics) with the
:class:`~trainables.tasks.sources.DataSource` that reads its examples. The
built-in tasks register themselves in ``trainables.tasks.offline``, ``.glue`` and
``.atomic`` (imported by the package); a new task is one :func:`register_task` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from routed_study.trainables.errors import InputError, did_you_mean, format_choices

if TYPE_CHECKING:  # sources import this module; the registry only stores them
    from routed_study.trainables.tasks.sources import DataSource

KINDS = ("classification", "regression", "generation")
FAMILIES = ("offline", "glue", "atomic")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskSpec:
    """Everything the model and the scorer need to know about one task."""

    name: str = field(metadata={"help": "Registry name, e.g. 'rt_sentiment'."})
    kind: str = field(metadata={"help": "classification, regression or generation."})
    label_texts: tuple[str, ...] = field(metadata={
        "help": "Encoder verbalizer: one phrase per class id (classification) or the (low, high) "
                "anchors (regression); () for generation."})
    target_texts: tuple[str, ...] = field(metadata={
        "help": "Seq2seq target word per class id (classification); () otherwise. Data files may "
                "give a class by its id or by this word."})
    value_range: tuple[float, float] | None = field(metadata={
        "help": "Regression label range (labels outside it are rejected); None otherwise."})
    metrics: tuple[str, ...] = field(metadata={"help": "Every metric computed, names from trainables.tasks.metrics."})
    main_metric: str = field(metadata={"help": "The metric averaged into a study's score."})
    family: str = field(metadata={"help": "offline, glue or atomic: where the data comes from."})
    label_space: str | None = field(default=None, metadata={
        "help": "What the labels mean: tasks with the same label space share labels (sentiment on "
                "different corpora); None: a label space of its own (F16, knob task_set)."})

    def __post_init__(self) -> None:
        # A malformed spec is a programming error in the catalogue, caught at import.
        if self.kind not in KINDS or self.family not in FAMILIES:
            raise ValueError(f"task {self.name}: bad kind {self.kind!r} or family {self.family!r}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name}: main metric {self.main_metric!r} not in {self.metrics}")
        if self.kind == "classification" and not (
                len(self.label_texts) == len(self.target_texts) >= 2):
            raise ValueError(f"task {self.name}: needs one label text and one target text per class")
        if self.kind == "regression" and (len(self.label_texts) != 2 or self.value_range is None
                                          or self.target_texts):
            raise ValueError(f"task {self.name}: regression needs 2 anchor texts and a value range")
        if self.kind == "generation" and (self.label_texts or self.target_texts or self.value_range):
            raise ValueError(f"task {self.name}: generation tasks have no label texts or range")

    @property
    def labels(self) -> str:
        """The task's label space: its declared one, else its own name (shared with no other task)."""
        return self.label_space or self.name

    @property
    def num_labels(self) -> int:
        """Number of classes (classification), 1 (regression) or 0 (generation)."""
        return {"classification": len(self.label_texts), "regression": 1, "generation": 0}[self.kind]


@dataclass(frozen=True)
class _Entry:
    spec: TaskSpec
    source: "DataSource"


_REGISTRY: dict[str, _Entry] = {}


def register_task(spec: TaskSpec, source: "DataSource") -> TaskSpec:
    """Add a task to the registry; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = _Entry(spec, source)
    return spec


def task_names() -> list[str]:
    """Every registered task name, in registration order (offline, GLUE, ATOMIC)."""
    return list(_REGISTRY)


def get_task(name: "str | TaskSpec", where: str = "task") -> TaskSpec:
    """The spec of ``name``; InputError naming the allowed tasks when unknown."""
    if isinstance(name, TaskSpec):
        return name
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise InputError(f"{where}: unknown task {name!r}{did_you_mean(name, _REGISTRY)}; "
                         f"allowed tasks: {format_choices(_REGISTRY)}")
    return entry.spec


def label_groups(tasks: "list[str] | tuple[str, ...]") -> dict[str, list[str]]:
    """The tasks grouped by label space, groups and tasks in the order given."""
    groups: dict[str, list[str]] = {}
    for name in tasks:
        groups.setdefault(get_task(name).labels, []).append(name)
    return groups


def get_source(task: "str | TaskSpec") -> "DataSource":
    """The data source registered with ``task``."""
    return _REGISTRY[get_task(task).name].source
