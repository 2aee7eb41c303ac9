"""routed-study CLI: validate's rejections (table), dispatch of every subcommand, one real process."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from routed_study.study.cli import main

GOOD = {
    "name": "cli",
    "backbone": {"name": "minilm", "max_length": 32},
    "data": {"dir": "data", "tasks": ["rt_sentiment", "bbc_topic"], "train_per_task": 16, "eval_per_task": 8},
    "space": {"name": "findings", "fixed": {"batch_size": 8}},
    "search": {"algorithm": "tpe", "seed": 0},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "trials": {"num": 3, "concurrency": 1},
    "resources": {"cpus": 1, "gpus": 0},
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def spec_with(path: str, value) -> dict:
    """GOOD with one dotted key set (value DELETE removes it)."""
    spec = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return spec


DELETE = object()

# (case id, spec mapping or raw YAML text, text the one-line error must contain)
REJECTIONS = [
    ("unknown section", spec_with("trails", {"num": 2}), "key 'trails': unknown section (did you mean 'trials'?)"),
    ("unknown key", spec_with("data.task", ["rt_sentiment"]), "key 'data.task': unknown key (did you mean 'tasks'?)"),
    ("wrong type", spec_with("trials.num", "many"), "key 'trials.num': expected int"),
    ("bool for int", spec_with("trials.concurrency", True), "key 'trials.concurrency'"),
    ("missing name", spec_with("name", DELETE), "key 'name': missing"),
    ("bad name", spec_with("name", "my study"), "key 'name'"),
    ("missing tasks", spec_with("data.tasks", DELETE), "key 'data.tasks': missing"),
    ("unknown task", spec_with("data.tasks", ["rt_sentimnt"]), "key 'tasks': unknown task 'rt_sentimnt'"),
    ("duplicate task", spec_with("data.tasks", ["bbc_topic", "bbc_topic"]), "key 'tasks'"),
    ("bad family", spec_with("backbone.family", "decoder"), "key 'backbone_family'"),
    ("unknown space", spec_with("space.name", "find"), "key 'space.name'"),
    ("knob value", spec_with("space.fixed", {"compose_method": "mean"}), "key 'space.fixed.compose_method'"),
    ("unknown knob", spec_with("space.override", {"lr": {"low": 0.1, "high": 1}}), "key 'space.override.lr'"),
    ("override range", spec_with("space.override", {"learning_rate": {"low": 0.01, "high": 50}}),
     "key 'space.override.learning_rate'"),
    ("target_share without add_target", spec_with("space.fixed", {"target_share": 0.5}),
     "knob 'target_share' is set while 'add_target' can be false"),
    ("num_selected above candidates", spec_with("space.fixed", {"num_source_prompts": 1}), "'num_selected'"),
    ("too many cpus", spec_with("resources.cpus", (os.cpu_count() or 1) + 1), "key 'resources.cpus'"),
    ("gpu without gpu", spec_with("resources.gpus", 1), "key 'resources.gpus'"),
    ("storage under a file", spec_with("storage", {"dir": "afile/studies"}), "key 'storage.dir'"),
    ("tracking not a uri", spec_with("storage", {"mlflow_tracking_uri": "mlflow.db"}),
     "key 'storage.mlflow_tracking_uri'"),
    ("grid without grid", spec_with("search.algorithm", "grid"), "key 'search.algorithm'"),
    ("unknown algorithm", spec_with("search.algorithm", "bayes"), "key 'search.algorithm'"),
    ("grid too small", {**spec_with("space", {"name": "original_grid"}), "search": {"algorithm": "grid"},
                        "trials": {"num": 50}}, "key 'trials.num': 50 exceeds the grid's 36 distinct models"),
    ("empty space", spec_with("space", {"name": "core", "fixed": {
        "learning_rate": 0.1, "epochs": 2, "num_prompt_tokens": 4, "temperature": 1.0, "anneal_dir": 0}}),
     "key 'trials.num'"),
    ("repeats under asha", spec_with("trials.repeats", 3), "key 'trials.repeats'"),
    ("grace beyond epochs", spec_with("scheduler.grace_period", 9), "key 'scheduler.grace_period'"),
    ("reduction factor", spec_with("scheduler.reduction_factor", 1), "key 'scheduler.reduction_factor'"),
    ("unknown metric", spec_with("metric", {"name": "val/cola"}), "key 'metric.name'"),
    ("bad mode", spec_with("metric", {"mode": "maximise"}), "key 'metric.mode'"),
    ("section not a mapping", spec_with("trials", 5), "key 'trials': expected a mapping"),
    ("yaml syntax", "name: x\ndata: {tasks: [rt_sentiment\n", "YAML syntax error at line 3"),
    ("duplicate key", "name: x\nname: y\n", "key 'name' appears twice"),
    ("not a mapping", "- name\n", "a spec is a mapping"),
]


@pytest.mark.parametrize("spec, needle", [pytest.param(s, n, id=i) for i, s, n in REJECTIONS])
def test_validate_rejects_with_one_line(spec, needle, tmp_path, capsys, monkeypatch):
    if needle == "key 'resources.gpus'":
        import torch

        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    (tmp_path / "afile").write_text("not a directory")
    path = tmp_path / "bad.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert needle in err and str(path) in err
    assert "Traceback" not in err and out == ""


def test_validate_missing_file(capsys):
    assert main(["validate", "nope.yaml"]) == 2
    assert "nope.yaml: no such spec file" in capsys.readouterr().err


def test_validate_prints_the_plan(tmp_path, capsys):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("target_share: one of", "[only when add_target is true and sharing in [custom, shared, partial]]", "batch_size = 8 (fixed)",
                 "3 configuration(s) x 1 repeat(s)", "1 CPU, 0 GPU", "1 at a time",
                 f"sqlite:///{tmp_path}/studies/cli/mlflow.db", f"sqlite:///{tmp_path}/studies/cli/optuna.db",
                 f"{tmp_path}/studies/cli", "OK"):
        assert text in out, text


def test_usage_errors_return_2_and_help_0(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert main(["data"]) == 2


def test_run_prepares_missing_offline_data_then_runs(tmp_path, capsys, monkeypatch):
    import routed_study.study.runner
    from routed_study import study
    import routed_study.trainables.tasks
    from routed_study import trainables
    from routed_study.trainables.errors import InputError

    prepared, ran = [], []

    def load_split(task, split, data_dir, limit=None):
        if not prepared:
            raise InputError(f"{task}: no data in {data_dir}; run `routed-study data prepare`")

    monkeypatch.setattr(trainables.tasks, "load_split", load_split)
    monkeypatch.setattr(trainables.tasks, "prepare_offline_suite",
                        lambda data_dir, seed=0, force=False: prepared.append(Path(data_dir)))
    monkeypatch.setattr(study.runner, "run_study",
                        lambda spec: ran.append(spec) or SimpleNamespace(summary=lambda: "summary-line"))
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert prepared == [tmp_path / "data"] and "preparing it" in out
    assert ran[0].name == "cli" and "summary-line" in out


def test_run_reports_runner_input_errors_in_one_line(tmp_path, capsys, monkeypatch):
    import routed_study.study.runner
    from routed_study import study
    import routed_study.trainables.tasks
    from routed_study import trainables
    from routed_study.trainables.errors import InputError

    def refuse(spec):
        raise InputError(f"{spec.study_dir}: a study named 'cli' already ran there")

    monkeypatch.setattr(trainables.tasks, "load_split", lambda *a, **k: None)
    monkeypatch.setattr(study.runner, "run_study", refuse)
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already ran there" in err


def test_run_stops_before_training_when_non_offline_data_is_missing(tmp_path, capsys, monkeypatch):
    import routed_study.study.runner
    from routed_study import study
    import routed_study.trainables.tasks
    from routed_study import trainables

    monkeypatch.setattr(trainables.tasks, "prepare_offline_suite", lambda *a, **k: pytest.fail("prepared"))
    monkeypatch.setattr(study.runner, "run_study", lambda spec: pytest.fail("trained"))
    path = tmp_path / "glue.yaml"
    path.write_text(yaml.safe_dump(spec_with("data.tasks", ["cola"])))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cola" in err and "Traceback" not in err


def test_resume_analyze_data_dispatch(tmp_path, capsys, monkeypatch):
    import routed_study.analysis.report
    from routed_study import analysis
    import routed_study.study.runner
    from routed_study import study
    import routed_study.trainables.tasks
    from routed_study import trainables

    calls = {}

    def resume(study_dir):
        calls["resume"] = study_dir
        return SimpleNamespace(summary=lambda: "resumed")

    def build_report(source, out, **kwargs):
        calls["analyze"] = (source, out, kwargs)
        return {"html": Path(out) / "report.html"}

    def prepare(data_dir, seed, force):
        calls["prepare"] = (data_dir, seed, force)
        return Path(data_dir)

    monkeypatch.setattr(study.runner, "resume_study", resume)
    monkeypatch.setattr(analysis.report, "build_report", build_report)
    monkeypatch.setattr(trainables.tasks, "prepare_offline_suite", prepare)
    assert main(["resume", "studies/x"]) == 0
    assert main(["analyze", "trials.csv", "--out", "rep", "--target", "val/bbc_topic", "--mode", "min",
                 "--findings", "f.yaml"]) == 0
    assert main(["data", "prepare", "--data-dir", "d", "--seed", "3", "--force"]) == 0
    assert calls["resume"] == Path("studies/x")
    assert calls["analyze"] == ("trials.csv", "rep", {"target": "val/bbc_topic", "mode": "min",
                                                       "findings": "f.yaml", "experiment": None})
    assert calls["prepare"] == ("d", 3, True)
    out = capsys.readouterr().out
    assert "resumed" in out and "html: rep/report.html" in out and "ready in" in out


def test_ui_takes_a_study_dir_or_a_uri(tmp_path, capsys, monkeypatch):
    import routed_study.study.tracking
    from routed_study import study
    from routed_study.study.spec import StudySpec

    served = []
    monkeypatch.setattr(study.tracking, "serve_ui", lambda uri, host, port, artifacts_dir=None, experiment=None:
                        served.append((uri, host, port, artifacts_dir, experiment)))
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    spec = StudySpec.load(path)
    spec.dump(spec.study_dir / "study.yaml")
    assert main(["ui", str(spec.study_dir), "--port", "5055"]) == 0
    assert main(["ui", "http://tracking:5000"]) == 0
    assert spec.mlflow_artifact_location == (spec.study_dir / "mlartifacts").as_uri()
    assert served == [(spec.mlflow_tracking_uri, "127.0.0.1", 5055, spec.mlflow_artifact_location, spec.name),
                      ("http://tracking:5000", "127.0.0.1", 5000, None, None)]
    assert main(["ui", str(tmp_path)]) == 2
    assert "neither a tracking URI" in capsys.readouterr().err


def test_console_script_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with("trials.num", -1)))
    script = Path(sys.executable).parent / "routed-study"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "routed_study.study.cli"]
    done = subprocess.run([*command, "validate", str(bad)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "key 'trials.num'" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_prints_the_plan_of_a_cluster_spec_with_remote_stores(tmp_path, capsys):
    """The README's cluster set-up: s3 storage, an MLflow server, a PostgreSQL Optuna store;
    validating it reaches none of them."""
    spec = {**GOOD, "cluster": True, "resources": {"cpus": 64, "gpus": 1},
            "storage": {"dir": "s3://bucket/studies/", "mlflow_tracking_uri": "http://mlflow.internal:5000",
                        "optuna_storage": "postgresql://optuna@db.internal/optuna"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("Ray results and checkpoints: s3://bucket/studies/cli/<trial>/",
                 "MLflow runs (experiment 'cli'): http://mlflow.internal:5000",
                 "MLflow artifacts: the tracking server artifact store (proxied)",
                 "Optuna study 'cli': postgresql://optuna@db.internal/optuna",
                 "64 CPU, 1 GPU on the Ray cluster at auto", f"report: {tmp_path}/reports/cli",
                 f"{path}: OK"):
        assert text in out, text
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "studies").exists()


def test_schema_prints_the_spec_json_schema(capsys):
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and schema["required"] == ["name", "data"]
    assert list(schema["properties"])[:3] == ["name", "plugins", "backbone"]
    trials = schema["$defs"]["Trials"]["properties"]
    assert trials["num"]["anyOf"][0] == {"minimum": 1, "type": "integer"}
    search = schema["$defs"]["Search"]["properties"]["algorithm"]
    assert search["enum"] == ["tpe", "random", "grid", "qmc", "pairs", "screening"]
