"""What a trial reports and leaves behind, named once for the trainable, the study and the analysis.

Torch-free and Ray-free at import, so that validation and analysis stay light. The Ray
names are Ray's own (a test checks them against ``ray.tune``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, TypeVar

T = TypeVar("T")

#: Ray's count of results: one a trial's epoch (``ray.tune.result.TRAINING_ITERATION``).
TRAINING_ITERATION = "training_iteration"
#: The trainable's own epoch number in every result.
EPOCH = "epoch"
#: Ray's timings of a result, the only part of Ray's bookkeeping that is a measurement
#: (``ray.tune.result.TIME_THIS_ITER_S``, ``TIME_TOTAL_S``).
TIMING_METRICS = ("time_this_iter_s", "time_total_s")

#: Config key Ray's Repeater adds to every repeat (``ray.tune.search.repeater.TRIAL_INDEX``);
#: the trainable adds it to the seed.
REPEAT_INDEX_KEY = "__trial_index__"
#: Config key the study's searcher adds: the Optuna trial number behind a Ray trial.
OPTUNA_TRIAL_KEY = "__optuna_trial_number__"

#: Config keys a designed study (``search.algorithm`` qmc, pairs, screening; ``study/designs.py``)
#: adds to each trial; the trainable ignores them, tracking and the analysis read them.
DESIGN_KEY = "__design__"               # the design's name
DESIGN_POINT_KEY = "__design_point__"   # the trial's index in the design (pairs, screening)
DESIGN_BASE_KEY = "__design_base__"     # pairs: the base configuration; screening: the trajectory
DESIGN_FLIP_KEY = "__design_flip__"     # pairs: the claim whose knob this trial flips ('' on a base);
                                        # screening: the knob moved from the trajectory's previous point
DESIGN_SIDE_KEY = "__design_side__"     # pairs: 'a' or 'b' on a flip, 'base' on a base
DESIGN_DELTA_KEY = "__design_delta__"   # screening: the signed step of that knob (unit scale)
DESIGN_KEYS = (DESIGN_KEY, DESIGN_POINT_KEY, DESIGN_BASE_KEY, DESIGN_FLIP_KEY, DESIGN_SIDE_KEY, DESIGN_DELTA_KEY)

#: Files the trainable writes into its trial directory (they become MLflow run artifacts).
ROUTER_CSV = "router_matrix.csv"     # tasks x candidates router logits
ROUTER_PNG = "router_heatmap.png"
GATES_CSV = "target_gates.csv"       # each task's share of its own target prompt
#: The first, written at the end of every successful trial, marks the trial's files as
#: complete in storage (tracking waits for it before logging them).
TRIAL_ARTIFACTS = (ROUTER_CSV, ROUTER_PNG, GATES_CSV)


def planned_epochs(config: Mapping[str, Any]) -> int:
    """The epochs a trial's config asks for: its ``epochs`` knob, else the knob's default."""
    from routed_study.trainables.routed_prompt.config import KNOBS  # torch-free; imported late to keep this module a leaf

    return config.get("epochs", KNOBS["epochs"].default)


def stopped_early(config: Mapping[str, Any], last: Mapping[str, Any]) -> bool:
    """The trial's last result came before its last epoch: the scheduler stopped it.

    (Tune marks a scheduler's stop ``done`` like a finished trial; only the epoch count tells.)
    """
    planned = planned_epochs(config)
    done = last.get(EPOCH, last.get(TRAINING_ITERATION))
    return planned is not None and done is not None and done < planned


def best(items: Iterable[T], value: Callable[[T], Any], mode: str) -> tuple[float, T] | None:
    """``(value, item)`` of the item with the best finite numeric value (``mode`` max or min),
    the first of equals; None when no item has one."""
    found: tuple[float, T] | None = None
    for item in items:
        v = value(item)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if found is None or (v > found[0] if mode == "max" else v < found[0]):
            found = (float(v), item)
    return found


def best_first(mode: str) -> bool:
    """``ascending=`` for sorting trials best first by the target (pandas' sort_values)."""
    return mode == "min"


def train_examples_metric(task: str) -> str:
    """The reported number of training examples a trial used for ``task`` (F3, F15: sizes are per trial
    and per task, and a split may hold fewer examples than asked for)."""
    return f"train/{task}/examples"
