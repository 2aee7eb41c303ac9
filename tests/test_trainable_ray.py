"""The Ray Tune function trainable: one tiny trial under a real Tuner, config handling, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tiny_backbones import one_thread  # noqa: F401  (autouse fixture)
from tiny_backbones import save_tiny_bert, write_tiny_glue
from routed_study.trainables.artifacts import RoutingSnapshot
from routed_study.trainables.errors import InputError
from routed_study.trainables.setup import TrialSetup
from routed_study.trainables.trainable import STATE_FILE, load_checkpoint_state, routed_prompt_trainable, trial_config


def test_trial_config_skips_bookkeeping_and_shifts_seed_by_repeat():
    config = trial_config({"seed": 3, "epochs": 2, "__trial_index__": 2, "__other__": "x"})
    assert config.seed == 5 and config.epochs == 2


def test_trial_config_rejects_unknown_knobs():
    with pytest.raises(InputError, match="unknown knob 'learning_rat'.*did you mean 'learning_rate'"):
        trial_config({"learning_rat": 0.1})


def test_checkpoint_state_roundtrip(tmp_path):
    from ray import tune

    state = {"step": 4, "rng": {"numpy": ("MT19937", torch.arange(3).numpy())}}
    torch.save(state, tmp_path / STATE_FILE)
    loaded = load_checkpoint_state(tune.Checkpoint.from_directory(tmp_path))
    assert loaded["step"] == 4 and loaded["rng"]["numpy"][1].tolist() == [0, 1, 2]
    assert load_checkpoint_state(None) is None


def test_artifacts_round_trip_and_empty_gates(tmp_path):
    matrix = np.array([[1.5, -1.0], [0.0, 2.0]])
    paths = RoutingSnapshot(("cola", "mrpc"), ("source_0", "private"), matrix, None).write(tmp_path)
    router = pd.read_csv(paths["router_matrix"], index_col="task")
    assert list(router.columns) == ["source_0", "private"] and np.allclose(router.to_numpy(), matrix)
    assert pd.read_csv(paths["target_gates"], index_col="task")["target_gate"].isna().all()
    assert paths["router_heatmap"].stat().st_size > 1000


def test_bad_setup_is_an_input_error_before_training():
    with pytest.raises(InputError, match="unknown task 'sst'"):
        routed_prompt_trainable({"epochs": 1}, {"tasks": ["sst"]})


def test_one_trial_under_a_real_tuner(local_ray, tmp_path):
    from ray import tune

    setup = TrialSetup(tasks=("sst2", "stsb"), backbone=str(save_tiny_bert(tmp_path / "bert")),
                       data_dir=str(write_tiny_glue(tmp_path / "data")), train_per_task=16, eval_per_task=8,
                       max_length=32)
    param_space = {"epochs": 2, "batch_size": 8, "num_prompt_tokens": 4, "add_target": True,
                   "target_share": "learned", "learning_rate": tune.choice([0.05])}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(routed_prompt_trainable, setup=setup.to_dict()), {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=1, metric="score", mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "studies"), name="tiny",
                                  sync_config=tune.SyncConfig(sync_artifacts=True)))
    results = tuner.fit()
    assert results.errors == []
    result = results[0]
    metrics = result.metrics
    for key in ("epoch", "step", "train_loss", "tau", "score", "val/sst2", "val/stsb/pearson",
                "test_score", "test/sst2", "test/sst2/accuracy"):
        assert key in metrics, key
    assert metrics["epoch"] == 2 and metrics["training_iteration"] == 2
    assert result.checkpoint is not None
    assert load_checkpoint_state(result.checkpoint)["step"] == metrics["step"] == 8

    trial_dir = result.path
    router = pd.read_csv(f"{trial_dir}/router_matrix.csv", index_col=0)
    assert list(router.index) == ["sst2", "stsb"]
    assert list(router.columns) == [f"source_{i}" for i in range(4)]
    gates = pd.read_csv(f"{trial_dir}/target_gates.csv", index_col=0)
    assert gates["target_gate"].between(0, 1).all()
    with open(f"{trial_dir}/router_heatmap.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    progress = pd.read_csv(f"{trial_dir}/progress.csv")
    assert progress["epoch"].tolist() == [1, 2]
    assert json.loads(open(f"{trial_dir}/params.json").read())["epochs"] == 2
