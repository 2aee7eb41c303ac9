"""The training loop on tiny random backbones and tiny local GLUE files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tiny_backbones import one_thread  # noqa: F401  (autouse fixture)
from tiny_backbones import bert_dir, data_dir  # noqa: F401  (fixtures)
from tiny_backbones import TINY_TASKS, save_tiny_t5
from tiny_backbones import make_setup as tiny_setup
from routed_study.trainables.backbones import EncoderBackbone
from routed_study.trainables.routed_prompt import RoutedPromptConfig
from routed_study.trainables.training import TIMING_METRICS, Trainer, epoch_batches, train

TASKS = TINY_TASKS


def make_setup(backbone, data_dir, **overrides):
    return tiny_setup(backbone, data_dir, **{"train_per_task": 24, **overrides})   # every tiny train example


def config(**knobs) -> RoutedPromptConfig:
    return RoutedPromptConfig.from_dict({"batch_size": 8, "num_prompt_tokens": 4, "epochs": 2, **knobs})


def contract_keys(metrics: dict, prefix: str) -> None:
    for task in TASKS:
        assert 0.0 <= metrics[f"{prefix}/{task}"] <= 100.0
        assert any(key.startswith(f"{prefix}/{task}/") for key in metrics)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_reports_every_epoch_and_freezes_backbone(bert_dir, data_dir, position):
    trainer = Trainer(config(prompt_position=position, prompt_encoder="mlp"), make_setup(bert_dir, data_dir))
    frozen = {k: v.clone() for k, v in trainer.backbone.model.state_dict().items()}
    reports = []
    result = trainer.run(lambda metrics, state, routing: reports.append((metrics, state, routing)))
    assert [m["epoch"] for m, _, _ in reports] == [1, 2]
    assert [m["step"] for m, _, _ in reports] == [6, 12]        # 2 tasks x 24 examples / batch 8
    for metrics, _, _ in reports:
        assert np.isfinite(metrics["train_loss"]) and metrics["tau"] > 0
        contract_keys(metrics, "val")
        assert metrics["score"] == pytest.approx(np.mean([metrics[f"val/{t}"] for t in TASKS]))
    assert "test_score" not in reports[0][0]
    last = reports[-1][0]
    contract_keys(last, "test")
    assert last["test_score"] == pytest.approx(np.mean([last[f"test/{t}"] for t in TASKS]))
    assert result.metrics == last
    assert result.routing.router_matrix.shape == (2, 4) and result.routing.task_names == TASKS
    assert not torch.equal(trainer.model.router.detach(), torch.zeros(2, 4))   # the router trained
    after = trainer.backbone.model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert all(not p.requires_grad for p in trainer.backbone.model.parameters())


def test_seq2seq_trains_and_evaluates(tmp_path, data_dir):
    setup = make_setup(save_tiny_t5(tmp_path / "t5"), data_dir)
    result = train(config(epochs=1, compose_method="cat", num_selected=2, add_target=True,
                          target_share="learned"), setup)
    assert result.metrics["epoch"] == 1 and np.isfinite(result.metrics["train_loss"])
    contract_keys(result.metrics, "test")
    assert result.routing.target_gates.shape == (2,)


def test_linear_head_is_trained_and_checkpointed(bert_dir, data_dir):
    result = train(config(epochs=1, head="linear"), make_setup(bert_dir, data_dir))
    assert set(result.state["head"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert [g["name"] for g in result.state["optimizer"]["param_groups"]] == ["prompts", "router", "head"]


def test_resume_continues_bit_for_bit(bert_dir, data_dir):
    # Random routing, random source order and a learned gate: every RNG the loop uses matters.
    knobs = config(epochs=3, route_method="rb", source_order="rand", compose_method="cat", num_selected=2,
                   add_target=True, target_share="learned", prompt_encoder="lstm", task_sampling="uniform")
    setup = make_setup(bert_dir, data_dir)
    full, saved = [], {}

    def keep(metrics, state, routing):
        full.append(metrics)
        if metrics["epoch"] == 1:
            saved.update(state)   # kept in memory while training goes on: must be a snapshot

    train(knobs, setup, report=keep)
    resumed = []
    train(knobs, setup, report=lambda metrics, state, routing: resumed.append(metrics), resume_state=saved)
    assert [m["epoch"] for m in resumed] == [2, 3]
    def model_metrics(reports):
        return [{k: v for k, v in m.items() if k not in TIMING_METRICS} for m in reports]

    assert model_metrics(resumed) == model_metrics(full[1:])   # every loss, score and tau identical


def test_non_finite_loss_names_the_step(bert_dir, data_dir, monkeypatch):
    def nan_loss(self, task_index, embeds, prompt, batch, position):
        return prompt.sum() * float("nan")

    monkeypatch.setattr(EncoderBackbone, "loss", nan_loss)
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        train(config(), make_setup(bert_dir, data_dir))


@pytest.mark.parametrize("sampling", ["size", "uniform"])
def test_epoch_batches(sampling):
    sizes = [10, 3]
    plan = epoch_batches(sizes, 4, sampling, np.random.default_rng(0))
    assert len(plan) == 3 + 1
    again = epoch_batches(sizes, 4, sampling, np.random.default_rng(0))
    assert [(t, idx.tolist()) for t, idx in plan] == [(t, idx.tolist()) for t, idx in again]
    if sampling == "size":
        for task, size in enumerate(sizes):
            seen = np.concatenate([idx for t, idx in plan if t == task])
            assert sorted(seen.tolist()) == list(range(size))
    assert all(len(idx) <= 4 and idx.max() < sizes[t] for t, idx in plan)


def test_uniform_sampling_ignores_task_sizes():
    plan = epoch_batches([1000, 10], 10, "uniform", np.random.default_rng(0))
    share = np.mean([t == 1 for t, _ in plan])
    assert 0.4 < share < 0.6
    by_size = epoch_batches([1000, 10], 10, "size", np.random.default_rng(0))
    assert np.mean([t == 1 for t, _ in by_size]) < 0.02


def test_setup_values_reach_the_trainer(bert_dir, data_dir):
    trainer = Trainer(config(), make_setup(bert_dir, data_dir, train_per_task=16, eval_per_task=4))
    assert trainer.sizes == [16, 16] and [len(s) for s in trainer.data.validation] == [4, 4]
    assert trainer.total_steps == 2 * 4
    assert dataclasses.asdict(trainer.config) == dataclasses.asdict(config())
