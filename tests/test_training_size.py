"""Training-set size and task set per trial (F3, F15, F16): the knobs train_per_task and task_set, the
study's per-task train_sizes, what a trial trains on and records, the pre-trained source cache key, and
one-line errors for bad values before any trial."""

from __future__ import annotations

import pytest
import yaml

from tiny_backbones import one_thread  # noqa: F401  (autouse fixture)
from tiny_backbones import bert_dir, data_dir  # noqa: F401  (fixtures)
from tiny_backbones import TINY_TASKS, make_setup
from routed_study.search_spaces import get_space
from routed_study.study.spec import StudySpec
from routed_study.trainables import source_prompts
from routed_study.trainables.errors import InputError
from routed_study.trainables.results import train_examples_metric
from routed_study.trainables.routed_prompt import RoutedPromptConfig
from routed_study.trainables.routed_prompt.config import knob_values
from routed_study.trainables.setup import TrialSetup
from routed_study.trainables.tasks import get_task, label_groups
from routed_study.trainables.trainable import trial_config
from routed_study.trainables.training import Trainer

TASKS = TINY_TASKS
TINY_TRAIN = 24   # examples in each tiny task's train split


def knobs(**values) -> RoutedPromptConfig:
    return RoutedPromptConfig.from_dict({"batch_size": 8, "num_prompt_tokens": 4, "epochs": 1, **values})


# ---------------------------------------------------------------- what a trial trains on and records
@pytest.mark.parametrize("trial_size, train_sizes, expected", [
    (None, {}, {"sst2": 16, "stsb": 16}),              # the study's train_per_task
    (8, {}, {"sst2": 8, "stsb": 8}),                   # the trial's knob replaces it
    (8, {"stsb": 4}, {"sst2": 8, "stsb": 4}),          # a task with its own size keeps it
    (None, {"sst2": 20}, {"sst2": 20, "stsb": 16}),
    (100, {}, {"sst2": TINY_TRAIN, "stsb": TINY_TRAIN}),   # asked for more than the split holds
])
def test_a_trial_trains_on_its_sizes_and_reports_them(bert_dir, data_dir, trial_size, train_sizes, expected):
    trainer = Trainer(knobs(train_per_task=trial_size), make_setup(bert_dir, data_dir, train_sizes=train_sizes))
    assert dict(zip(TASKS, trainer.sizes)) == expected
    metrics = trainer.run().metrics
    assert {task: metrics[train_examples_metric(task)] for task in TASKS} == expected


def test_the_trial_config_carries_the_size_into_the_recorded_params():
    config = {"train_per_task": 50, "sharing": "separate", "__trial_index__": 2}
    assert knob_values(config) == {"train_per_task": 50, "sharing": "separate"}   # what MLflow logs
    parsed = trial_config(config)
    assert parsed.train_per_task == 50 and parsed.seed == 2
    assert RoutedPromptConfig().train_per_task is None


# ---------------------------------------------------------------- pre-trained source cache
def test_a_sources_cache_key_holds_its_own_tasks_size_only(tmp_path, monkeypatch):
    monkeypatch.setattr(TrialSetup, "resolved_backbone", lambda self: "backbone")
    base = TrialSetup(tasks=TASKS, data_dir=str(tmp_path), train_per_task=16)
    key = source_prompts.cache_key
    assert key("sst2", base, 4, 0)["split"]["train_per_task"] == 16
    # Another task's size does not change sst2's prompt, its own does.
    assert key("sst2", base.model_copy(update={"train_sizes": {"stsb": 4}}), 4, 0) == key("sst2", base, 4, 0)
    assert key("stsb", base.model_copy(update={"train_sizes": {"stsb": 4}}), 4, 0)["split"]["train_per_task"] == 4
    # A trial's train_per_task reaches the key through the trial's setup.
    trial = base.for_trial({"train_per_task": 50})
    assert key("sst2", trial, 4, 0)["split"]["train_per_task"] == 50
    assert source_prompts.cache_path(key("sst2", trial, 4, 0)) != source_prompts.cache_path(key("sst2", base, 4, 0))


def test_a_source_is_pretrained_on_its_own_tasks_size(bert_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(source_prompts.CACHE_ENV, str(tmp_path))
    trainer = Trainer(knobs(sources="tasks", source_init="pretrained", train_per_task=8),
                      make_setup(bert_dir, data_dir, train_sizes={"stsb": 4}))
    assert [c.trained for c in trainer.source_cache] == [True, True]
    stored = {path.name.split("-")[0]: path for path in tmp_path.glob("*.pt")}
    import torch

    sizes = {task: torch.load(path, weights_only=True)["key"]["split"]["train_per_task"]
             for task, path in stored.items()}
    assert sizes == {"sst2": 8, "stsb": 4}


# ---------------------------------------------------------------- task sets by label space (F16)
STUDY = ("rt_sentiment", "rt_subjectivity", "vader_movies", "vader_tweets", "bbc_topic")


def test_label_spaces_group_sentiment_across_corpora_and_not_topic():
    groups = label_groups(STUDY)
    assert groups == {"sentiment": ["rt_sentiment", "vader_movies", "vader_tweets"],
                      "subjectivity": ["rt_subjectivity"], "news_topic": ["bbc_topic"]}
    assert get_task("sst2").labels == "sentiment" and get_task("atomic_xAttr").labels == "atomic_xAttr"
    assert get_task("mrpc").labels == get_task("qqp").labels != get_task("cola").labels


def test_task_sets_hold_as_many_tasks_with_and_without_shared_labels():
    setup = TrialSetup(tasks=STUDY, train_sizes={"bbc_topic": 30, "vader_movies": 40})
    shared = setup.for_trial({"task_set": "shared_labels"})
    distinct = setup.for_trial({"task_set": "distinct_labels"})
    assert shared.tasks == ("rt_sentiment", "vader_movies", "vader_tweets")
    assert distinct.tasks == ("rt_sentiment", "rt_subjectivity", "bbc_topic")
    assert shared.train_sizes == {"vader_movies": 40} and distinct.train_sizes == {"bbc_topic": 30}
    assert setup.for_trial({"task_set": "all"}) is setup and setup.for_trial({}) is setup
    # Two sentiment tasks and three label spaces: both sets hold two tasks.
    small = TrialSetup(tasks=("bbc_topic", "rt_sentiment", "rt_subjectivity", "vader_nyt"))
    assert small.for_trial({"task_set": "shared_labels"}).tasks == ("rt_sentiment", "vader_nyt")
    assert small.for_trial({"task_set": "distinct_labels"}).tasks == ("bbc_topic", "rt_sentiment")


# ---------------------------------------------------------------- bad input: one line, before any trial
SPEC = {
    "name": "t", "backbone": {"name": "minilm", "max_length": 32},
    "data": {"dir": "data", "tasks": ["rt_sentiment", "bbc_topic"], "train_per_task": 16, "eval_per_task": 8},
    "space": {"name": "findings", "fixed": {"batch_size": 8}},
    "search": {"algorithm": "random", "seed": 3}, "scheduler": {"name": "none"},
    "trials": {"num": 4, "concurrency": 1}, "resources": {"cpus": 1},
}


def spec_with(data=None, space=None) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(SPEC))
    raw["data"].update(data or {})
    raw["space"].update(space or {})
    return raw


@pytest.mark.parametrize("make, message", [
    (lambda: spec_with(data={"train_sizes": {"sst2": 10}}),
     r"s\.yaml: key 'train_sizes.sst2': not a task of this study; allowed: rt_sentiment, bbc_topic$"),
    (lambda: spec_with(data={"train_sizes": {"bbc_topic": 0}}),
     r"s\.yaml: key 'train_sizes.bbc_topic': must be >= 1, got 0$"),
    (lambda: spec_with(data={"train_sizes": {"bbc_topic": "many"}}), 
     r"s\.yaml: key 'data.train_sizes.bbc_topic': expected int, got 'many'$"),
    (lambda: spec_with(space={"override": {"train_per_task": [0, 10]}}),
     r"s\.yaml: key 'space.override.train_per_task': knob 'train_per_task' got 0; allowed: int in \[1, 1e\+07\] or null \(default\)$"),
    (lambda: spec_with(space={"override": {"train_per_task": {"low": 10, "high": 5}}}),
     r"s\.yaml: key 'space.override.train_per_task': low 10 is above high 5$"),
    (lambda: spec_with(space={"fixed": {"batch_size": 8, "task_set": "shared"}}),
     r"s\.yaml: key 'space.fixed.task_set': knob 'task_set' got 'shared'; allowed values: 'all', "
     r"'shared_labels', 'distinct_labels'$"),
    (lambda: spec_with(space={"override": {"task_set": ["shared_labels", "distinct_labels"]}}),
     r"s\.yaml: key 'space': knob 'task_set' shared_labels needs two tasks that share a label space and two "
     r"label spaces among the study's tasks; label spaces: sentiment: rt_sentiment; news_topic: bbc_topic$"),
])
def test_bad_sizes_and_task_sets_are_one_line_errors_at_validate(tmp_path, make, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(make()))
    with pytest.raises(InputError, match=message) as info:
        StudySpec.load(path)
    assert "\n" not in str(info.value)


def test_a_good_spec_with_sizes_and_task_sets_validates(tmp_path):
    raw = spec_with(data={"tasks": list(STUDY), "train_sizes": {"bbc_topic": 20}},
                    space={"override": {"task_set": ["shared_labels", "distinct_labels"]}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = StudySpec.load(path)
    assert spec.setup.train_sizes == {"bbc_topic": 20} and spec.setup.train_size("bbc_topic") == 20
    assert "(train 16, bbc_topic 20, eval 8 per task" in spec.describe()[2]
    assert "train_per_task" in spec.space.parameters() and "task_set" in spec.space.parameters()
    assert StudySpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))).setup == spec.setup


def test_task_owned_sources_must_fit_the_smallest_task_set(tmp_path):
    raw = spec_with(data={"tasks": list(STUDY)},
                    space={"override": {"task_set": ["all", "distinct_labels"], "num_selected": [-1, 4]},
                           "fixed": {"batch_size": 8, "sources": "tasks", "sharing": "custom"}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"knob 'num_selected' can be 4 but with sources: tasks some trials have "
                                         r"only 3 router candidates \(3 tasks\)"):
        StudySpec.load(path)


def test_a_per_task_metric_must_be_one_every_trial_reports(tmp_path):
    raw = spec_with(data={"tasks": list(STUDY)}, space={"override": {"task_set": ["shared_labels", "distinct_labels"]}})
    raw["metric"] = {"name": "val/bbc_topic", "mode": "max"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"key 'metric.name': 'val/bbc_topic' is not a metric every epoch of this "
                                         r"study reports; allowed: score, train_loss, val/rt_sentiment, "):
        StudySpec.load(path)
    raw["metric"]["name"] = "val/rt_sentiment"   # in both task sets
    path.write_text(yaml.safe_dump(raw))
    assert StudySpec.load(path).metric == "val/rt_sentiment"


def test_the_knob_and_the_setup_refuse_bad_sizes_directly():
    with pytest.raises(InputError, match=r"^trial config: knob 'train_per_task' got 0; allowed: int in "):
        RoutedPromptConfig.from_dict({"train_per_task": 0}, where="trial config")
    with pytest.raises(InputError, match=r"^setup: key 'train_sizes.vader_nyt': not a task of this study"):
        TrialSetup.from_dict({"tasks": ["rt_sentiment"], "train_sizes": {"vader_nyt": 5}})
    with pytest.raises(InputError, match=r"^trial config: knob 'task_set' distinct_labels needs two tasks"):
        TrialSetup(tasks=("rt_sentiment", "vader_nyt")).for_trial({"task_set": "distinct_labels"})
    assert get_space("findings").parameters()["train_per_task"].distribution.choices == (50, 200, 800)
