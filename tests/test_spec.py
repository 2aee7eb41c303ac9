"""StudySpec: loading, resolution, dump round trip, samplers, shipped specs."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from routed_study.study.spec import StudySpec
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import RoutedPromptConfig

SPECS = Path(__file__).resolve().parents[1] / "study" / "specs"

BASE = {
    "name": "t",
    "backbone": {"name": "minilm", "max_length": 32},
    "data": {"dir": "data", "tasks": ["rt_sentiment", "bbc_topic"], "train_per_task": 16, "eval_per_task": 8},
    "space": {"name": "findings", "override": {"epochs": {"low": 1, "high": 3}}, "fixed": {"batch_size": 8}},
    "search": {"algorithm": "tpe", "seed": 3},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
    "trials": {"num": 4, "concurrency": 2},
    "resources": {"cpus": 1},
}


def write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_load_resolves_paths_against_cwd_and_fills_defaults(tmp_path):
    spec = StudySpec.load(write(tmp_path, BASE))
    assert spec.setup.tasks == ("rt_sentiment", "bbc_topic")
    assert spec.setup.data_dir == str(tmp_path / "data")
    assert spec.storage == tmp_path / "studies"
    assert spec.study_dir == tmp_path / "studies" / "t"
    assert spec.mlflow_tracking_uri == f"sqlite:///{tmp_path}/studies/t/mlflow.db"
    assert spec.optuna_storage == f"sqlite:///{tmp_path}/studies/t/optuna.db"
    assert spec.optuna_study_name == "t"
    assert (spec.metric, spec.mode, spec.repeats, spec.max_failures, spec.report) == ("score", "max", 1, 0, True)
    assert spec.reduction_factor == 3.0 and spec.grace_period == 1
    assert spec.max_epochs() == 3
    assert spec.num_samples == 4
    assert spec.cluster_address is None
    assert isinstance(spec.make_sampler(), optuna.samplers.TPESampler)


def test_dump_round_trips(tmp_path):
    spec = StudySpec.load(write(tmp_path, BASE))
    dumped = spec.dump(tmp_path / "out" / "study.yaml")
    again = StudySpec.load(dumped)
    assert again.to_dict() == spec.to_dict()
    assert again.space.parameters() == spec.space.parameters()


def test_dumped_spec_loads_from_another_directory(tmp_path, monkeypatch):
    spec = StudySpec.load(write(tmp_path, BASE))
    dumped = spec.dump(tmp_path / "study.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert StudySpec.load(dumped).study_dir == spec.study_dir  # resolved paths are absolute


def test_random_sampler_is_seeded(tmp_path):
    spec = StudySpec.load(write(tmp_path, {**BASE, "search": {"algorithm": "random", "seed": 7}}))
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=spec.make_sampler())
        trial = study.ask()
        spec.space.define_by_run(trial)
        draws.append(trial.params)
    assert draws[0] == draws[1]


def test_grid_defaults_to_grid_size_and_survives_ask_and_tell(tmp_path):
    raw = {**BASE, "space": {"name": "original_grid"}, "search": {"algorithm": "grid"},
           "scheduler": {"name": "none"}, "trials": {}}
    spec = StudySpec.load(write(tmp_path, raw))
    assert spec.num_trials == 36 and spec.max_epochs() == 3   # 48 grid points, 36 distinct models
    study = optuna.create_study(sampler=spec.make_sampler())
    seen = set()
    for _ in range(spec.num_trials):  # as Ray's OptunaSearch drives it: ask, then tell
        trial = study.ask()
        constants = spec.space.define_by_run(trial)
        RoutedPromptConfig.from_dict({**trial.params, **constants})
        seen.add(tuple(sorted(trial.params.items())))
        study.tell(trial, 1.0)
    assert len(seen) == 36


def test_empty_space_allows_one_configuration_with_repeats(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["space"] = {"name": "original_grid", "fixed": {"learning_rate": 0.1, "apply_softmax_to": "after",
                                                       "compose_method": "cat", "source_order": "asc",
                                                       "anneal_dir": 0}}
    raw["trials"] = {"num": 1, "repeats": 3}
    raw["scheduler"] = {"name": "none"}
    spec = StudySpec.load(write(tmp_path, raw))
    assert spec.space.parameters() == {} and spec.num_samples == 3


def test_storage_uri_needs_explicit_stores(tmp_path):
    raw = {**BASE, "storage": {"dir": "s3://bucket/studies", "mlflow_tracking_uri": "http://mlflow:5000",
                               "optuna_storage": "postgresql://db/optuna"}}
    spec = StudySpec.load(write(tmp_path, raw))
    assert spec.study_dir == "s3://bucket/studies/t"
    assert StudySpec.load(spec.dump(tmp_path / "d.yaml")).to_dict() == spec.to_dict()
    raw["storage"] = {"dir": "s3://bucket/studies"}
    with pytest.raises(InputError, match="storage.mlflow_tracking_uri': required when storage.dir is a URI"):
        StudySpec.load(write(tmp_path, raw))


def test_cluster_skips_the_local_resource_check(tmp_path):
    raw = {**BASE, "resources": {"cpus": 64, "gpus": 1}, "cluster": True}
    spec = StudySpec.load(write(tmp_path, raw))
    assert spec.cluster_address == "auto" and spec.gpus_per_trial == 1.0
    spec = StudySpec.load(write(tmp_path, {**raw, "cluster": "ray://head:10001"}))
    assert spec.cluster_address == "ray://head:10001"


def test_per_task_metric_is_accepted(tmp_path):
    spec = StudySpec.load(write(tmp_path, {**BASE, "metric": {"name": "val/bbc_topic", "mode": "max"}}))
    assert spec.metric == "val/bbc_topic"


def test_errors_are_prefixed_by_the_file_once(tmp_path):
    path = write(tmp_path, {**BASE, "trials": {"num": 0}})
    with pytest.raises(InputError) as info:
        StudySpec.load(path)
    assert str(info.value) == f"{path}: key 'trials.num': must be >= 1, got 0"


@pytest.mark.parametrize("name", ["demo", "reproduce_findings", "smoke"])
def test_shipped_specs_validate(name):
    spec = StudySpec.load(SPECS / f"{name}.yaml")
    assert spec.name == name
    for values in spec.space.sample_configs(30):
        RoutedPromptConfig.from_dict(values)


def test_shipped_specs_meet_their_brief():
    demo = StudySpec.load(SPECS / "demo.yaml")
    assert len(demo.setup.tasks) >= 3 and demo.space.name == "findings" and demo.num_trials >= 12
    assert (demo.concurrency, demo.cpus_per_trial, demo.scheduler) == (2, 1.0, "asha")
    assert demo.max_epochs() <= 4 and demo.setup.train_per_task <= 100
    full = StudySpec.load(SPECS / "reproduce_findings.yaml")
    assert full.num_trials >= 100 and full.repeats == 3 and len(full.setup.tasks) >= 3
    smoke = StudySpec.load(SPECS / "smoke.yaml")
    assert smoke.num_trials <= 3 and smoke.max_epochs() == 1 and smoke.setup.train_per_task <= 16


# ------------------------------------------------------------------ schema, plugins
def test_json_schema_checks_a_spec_as_an_editor_would(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from routed_study.study.spec import json_schema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("demo", "reproduce_findings", "smoke"):
        validator.validate(yaml.safe_load((SPECS / f"{name}.yaml").read_text()))
    resolved = StudySpec.load(write(tmp_path, BASE)).to_dict()
    validator.validate(resolved)  # what `dump` writes is a valid spec too
    for bad in ({**BASE, "trails": {"num": 2}}, {**BASE, "data": {**BASE["data"], "task": ["x"]}},
                {**BASE, "search": {"algorithm": "bayes"}}, {**BASE, "trials": {"num": 0}},
                {**BASE, "space": {"name": "findings", "fixed": {"lr": 0.1}}},
                {**BASE, "space": {"name": "findings", "override": {"epochs": {"low": 1, "hgh": 3}}}}):
        assert not validator.is_valid(bad), bad


def test_dump_writes_every_key_of_the_schema(tmp_path):
    from routed_study.study.spec import StudyFile

    dumped = yaml.safe_load(StudySpec.load(write(tmp_path, BASE)).dump(tmp_path / "d.yaml").read_text())
    assert list(dumped) == list(StudyFile.model_fields)
    assert list(dumped["storage"]) == ["dir", "mlflow_tracking_uri", "optuna_storage"]


PLUGIN = '''
from routed_study.search_spaces import SearchSpace, register
from routed_study.search_spaces.base import choice


@register
class PluginSpace(SearchSpace):
    """a space that a researcher's module registers."""

    name = "{name}"

    def declare(self):
        return [choice("learning_rate", 0.01, 0.1)]
'''


def test_plugins_are_imported_before_the_spec_is_checked(tmp_path, monkeypatch):
    (tmp_path / "my_spaces_for_spec_test.py").write_text(PLUGIN.format(name="plugin_space_for_spec_test"))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**BASE, "plugins": ["my_spaces_for_spec_test"],
           "space": {"name": "plugin_space_for_spec_test", "fixed": {"epochs": 2}}}
    spec = StudySpec.load(write(tmp_path, raw))
    assert spec.space.name == "plugin_space_for_spec_test" and spec.plugins == ["my_spaces_for_spec_test"]
    assert spec.setup.plugins == ("my_spaces_for_spec_test",)  # reaches every trial
    assert "plugins: my_spaces_for_spec_test" in spec.describe()[0]
    assert StudySpec.load(spec.dump(tmp_path / "d.yaml")).to_dict() == spec.to_dict()


def test_a_plugin_that_does_not_import_is_one_line(tmp_path):
    path = write(tmp_path, {**BASE, "plugins": ["no_such_plugin_module"]})
    with pytest.raises(InputError) as info:
        StudySpec.load(path)
    assert str(info.value) == (f"{path}: key 'plugins': plugin module 'no_such_plugin_module' does not import "
                               f"(ModuleNotFoundError: No module named 'no_such_plugin_module'); "
                               f"is it on PYTHONPATH of every node?")


@pytest.mark.parametrize("change, message", [
    ({"data": None}, "key 'data.tasks': missing"),
    ({"search": None}, None),  # a null section takes its defaults
    ({"cluster": 3}, "key 'cluster': expected bool or text, got 3"),
    ({"resources": {"cpus": float("nan")}}, "key 'resources.cpus': must be a finite number, got nan"),
    ({"data": {**BASE["data"], "tasks": ["rt_sentiment", 3]}},
     "key 'data.tasks': expected a list of text, got ['rt_sentiment', 3]"),
    ({"report": "yes"}, "key 'report': expected bool, got 'yes'"),
    ({"plugins": "mine"}, "key 'plugins': expected list, got 'mine'"),
    ({"storage": {"dir": "studies", "optuna_storage": 5}}, "key 'storage.optuna_storage': expected text, got 5"),
])
def test_schema_errors_name_the_key(tmp_path, change, message):
    path = write(tmp_path, {**BASE, **change})
    if message is None:
        assert StudySpec.load(path).search_algorithm == "tpe"
        return
    with pytest.raises(InputError) as info:
        StudySpec.load(path)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)


def test_trial_setup_round_trips_through_plain_values():
    from routed_study.trainables.setup import TrialSetup

    setup = TrialSetup(tasks=("rt_sentiment",), plugins=("a_plugin",), max_length=16)
    assert TrialSetup.from_dict(setup.to_dict()) == setup and setup.to_dict()["tasks"] == ["rt_sentiment"]
    with pytest.raises(InputError, match="^setup: key 'max_length': must be >= 1, got 0$"):
        TrialSetup.from_dict({"tasks": ["rt_sentiment"], "max_length": 0})
    with pytest.raises(InputError, match=r"^setup: key 'task': unknown key \(did you mean 'tasks'\?\)"):
        TrialSetup.from_dict({"task": ["rt_sentiment"]})
