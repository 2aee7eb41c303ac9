"""How much of a study's wall time the orchestration loses, measured with a sleep trainable.

    python bench/orchestration.py [--trials 16] [--epochs 3] [--epoch-seconds 3] [--concurrency 2]

Runs one study (Optuna TPE + ASHA off + MLflow + checkpoints every epoch, as a
real study) whose trainable only sleeps, then compares the wall time of
``Tuner.fit()`` with the ideal: the sum of the trials' own run times divided by
the concurrency. Last line: ``orchestration_efficiency=<ideal / measured>``.

The sleep trainable (``tests/sleep_trainable.py``, shared with the runner's tests)
behaves like the real one at the orchestration level (per-epoch report with a
checkpoint, resume from the checkpoint, router files written into the trial directory).
Run from the repository root (``tests`` is imported from there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# `python bench/orchestration.py` puts bench/ on the path, not the repository root whose
# tests/ holds the sleeping trainable shared with the runner's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.sleep_trainable import make_sleep_trainable  # noqa: E402


def bench_spec(storage: Path, trials: int, epochs: int, concurrency: int):
    """A real StudySpec for the benchmark: TPE over learning_rate, no early stopping, no report."""
    from routed_study.study.spec import StudySpec

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

    from routed_study.study.runner import run_study

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
