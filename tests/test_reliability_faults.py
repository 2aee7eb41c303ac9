"""Trial faults: a trial that raises, diverges (NaN / inf loss) or runs out of memory is
recorded as errored with its reason in Ray's results, in MLflow and in Optuna, and the
study goes on; with ``trials.max_failures`` a failed trial is retried from its last
checkpoint.

Faults are injected by trainables that wrap the real one (tiny random BERT, tiny GLUE
files): each patches a piece of the real training loop inside the Ray worker, then
calls :func:`routed_prompt_trainable`. The fault registry ``FAULTS`` maps a name to
(the injector, the text the recorded reason must contain); every registered fault is
one trial of a shared study and one parametrised test.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import ray
import ray.cloudpickle

from routed_study.study.runner import run_study
from routed_study.study.spec import StudySpec
from routed_study.study.tracking import OPTUNA_TRIAL_KEY, TAG_ERROR, TAG_OPTUNA_TRIAL, TAG_PARENT, client_for
from tiny_backbones import save_tiny_bert, write_tiny_glue

# Ray workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: train 16 examples in batches of 8: two optimiser steps (two loss calls) per epoch
STEPS_PER_EPOCH = 2


# --------------------------------------------------------------- fault injectors
# Each runs inside the worker before the real trainable and returns an undo function.
def _poison_loss(factor: float, after_calls: int) -> Callable[[], None]:
    """Multiply the backbone's training loss by ``factor`` from call ``after_calls`` on."""
    import routed_study.trainables.training as training

    real = training.load_backbone

    def load_backbone(*args, **kwargs):
        backbone = real(*args, **kwargs)
        loss, calls = backbone.loss, [0]

        def poisoned(*a, **k):
            calls[0] += 1
            value = loss(*a, **k)
            return value * factor if calls[0] > after_calls else value

        backbone.loss = poisoned
        return backbone

    training.load_backbone = load_backbone
    return lambda: setattr(training, "load_backbone", real)


def _raise_in_second_epoch(error: BaseException) -> Callable[[], None]:
    """The second epoch's training raises ``error`` (the first epoch has checkpointed)."""
    import routed_study.trainables.training as training

    real = training.Trainer.train_epoch

    def train_epoch(self):
        if self.epoch >= 1:
            raise error
        return real(self)

    training.Trainer.train_epoch = train_epoch
    return lambda: setattr(training.Trainer, "train_epoch", real)


def _cuda_oom() -> BaseException:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


FAULTS: dict[str, tuple[Callable[[], Callable[[], None]], str]] = {
    "raises": (lambda: _raise_in_second_epoch(RuntimeError("disk on fire")), "RuntimeError: disk on fire"),
    "nan_loss": (lambda: _poison_loss(float("nan"), STEPS_PER_EPOCH), f"loss is nan at step {STEPS_PER_EPOCH}"),
    "inf_loss": (lambda: _poison_loss(float("inf"), 1), "loss is inf at step 1"),
    "host_oom": (lambda: _raise_in_second_epoch(MemoryError()), "out of memory"),
    "cuda_oom": (lambda: _raise_in_second_epoch(_cuda_oom()), "out of memory"),
}
#: Optuna trial number -> fault; the trials after the faulty ones are healthy
FAULT_OF_TRIAL = dict(enumerate(FAULTS))
HEALTHY_TRIALS = 1


def faulty_trainable(config: dict, setup) -> None:
    """The real trainable, with the fault of this trial's Optuna number injected."""
    from routed_study.trainables.trainable import routed_prompt_trainable

    fault = FAULT_OF_TRIAL.get(config[OPTUNA_TRIAL_KEY])
    undo = FAULTS[fault][0]() if fault else (lambda: None)
    try:
        routed_prompt_trainable(config, setup)
    finally:
        undo()  # the worker may be reused by the next trial


def fails_once_trainable(marker: str) -> Callable[[dict, object], None]:
    """The real trainable whose first attempt raises in epoch 2 (``marker`` records the attempt)."""
    def trainable(config: dict, setup) -> None:
        from routed_study.trainables.trainable import routed_prompt_trainable

        undo = lambda: None  # noqa: E731
        if not Path(marker).exists():
            Path(marker).write_text("failed once\n")
            undo = _raise_in_second_epoch(RuntimeError("preempted"))
        try:
            routed_prompt_trainable(config, setup)
        finally:
            undo()
    return trainable


# ------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {"backbone": str(save_tiny_bert(root / "bert")), "data": str(write_tiny_glue(root / "data"))}


def tiny_spec(tiny: dict, storage: Path, name: str, num: int, max_failures: int, concurrency: int = 1) -> StudySpec:
    return StudySpec.from_dict({
        "name": name,
        "backbone": {"name": tiny["backbone"], "max_length": 16},
        "data": {"dir": tiny["data"], "tasks": ["sst2"], "train_per_task": 16, "eval_per_task": 8},
        "space": {"name": "core", "fixed": {"epochs": 2, "batch_size": 8, "num_prompt_tokens": 4}},
        "search": {"algorithm": "random", "seed": 0},
        "scheduler": {"name": "none"},
        "trials": {"num": num, "concurrency": concurrency, "max_failures": max_failures},
        "resources": {"cpus": 1, "gpus": 0},
        "storage": {"dir": str(storage)},
        "report": False,
    })


def optuna_states(spec: StudySpec) -> dict[int, str]:
    with sqlite3.connect(spec.optuna_storage.removeprefix("sqlite:///")) as db:
        return dict(db.execute("select number, state from trials"))


def child_runs(spec: StudySpec) -> dict[int, object]:
    """Optuna trial number -> the MLflow child run; fails on a duplicate run."""
    client = client_for(spec.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if TAG_PARENT in r.data.tags]
    numbers = [int(r.data.tags[TAG_OPTUNA_TRIAL]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"duplicate MLflow runs: {sorted(numbers)}"
    return dict(zip(numbers, runs))


@pytest.fixture(scope="module")
def faulty_study(local_ray, tiny, tmp_path_factory):
    spec = tiny_spec(tiny, tmp_path_factory.mktemp("studies"), "faults", len(FAULTS) + HEALTHY_TRIALS,
                     max_failures=0, concurrency=2)
    outcome = run_study(spec, trainable=faulty_trainable)
    by_number = {r.config[OPTUNA_TRIAL_KEY]: r for r in outcome.results}
    return spec, outcome, by_number


# ---------------------------------------------------------------------- tests
def test_study_goes_on_past_faulty_trials(faulty_study):
    spec, outcome, by_number = faulty_study
    assert (outcome.num_trials, outcome.errored, outcome.completed) == (len(FAULTS) + HEALTHY_TRIALS,
                                                                       len(FAULTS), HEALTHY_TRIALS)
    for number in range(len(FAULTS), len(FAULTS) + HEALTHY_TRIALS):
        assert by_number[number].error is None and by_number[number].metrics["epoch"] == 2
        assert child_runs(spec)[number].info.status == "FINISHED"
        assert optuna_states(spec)[number] == "COMPLETE"
    assert outcome.best_score is not None


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_recorded_with_its_reason(fault, faulty_study):
    spec, _, by_number = faulty_study
    number = list(FAULTS).index(fault)
    reason = FAULTS[fault][1]
    result = by_number[number]
    assert result.error is not None
    error_file = Path(result.path) / "error.txt"
    assert reason in error_file.read_text(), error_file.read_text()[-500:]
    run = child_runs(spec)[number]
    assert run.info.status == "FAILED"
    assert reason in run.data.tags[TAG_ERROR], run.data.tags[TAG_ERROR]
    assert optuna_states(spec)[number] == "FAIL"


def test_failed_trial_is_retried_from_its_checkpoint(local_ray, tiny, tmp_path):
    spec = tiny_spec(tiny, tmp_path / "studies", "retried", num=1, max_failures=1)
    outcome = run_study(spec, trainable=fails_once_trainable(str(tmp_path / "failed-once")))
    assert (tmp_path / "failed-once").exists()  # the first attempt did fail
    assert (outcome.completed, outcome.errored) == (1, 0)
    result = outcome.results[0]
    # Resumed after epoch 1, not restarted: the retry ran one epoch and its steps continue.
    last = result.metrics
    assert (last["epoch"], last["training_iteration"], last["iterations_since_restore"]) == (2, 2, 1)
    assert last["step"] == 2 * STEPS_PER_EPOCH
    # progress.csv keeps both epochs. (result.json may lose the epoch before the failure:
    # Ray's JsonLoggerCallback re-downloads it from storage on restart, which can be stale.)
    progress = pd.read_csv(Path(result.path) / "progress.csv")
    assert list(progress["epoch"]) == [1, 2] and list(progress["step"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    runs = child_runs(spec)
    assert list(runs) == [0] and runs[0].info.status == "FINISHED"
    assert TAG_ERROR not in runs[0].data.tags
    history = client_for(spec.mlflow_tracking_uri).get_metric_history(runs[0].info.run_id, "score")
    assert sorted(m.step for m in history) == [1, 2]
    assert optuna_states(spec) == {0: "COMPLETE"}
