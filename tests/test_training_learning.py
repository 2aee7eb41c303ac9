"""Learning on real data with the real MiniLM (slow): prompt tuning beats the zero-shot verbalizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from routed_study.trainables.routed_prompt import RoutedPromptConfig
from routed_study.trainables.setup import TrialSetup
from routed_study.trainables.tasks import score_predictions
from routed_study.trainables.training import Trainer

# Unlike the tiny models (tests/tiny_backbones.py, one thread), the real MiniLM runs on torch's
# default threads: on this 2-core machine a training step is 1.6x faster on two threads than on one.
pytestmark = pytest.mark.slow


@torch.no_grad()
def zero_shot_main(trainer: Trainer, task: int) -> float:
    """The frozen verbalizer with no prompt at all, on the test split."""
    split = trainer.data.test[task]
    predictions = []
    for start in range(0, len(split), 32):
        batch = trainer.backbone.collate(split, range(start, min(start + 32, len(split))))
        embeds = trainer.backbone.embed(batch["input_ids"])
        empty = embeds.new_zeros(embeds.shape[0], 0, embeds.shape[-1])
        predictions += trainer.backbone.predict(task, embeds, empty, batch, "pre")
    return score_predictions(trainer.backbone.tasks[task], predictions, split.references)["main"]


#: One-task recipe for rt_sentiment: 125 steps of batch 16 (1000 examples x 2 epochs).
RECIPE_SETUP = {"train_per_task": 1000, "eval_per_task": 200}
RECIPE = {"num_prompt_tokens": 20, "learning_rate": 0.05, "epochs": 2}


def test_prompt_tuning_beats_zero_shot_on_rt_sentiment(offline_data):
    # target_share 1 is plain prompt tuning (the baseline of finding F13). Measured test accuracy
    # against 59.5 zero-shot: 68.0 and 66.0 for seeds 1 and 2 (RECIPE); with 400 examples x 3 epochs
    # (75 steps) seeds 0-2 gave 68.0, 60.0 and 64.0: too few steps to learn reliably.
    setup = TrialSetup(tasks=("rt_sentiment",), data_dir=str(offline_data), **RECIPE_SETUP)
    config = RoutedPromptConfig.from_dict({**RECIPE, "add_target": True, "target_share": 1.0})
    trainer = Trainer(config, setup)
    zero_shot = zero_shot_main(trainer, 0)
    result = trainer.run()
    print(f"rt_sentiment test accuracy: zero-shot {zero_shot:.1f} -> prompt-tuned "
          f"{result.metrics['test/rt_sentiment']:.1f} (validation {result.metrics['score']:.1f})")
    assert result.metrics["test/rt_sentiment"] > zero_shot + 2.0


SEEDS = (0, 1)


def spread(values) -> str:
    return f"mean {np.mean(values):.1f}, min {min(values):.1f}, max {max(values):.1f} over seeds {list(SEEDS)}"


def test_attention_router_beats_zero_shot_on_rt_sentiment(offline_data):
    """ATTEMPT as published: its input-dependent router over 4 sources and the task's own target
    prompt (attend_target), the mixture added to the target (target_mix add); every seed above
    zero-shot. Measured with RECIPE: 66.5 and 66.0 for seeds 1 and 2 against 59.5 zero-shot. With
    400 examples x 3 epochs seeds 0-2 gave 65.5, 57.0 and 61.5 (the thread count alone moved seed 1
    from 62.5 to 57.0), and over 4 random sources alone, with no target, 59.0 and 65.0 for seeds 0
    and 1: a softmax-averaged pool learns each source at a quarter of the rate."""
    setup = TrialSetup(tasks=("rt_sentiment",), data_dir=str(offline_data), **RECIPE_SETUP)
    scores, zero_shot = [], None
    for seed in SEEDS:
        config = RoutedPromptConfig.from_dict({**RECIPE, "route_method": "attention", "attend_target": True,
                                               "add_target": True, "target_mix": "add", "seed": seed})
        trainer = Trainer(config, setup)
        zero_shot = zero_shot_main(trainer, 0) if zero_shot is None else zero_shot
        result = trainer.run()
        scores.append(result.metrics["test/rt_sentiment"])
        assert result.routing.router_matrix.shape == (1, 5)      # mean attention per source and the target
    print(f"rt_sentiment test accuracy: zero-shot {zero_shot:.1f} -> attention router {spread(scores)}")
    assert min(scores) > zero_shot + 2.0


def test_task_owned_pretrained_sources_beat_zero_shot(offline_data, tmp_path, monkeypatch):
    """Each task owns a source prompt, pre-trained alone (cached), then routed over (rb) and tuned on."""
    monkeypatch.setenv("ROUTED_STUDY_SOURCE_CACHE", str(tmp_path))
    tasks = ("rt_sentiment", "rt_subjectivity")
    setup = TrialSetup(tasks=tasks, data_dir=str(offline_data), train_per_task=120, eval_per_task=200)
    scores, zero_shot = [], None
    for seed in SEEDS:
        config = RoutedPromptConfig.from_dict({"num_prompt_tokens": 10, "learning_rate": 0.05, "epochs": 2,
                                               "sources": "tasks", "source_init": "pretrained", "seed": seed})
        trainer = Trainer(config, setup)
        if zero_shot is None:
            zero_shot = float(np.mean([zero_shot_main(trainer, t) for t in range(len(tasks))]))
        result = trainer.run()
        scores.append(result.metrics["test_score"])
        assert result.routing.candidate_names == tasks
    print(f"mean test score of {', '.join(tasks)}: zero-shot {zero_shot:.1f} -> task-owned pre-trained "
          f"sources {spread(scores)}")
    assert min(scores) > zero_shot + 2.0


def test_multi_task_routing_trains_end_to_end(offline_data):
    tasks = ("rt_sentiment", "rt_subjectivity", "vader_movies")
    setup = TrialSetup(tasks=tasks, data_dir=str(offline_data), train_per_task=64, eval_per_task=48)
    config = RoutedPromptConfig.from_dict({"num_prompt_tokens": 10, "epochs": 2, "private_prompts": True,
                                           "add_target": True, "target_share": "learned"})
    reports = []
    result = Trainer(config, setup).run(lambda metrics, state, routing: reports.append(metrics))
    print({k: round(v, 2) for k, v in result.metrics.items() if "/" not in k or k.count("/") == 1})
    assert [m["epoch"] for m in reports] == [1, 2]
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    for task in tasks:
        assert np.isfinite(result.metrics[f"test/{task}"])
    assert result.routing.router_matrix.shape == (3, 5)
    assert np.abs(result.routing.router_matrix).max() > 0   # the router moved


def test_router_overhead_bench_runs(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "router_overhead.py"
    spec = importlib.util.spec_from_file_location("router_overhead", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ratio = bench.main(["--steps", "2", "--warmup", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"router_overhead_ratio={ratio:.3f}" and ratio > 0
