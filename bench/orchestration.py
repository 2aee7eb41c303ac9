"""How much of a study's wall time the orchestration loses, measured with a sleep trainable.

    python bench/orchestration.py [--trials 16] [--epochs 3] [--epoch-seconds 3] [--concurrency 2]

Runs one study (Optuna TPE + ASHA off + MLflow + checkpoints every epoch, as a
real study) whose trainable only sleeps, then compares the wall time of
``Tuner.fit()`` with the ideal: the sum of the trials' own run times divided by
the concurrency. Last line: ``orchestration_efficiency=<ideal / measured>``.

The sleep trainable (:func:`make_sleep_trainable`) behaves like the real one at
the orchestration level (per-epoch report with a checkpoint, resume from the
checkpoint, router files written into the trial directory) and is what the
runner's tests use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


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
            if (fail_marker and epoch == 2 and config.get("__optuna_trial_number__") == fail_trial_number
                    and not os.path.exists(fail_marker)):
                Path(fail_marker).write_text("failed once\n")
                raise RuntimeError("planned failure after epoch 1")
            score = peak * (1.0 - 0.5 ** epoch) + config.get("__trial_index__", 0) * 0.01
            metrics = {"epoch": epoch, "step": epoch * 10, "train_loss": 1.0 / epoch, "tau": 1.0,
                       "score": score, "val/fake": score, "started_at": started_at, "ended_at": time.time(),
                       "run_seconds": time.time() - start, "node_id": ray.get_runtime_context().get_node_id()}
            if epoch == epochs:
                metrics.update({"test_score": score, "test/fake": score})
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "state.json").write_text(json.dumps({"epoch": epoch, "started_at": started_at}))
                tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        trial_dir = Path(tune.get_context().get_trial_dir())
        (trial_dir / "router_matrix.csv").write_text("task,source_0\nfake,0.5\n")

    return sleep_trainable


def bench_spec(storage: Path, trials: int, epochs: int, concurrency: int):
    """A real StudySpec for the benchmark: TPE over learning_rate, no early stopping, no report."""
    from study.spec import StudySpec

    spec_file = storage / "bench.yaml"
    spec_file.write_text(json.dumps({
        "name": "orchestration_bench",
        "data": {"tasks": ["rt_sentiment"]},
        "space": {"name": "core", "fixed": {"epochs": epochs}},
        "search": {"algorithm": "tpe", "seed": 0},
        "scheduler": {"name": "none"},
        "trials": {"num": trials, "concurrency": concurrency},
        "resources": {"cpus": 1, "gpus": 0},
        "storage": {"dir": str(storage)},
        "report": False,
    }))
    return StudySpec.load(spec_file)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    # 3 s epochs (9 s trials): still far shorter than a real trial (the demo's take ~40 s), long
    # enough that the one-off start of the first trial workers (~5 s) does not dominate.
    parser.add_argument("--epoch-seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}.items():
        os.environ.setdefault(key, value)

    import ray

    from study.runner import run_study

    with tempfile.TemporaryDirectory(prefix="orchestration-bench-") as tmp:
        spec = bench_spec(Path(tmp), args.trials, args.epochs, args.concurrency)
        ray.init(num_cpus=args.concurrency, include_dashboard=False)
        try:
            outcome = run_study(spec, trainable=make_sleep_trainable(args.epoch_seconds))
        finally:
            ray.shutdown()
    finished = [r for r in outcome.results if r.error is None]
    busy = sum(r.metrics["run_seconds"] for r in finished)
    ideal = busy / args.concurrency
    efficiency = ideal / outcome.fit_time_s
    # Start-up: fit() begins -> the first trial's code runs (Tune starts its first workers).
    startup = min(r.metrics["started_at"] for r in finished) - outcome.fit_started_at
    print(f"trials={outcome.num_trials} completed={outcome.completed} errored={outcome.errored} "
          f"sum_trial_seconds={busy:.1f} ideal_wall_s={ideal:.1f} fit_wall_s={outcome.fit_time_s:.1f} "
          f"study_wall_s={outcome.wall_time_s:.1f} startup_s={startup:.1f} "
          f"steady_state_efficiency={ideal / (outcome.fit_time_s - startup):.3f}")
    print(f"orchestration_efficiency={efficiency:.3f}")
    return efficiency


if __name__ == "__main__":
    main()
