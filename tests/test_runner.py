"""run_study / resume_study end to end with the sleep trainable: Ray Tune + Optuna + MLflow."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.sleep_trainable import make_sleep_trainable
from routed_study.study.runner import resume_study, run_study
from routed_study.study.spec import StudySpec
from routed_study.study.tracking import (TAG_ERROR, TAG_OPTUNA_TRIAL, TAG_PARENT, TAG_RAY_TRIAL_ID,
                            TAG_REPEAT_INDEX, TAG_ROLE, client_for)
from routed_study.trainables.errors import InputError

EPOCH_SECONDS = 1.0


@pytest.fixture(scope="module", autouse=True)
def one_ray_for_the_module(local_ray):
    """run_study leaves a running Ray alone: one Ray for the module saves ~4 s a test."""


def make_spec(storage: Path, name: str, **sections) -> StudySpec:
    raw = {
        "name": name,
        "data": {"tasks": ["rt_sentiment"]},
        "space": {"name": "core", "fixed": {"epochs": 2}},
        "scheduler": {"name": "none"},
        "trials": {"num": 4, "concurrency": 2},
        "resources": {"cpus": 1, "gpus": 0},
        "storage": {"dir": str(storage)},
        "report": False,
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return StudySpec.from_dict(raw)


def runs_of(spec: StudySpec):
    client = client_for(spec.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    children = [r for r in runs if TAG_PARENT in r.data.tags]
    return client, experiment, parents, children


def optuna_states(spec: StudySpec) -> list[str]:
    path = spec.optuna_storage.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("select state from trials order by number")]


def test_study_runs_trials_in_parallel_and_tracks_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    storage = tmp_path / "studies"
    spec = make_spec(storage, "parallel")
    outcome = run_study(spec, trainable=make_sleep_trainable(EPOCH_SECONDS))

    assert (outcome.num_trials, outcome.completed, outcome.errored) == (4, 4, 0)
    assert outcome.best_score == max(r.metrics["score"] for r in outcome.results)
    assert "learning_rate" in outcome.best_config and not any(k.startswith("__") for k in outcome.best_config)

    # Concurrency 2 really runs two at a time: some pair of trials overlaps in time.
    spans = sorted((r.metrics["started_at"], r.metrics["ended_at"]) for r in outcome.results)
    assert any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))

    study_dir = storage / "parallel"
    assert (study_dir / "study.yaml").is_file() and (study_dir / "tuner.pkl").is_file()
    trial_dirs = [Path(r.path) for r in outcome.results]
    for trial_dir in trial_dirs:
        assert trial_dir.parent == study_dir
        for name in ("params.json", "result.json", "progress.csv", "router_matrix.csv"):
            assert (trial_dir / name).is_file(), name
    assert optuna_states(spec) == ["COMPLETE"] * 4

    client, experiment, parents, children = runs_of(spec)
    assert experiment.artifact_location == (study_dir / "mlartifacts").as_uri()
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags[TAG_PARENT] for c in children} == {parents[0].info.run_id}
    assert {c.data.tags[TAG_RAY_TRIAL_ID] for c in children} == {r.metrics["trial_id"] for r in outcome.results}
    assert sorted(int(c.data.tags[TAG_OPTUNA_TRIAL]) for c in children) == [0, 1, 2, 3]
    for child in children:
        assert child.info.status == "FINISHED"
        assert "learning_rate" in child.data.params and "epochs" in child.data.params
        assert not any(k.startswith("__") for k in child.data.params)
        history = client.get_metric_history(child.info.run_id, "score")
        assert sorted(m.step for m in history) == [1, 2]
        assert "val/fake" in child.data.metrics and "test_score" in child.data.metrics
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["router_matrix.csv"]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.params["setup.tasks"] == "['rt_sentiment']"
    assert parents[0].data.metrics["completed"] == 4
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

    printed = capsys.readouterr().out
    assert "[parallel] 4/4 done, 0 running, 0 errored | best score" in printed
    assert outcome.summary().startswith("study 'parallel': 4 trials, 4 completed")  # the CLI prints it

    with pytest.raises(InputError, match="already ran there; resume it"):
        run_study(spec, trainable=make_sleep_trainable(EPOCH_SECONDS))


def test_errored_trial_is_tracked_and_resumed_from_its_checkpoint(tmp_path):
    spec = make_spec(tmp_path, "resumable", space={"fixed": {"epochs": 3}}, trials={"num": 3})
    trainable = make_sleep_trainable(EPOCH_SECONDS / 2, fail_marker=str(tmp_path / "failed-once"))
    first = run_study(spec, trainable=trainable)
    assert (first.completed, first.errored) == (2, 1)
    _, _, parents, children = runs_of(spec)
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and "planned failure" in failed[0].data.tags[TAG_ERROR]
    assert failed[0].data.tags[TAG_OPTUNA_TRIAL] == "0"
    assert (Path(first.study_dir) / "study.yaml").is_file()

    second = resume_study(spec.study_dir, trainable=trainable)
    assert (second.num_trials, second.completed, second.errored) == (3, 3, 0)
    _, _, parents_after, children_after = runs_of(spec)
    assert [p.info.run_id for p in parents_after] == [p.info.run_id for p in parents]
    assert sorted(c.info.run_id for c in children_after) == sorted(c.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children_after)
    resumed = next(r for r in second.results if r.metrics["trial_id"] == failed[0].data.tags[TAG_RAY_TRIAL_ID])
    # Continued from the epoch-1 checkpoint, not restarted: each epoch reported once.
    assert list(resumed.metrics_dataframe["epoch"]) == [1, 2, 3]
    client = client_for(spec.mlflow_tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(failed[0].info.run_id, "score")) == [1, 2, 3]
    # Optuna kept its 3 trials (no new ones were asked for on resume).
    assert len(optuna_states(spec)) == 3


def test_repeats_share_one_optuna_trial_and_the_report_is_written(tmp_path, capsys):
    # 12 trials: the analysis needs at least 10 to rank factors.
    spec = make_spec(tmp_path, "repeated", space={"fixed": {"epochs": 1}}, trials={"num": 6, "repeats": 2},
                     report=True)
    outcome = run_study(spec, trainable=make_sleep_trainable(0.05))
    assert (outcome.num_trials, outcome.completed) == (12, 12)
    report_dir = Path(outcome.study_dir) / "report"
    assert outcome.report_paths and all(Path(p).parent == report_dir for p in outcome.report_paths.values())
    assert all(Path(p).is_file() for p in outcome.report_paths.values())
    assert f"report: {report_dir}" in capsys.readouterr().out
    configs = [r.config for r in outcome.results]
    assert sorted(c["__trial_index__"] for c in configs) == [0] * 6 + [1] * 6
    by_number: dict[int, list[float]] = {}
    for c in configs:
        by_number.setdefault(c["__optuna_trial_number__"], []).append(c["learning_rate"])
    assert sorted(by_number) == list(range(6)) and all(len(set(v)) == 1 and len(v) == 2 for v in by_number.values())
    assert optuna_states(spec) == ["COMPLETE"] * 6
    _, _, _, children = runs_of(spec)
    assert sorted(c.data.tags[TAG_REPEAT_INDEX] for c in children) == ["0"] * 6 + ["1"] * 6


def test_resume_needs_a_study_directory(tmp_path):
    with pytest.raises(InputError, match="not a study directory"):
        resume_study(tmp_path)


def test_asha_stops_weak_trials_and_optuna_records_them_pruned(tmp_path):
    spec = make_spec(tmp_path, "asha", space={"fixed": {"epochs": 4}}, trials={"num": 6},
                     scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3})
    outcome = run_study(spec, trainable=make_sleep_trainable(0.2))
    assert (outcome.completed, outcome.errored) == (6, 0)
    epochs_run = sorted(r.metrics["training_iteration"] for r in outcome.results)
    assert epochs_run[0] < 4 and epochs_run[-1] == 4
    assert outcome.stopped_early == sum(e < 4 for e in epochs_run) >= 1
    states = optuna_states(spec)
    assert states.count("PRUNED") == outcome.stopped_early
    assert states.count("COMPLETE") == 6 - outcome.stopped_early
