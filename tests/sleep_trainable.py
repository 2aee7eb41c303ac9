"""The sleeping trainable that the runner's tests and ``bench/orchestration.py`` share.

It behaves like the real trainable at the orchestration level (a report with a
checkpoint every epoch, resume from the checkpoint, the router file written into the
trial directory) and costs no model: only the orchestration is measured or tested.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from routed_study.trainables.results import OPTUNA_TRIAL_KEY, REPEAT_INDEX_KEY, ROUTER_CSV


def make_sleep_trainable(epoch_seconds: float = 1.0, fail_marker: str | None = None,
                         fail_trial_number: int = 0) -> Callable[[dict, Any], None]:
    """A Tune function trainable that sleeps ``epoch_seconds`` per epoch and reports fake metrics.

    ``score`` rises with the epoch and peaks at ``learning_rate`` = 1e-2, so a search
    has something to find. Metrics also carry ``started_at`` / ``ended_at`` (wall
    clock), ``run_seconds`` (time spent inside the trainable, this session) and the
    Ray ``node_id``. With ``fail_marker``, the trial whose Optuna number is
    ``fail_trial_number`` raises after its first epoch once (the marker file records
    that it did), which lets tests interrupt and resume a study.
    """

    # A closure pickles by value, so Ray workers need not import this file.
    def sleep_trainable(config: dict, setup: Any) -> None:
        import ray
        from ray import tune
        from ray.tune import Checkpoint

        start = time.time()
        epochs = int(config.get("epochs", 3))
        first_epoch, started_at = 1, start
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = json.loads(Path(folder, "state.json").read_text())
            first_epoch, started_at = state["epoch"] + 1, state["started_at"]
        peak = 80.0 - 10.0 * abs(math.log10(float(config.get("learning_rate", 1e-2))) + 2.0)
        for epoch in range(first_epoch, epochs + 1):
            time.sleep(epoch_seconds)
            if (fail_marker and epoch == 2 and config.get(OPTUNA_TRIAL_KEY) == fail_trial_number
                    and not os.path.exists(fail_marker)):
                Path(fail_marker).write_text("failed once\n")
                raise RuntimeError("planned failure after epoch 1")
            score = peak * (1.0 - 0.5 ** epoch) + config.get(REPEAT_INDEX_KEY, 0) * 0.01
            metrics = {"epoch": epoch, "step": epoch * 10, "train_loss": 1.0 / epoch, "tau": 1.0,
                       "score": score, "val/fake": score, "started_at": started_at, "ended_at": time.time(),
                       "run_seconds": time.time() - start, "node_id": ray.get_runtime_context().get_node_id()}
            if epoch == epochs:
                metrics.update({"test_score": score, "test/fake": score})
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "state.json").write_text(json.dumps({"epoch": epoch, "started_at": started_at}))
                tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        trial_dir = Path(tune.get_context().get_trial_dir())
        (trial_dir / ROUTER_CSV).write_text("task,source_0\nfake,0.5\n")

    return sleep_trainable
