"""Node loss: on a local ray.cluster_utils.Cluster, the worker node running a trial is removed
mid-trial; the trial is retried on the other worker from its last checkpoint and the study
completes (Ray, Optuna and MLflow all record one finished trial)."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

from tests.sleep_trainable import make_sleep_trainable
from routed_study.study.runner import run_study
from routed_study.study.spec import StudySpec
from routed_study.study.tracking import TAG_PARENT, client_for

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
EPOCHS = 3
EPOCH_SECONDS = 2.0


def node_logging_trainable(log_dir: str):
    """The sleep trainable, leaving one file per attempt named after the node that runs it."""
    inner = make_sleep_trainable(EPOCH_SECONDS)

    def trainable(config: dict, setup) -> None:
        node = ray.get_runtime_context().get_node_id()
        Path(log_dir, f"{time.time():.6f}-{node}").touch()
        inner(config, setup)
    return trainable


def attempts(log_dir: Path) -> list[str]:
    """Node ids of the trial's attempts, in order."""
    return [p.name.split("-", 1)[1] for p in sorted(log_dir.iterdir())]


@pytest.fixture
def two_workers(monkeypatch):
    short = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # AF_UNIX paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", short)
    # The head offers no CPU: trials run on the workers only, so either can be lost.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = {node.node_id: node for node in (cluster.add_node(num_cpus=1) for _ in range(2))}
    cluster.wait_for_nodes()
    cluster.connect()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trial_survives_losing_its_node(tmp_path, two_workers):
    cluster, workers = two_workers
    spec = StudySpec.from_dict({
        "name": "node-loss",
        "data": {"tasks": ["rt_sentiment"]},
        "space": {"name": "core", "fixed": {"epochs": EPOCHS}},
        "scheduler": {"name": "none"},
        "trials": {"num": 1, "concurrency": 1, "max_failures": 2},
        "resources": {"cpus": 1, "gpus": 0},
        "cluster": cluster.address,
        "storage": {"dir": str(tmp_path / "studies")},
        "report": False,
    })
    log_dir = tmp_path / "attempts"
    log_dir.mkdir()
    removed: list[str] = []

    def remove_busy_node_after_first_checkpoint() -> None:
        # The second checkpoint on disk means the driver has registered the first: a function
        # trainable's next epoch starts only after Tune has processed the previous result. (The
        # first checkpoint's folder alone can exist before the driver knows of it, and a loaded
        # machine then restarts the trial from scratch.)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list(Path(spec.study_dir).glob("*/checkpoint_000001")) and attempts(log_dir):
                node = attempts(log_dir)[0]
                cluster.remove_node(workers[node], allow_graceful=False)
                removed.append(node)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=remove_busy_node_after_first_checkpoint, daemon=True)
    killer.start()
    outcome = run_study(spec, trainable=node_logging_trainable(str(log_dir)))
    killer.join(timeout=10)

    assert removed, "the node was never removed"
    assert (outcome.num_trials, outcome.completed, outcome.errored) == (1, 1, 0)
    nodes = attempts(log_dir)
    assert len(nodes) == 2 and nodes[0] == removed[0] and nodes[1] != removed[0] and nodes[1] in workers
    result = outcome.results[0]
    assert result.metrics["node_id"] == nodes[1]
    # Retried from a checkpoint, not from scratch: the retry ran fewer epochs than the trial has.
    assert result.metrics["epoch"] == EPOCHS and result.metrics["iterations_since_restore"] < EPOCHS
    progress = pd.read_csv(Path(result.path) / "progress.csv")
    assert sorted(set(progress["epoch"])) == list(range(1, EPOCHS + 1))

    with sqlite3.connect(spec.optuna_storage.removeprefix("sqlite:///")) as db:
        assert [row[0] for row in db.execute("select state from trials")] == ["COMPLETE"]
    client = client_for(spec.mlflow_tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    children = [r for r in runs if TAG_PARENT in r.data.tags]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    history = client.get_metric_history(children[0].info.run_id, "score")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
