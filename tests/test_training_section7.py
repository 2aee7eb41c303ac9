"""Section 7 in the training loop, on tiny backbones: the length limit, backbone dropout, task-owned
pre-trained sources and their per-node cache (concurrent trials), plugin methods."""

from __future__ import annotations

import multiprocessing
import os
import sys
import textwrap

import numpy as np
import pytest
import torch

from tiny_backbones import one_thread  # noqa: F401  (autouse fixture)
from tiny_backbones import bert_dir, data_dir  # noqa: F401  (fixtures)
from tiny_backbones import TINY_TASKS, make_setup, save_tiny_t5
from routed_study.trainables.errors import InputError
from routed_study.trainables.limits import position_limit
from routed_study.trainables.routed_prompt import RoutedPromptConfig
from routed_study.trainables.setup import TrialSetup
from routed_study.trainables.training import Trainer

TASKS = TINY_TASKS


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("t5"))


def config(**knobs) -> RoutedPromptConfig:
    return RoutedPromptConfig.from_dict({"batch_size": 8, "num_prompt_tokens": 4, "epochs": 1, **knobs})


# ---------------------------------------------------------------- length limit
def test_length_limit_is_checked_before_any_trial(bert_dir, t5_dir, data_dir):
    assert position_limit(make_setup(bert_dir, data_dir)) == 256       # the tiny BERT's config
    assert position_limit(TrialSetup(tasks=TASKS)) == 512               # MiniLM
    assert position_limit(make_setup(t5_dir, data_dir)) is None         # T5: relative positions
    with pytest.raises(InputError, match=r"^setup: max_length 300 = 300 tokens exceed backbone .*'s 256 "
                                         r"positions; lower max_length$"):
        make_setup(bert_dir, data_dir, max_length=300).check()
    setup = make_setup(bert_dir, data_dir, max_length=200)
    setup.check()
    with pytest.raises(InputError, match=r"^trial config: a prompt of 80 tokens \(num_selected 4 x "
                                         r"num_prompt_tokens 20 under compose_method cat\) plus max_length 200 "
                                         r"= 280 tokens exceed backbone .*'s 256 positions"):
        Trainer(config(num_prompt_tokens=20, compose_method="cat"), setup)
    # T5 has no hard limit: the same prompt is accepted (memory is the only bound).
    Trainer(config(num_prompt_tokens=20, compose_method="cat"), make_setup(t5_dir, data_dir, max_length=200))


def test_validate_checks_the_longest_prompt_of_a_space():
    from routed_study.search_spaces import get_space

    setup = TrialSetup(tasks=("rt_sentiment", "bbc_topic"), max_length=400)
    space = get_space("findings").customise({"num_prompt_tokens": {"low": 4, "high": 40}})
    with pytest.raises(InputError, match=r"^key 'space': a prompt of 280 tokens \(num_selected 7 x "
                                         r"num_prompt_tokens 40 under compose_method cat\) plus max_length 400"):
        space.check_setup(setup)
    get_space("findings").check_setup(TrialSetup(tasks=("rt_sentiment", "bbc_topic"), max_length=64))


# ---------------------------------------------------------------- backbone dropout
@pytest.mark.parametrize("family", ["encoder", "seq2seq"])
def test_backbone_dropout_on_in_training_off_at_evaluation(family, bert_dir, t5_dir, data_dir):
    backbone = bert_dir if family == "encoder" else t5_dir
    losses = {}
    for dropout in (True, False):
        trainer = Trainer(config(backbone_dropout=dropout), make_setup(backbone, data_dir))
        batch = trainer.backbone.collate(trainer.data.train[0], range(8))
        trainer.backbone.train_mode(dropout=dropout)
        assert trainer.backbone.model.training is dropout
        with torch.no_grad():
            embeds, prompt = trainer.prompt(0, batch)
            losses[dropout] = [trainer.backbone.loss(0, embeds, prompt, batch, "pre").item() for _ in range(2)]
        trainer.evaluate(trainer.data.validation, "val")
        assert trainer.backbone.model.training is False
    assert losses[True][0] != losses[True][1]      # dropout draws differ from call to call
    assert losses[False][0] == losses[False][1]
    assert RoutedPromptConfig().backbone_dropout is True


# ---------------------------------------------------------------- task-owned pre-trained sources
def _cached(args):
    """One 'trial' in its own process: fetch the pre-trained prompt of a task through the cache."""
    cache, backbone, data_dir = args
    os.environ["ROUTED_STUDY_SOURCE_CACHE"] = cache
    torch.set_num_threads(1)
    from routed_study.trainables.source_prompts import cached_source_prompt

    setup = TrialSetup(tasks=TASKS, backbone=backbone, data_dir=data_dir, train_per_task=16, eval_per_task=8,
                       max_length=32)
    result = cached_source_prompt("sst2", setup, num_prompt_tokens=4, seed=0)
    return result.trained, result.seconds, result.prompt.numpy()


def test_concurrent_trials_train_a_source_once_and_share_it(bert_dir, data_dir, tmp_path):
    cache = str(tmp_path / "cache")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        first, second = pool.map(_cached, [(cache, str(bert_dir), str(data_dir))] * 2)
    assert sorted([first[0], second[0]]) == [False, True]     # exactly one of them trained it
    np.testing.assert_array_equal(first[2], second[2])        # the other read the complete file
    trained, reused = (first, second) if first[0] else (second, first)
    third = _cached((cache, str(bert_dir), str(data_dir)))   # a later trial on this node
    assert third[0] is False
    np.testing.assert_array_equal(third[2], trained[2])
    print(f"pre-training sst2's source: {trained[1]:.2f} s; a later trial reads it in {third[1]:.3f} s "
          f"(saved {trained[1] - third[1]:.2f} s per task and trial)")
    assert third[1] < trained[1]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [f for f in files if f.endswith(".pt")] and not [f for f in files if f.endswith(".tmp")]


def test_a_write_that_dies_leaves_no_file_under_the_final_name(bert_dir, data_dir, tmp_path, monkeypatch):
    from routed_study.trainables import source_prompts

    monkeypatch.setenv("ROUTED_STUDY_SOURCE_CACHE", str(tmp_path))
    setup = make_setup(bert_dir, data_dir)
    monkeypatch.setattr(source_prompts, "pretrain_source", lambda *a, **k: torch.zeros(4, 32))

    def dies(obj, stream):
        stream.write(b"half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        source_prompts.cached_source_prompt("sst2", setup, 4, 0)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    monkeypatch.setenv("ROUTED_STUDY_SOURCE_CACHE", str(tmp_path))
    monkeypatch.setattr(source_prompts, "pretrain_source", lambda *a, **k: torch.ones(4, 32))
    assert source_prompts.cached_source_prompt("sst2", setup, 4, 0).trained is True


@pytest.mark.parametrize("freeze", [True, False])
def test_trials_with_pretrained_sources_reuse_the_cache_and_stay_reproducible(bert_dir, data_dir, tmp_path,
                                                                              monkeypatch, freeze):
    monkeypatch.setenv("ROUTED_STUDY_SOURCE_CACHE", str(tmp_path))
    knobs = config(sources="tasks", source_init="pretrained", freeze_sources=freeze, epochs=1)
    first = Trainer(knobs, make_setup(bert_dir, data_dir))          # trains both tasks' sources
    assert [c.trained for c in first.source_cache] == [True, True]
    start = first.model.sources.detach().clone()
    result_first = first.run()
    second = Trainer(knobs, make_setup(bert_dir, data_dir))         # reads them
    assert [c.trained for c in second.source_cache] == [False, False]
    assert torch.equal(second.model.sources.detach(), start)
    result_second = second.run()
    assert result_first.metrics["train_loss"] == result_second.metrics["train_loss"]  # the cache shifts no RNG
    assert result_first.routing.candidate_names == TASKS
    assert torch.equal(first.model.sources.detach(), start) is freeze


# ---------------------------------------------------------------- plugins
PLUGIN = textwrap.dedent('''
    """A route method from outside the package: sigmoid at half the temperature."""
    from routed_study.trainables.routed_prompt.methods import register_route_method


    @register_route_method("halfsig", same="halfsig")
    def halfsig(logits, tau):
        return (2 * logits / tau).sigmoid()
''')


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "halfsig_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    yield "halfsig_plugin"
    from routed_study.trainables.routed_prompt import methods

    methods.ROUTE_METHODS._entries.pop("halfsig", None)   # registries are process-wide
    sys.modules.pop("halfsig_plugin", None)


def test_load_plugins_says_which_module_fails():
    from routed_study.trainables.plugins import load_plugins

    with pytest.raises(InputError, match=r"^key 'plugins': plugin module 'no_such_plugin' does not import "
                                         r"\(ModuleNotFoundError: No module named 'no_such_plugin'\)"):
        load_plugins(["no_such_plugin"])


@pytest.mark.slow
def test_a_plugin_route_method_is_accepted_searched_and_trained(plugin_on_path, bert_dir, data_dir, tmp_path):
    import ray
    from ray import tune

    from routed_study.search_spaces import get_space
    from routed_study.trainables.plugins import load_plugins
    from routed_study.trainables.trainable import routed_prompt_trainable

    with pytest.raises(InputError, match="knob 'route_method' got 'halfsig'"):
        RoutedPromptConfig.from_dict({"route_method": "halfsig"})
    load_plugins([plugin_on_path])
    assert RoutedPromptConfig.from_dict({"route_method": "halfsig"}).eval_route_method == "same"
    sampled = {c.get("route_method") for c in get_space("findings").sample_configs(60)}
    assert "halfsig" in sampled

    import tempfile

    setup = make_setup(bert_dir, data_dir, plugins=(plugin_on_path,))
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths have a length limit
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(routed_prompt_trainable, setup=setup.to_dict()), {"cpu": 1}),
            param_space={"epochs": 1, "batch_size": 8, "num_prompt_tokens": 4, "route_method": "halfsig",
                         "num_selected": 2},
            tune_config=tune.TuneConfig(num_samples=1, metric="score", mode="max"),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "studies"), name="plugin"))
        results = tuner.fit()
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(ray_dir, ignore_errors=True)
    assert results.errors == []
    assert results[0].metrics["epoch"] == 1 and np.isfinite(results[0].metrics["train_loss"])


@pytest.mark.slow
def test_a_plugin_route_method_runs_in_a_study_and_is_analysed(plugin_on_path, bert_dir, data_dir, tmp_path,
                                                                  monkeypatch):
    """The acceptance path end to end: a spec names the plugin, `routed-study run` trains it in the
    study's Ray trials (workers import it themselves), and `routed-study analyze` reads its trials."""
    import pandas as pd
    import yaml

    from routed_study.study.cli import main

    monkeypatch.chdir(tmp_path)
    spec = {"name": "plugin_study", "plugins": [plugin_on_path],
            "backbone": {"name": str(bert_dir), "max_length": 32},
            "data": {"dir": str(data_dir), "tasks": list(TASKS), "train_per_task": 16, "eval_per_task": 8},
            "space": {"name": "findings", "override": {"route_method": ["halfsig", "sigmoid"]},
                      "fixed": {"epochs": 1, "batch_size": 8, "num_prompt_tokens": 4, "num_selected": 2,
                                "sharing": "custom"}},
            "search": {"algorithm": "random", "seed": 0}, "scheduler": {"name": "none"},
            "trials": {"num": 10, "concurrency": 1}, "report": False}   # analyze needs 10
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    findings = tmp_path / "route.yaml"
    findings.write_text("findings:\n  - id: P1\n    statement: halfsig routes better than sigmoid.\n"
                        "    knob: route_method\n    a: halfsig\n    b: sigmoid\n")
    assert main(["validate", str(tmp_path / "plugin.yaml")]) == 0
    assert main(["run", str(tmp_path / "plugin.yaml")]) == 0
    study = tmp_path / "studies" / "plugin_study"
    assert main(["analyze", str(study), "--out", str(tmp_path / "out"), "--findings", str(findings)]) == 0

    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 10 and trials["score"].notna().all()
    from routed_study.analysis.encoding import NA, mark_not_applicable
    from routed_study.trainables.routed_prompt.config import KNOBS

    routed = mark_not_applicable(trials, [k for k in KNOBS if k in trials])["route_method"]
    routed = routed[routed != NA]   # trials where the route method is not inert (section 7)
    counts = {m: int((routed == m).sum()) for m in ("halfsig", "sigmoid")}
    assert counts["halfsig"] >= 1
    claim = pd.read_csv(tmp_path / "out" / "findings.csv").set_index("id").loc["P1"]
    assert (claim["n_a"], claim["n_b"]) == (counts["halfsig"], counts["sigmoid"])   # the plugin's trials: side a
