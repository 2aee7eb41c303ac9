"""A study on a three-node Ray cluster (head + two workers, all on this machine)."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.sleep_trainable import make_sleep_trainable
from routed_study.study.runner import run_study
from routed_study.study.spec import StudySpec


@pytest.fixture
def three_nodes(monkeypatch):
    # Node sockets live under RAY_TMPDIR; the test home's path is too long for AF_UNIX.
    short = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", short)
    # The head offers no CPU, so every trial must be placed on a worker node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cluster.connect()
    yield cluster, {w.node_id for w in workers}
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
def test_trials_spread_over_worker_nodes(tmp_path, three_nodes):
    cluster, worker_ids = three_nodes
    spec = StudySpec.from_dict({
        "name": "multinode",
        "data": {"tasks": ["rt_sentiment"]},
        "space": {"name": "core", "fixed": {"epochs": 2}},
        "scheduler": {"name": "none"},
        "trials": {"num": 4, "concurrency": 2},
        "resources": {"cpus": 1, "gpus": 0},
        "cluster": cluster.address,
        "storage": {"dir": str(tmp_path)},
        "report": False,
    })
    outcome = run_study(spec, trainable=make_sleep_trainable(1.0))
    assert (outcome.completed, outcome.errored) == (4, 0)
    used = {r.metrics["node_id"] for r in outcome.results}
    assert used == worker_ids  # both workers ran trials, the head none
    spans = sorted((r.metrics["started_at"], r.metrics["ended_at"]) for r in outcome.results)
    assert any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))
