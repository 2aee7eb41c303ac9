"""routed_study.study.tracking: metric filtering, experiment / parent-run reuse, the MLflow UI server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from routed_study.study.tracking import (TAG_ROLE, TAG_STUDY, artifact_location_for, client_for, ensure_experiment,
                            ensure_parent_run, numeric_metrics)
from routed_study.trainables.routed_prompt.config import knob_values


def test_numeric_metrics_keep_measurements_only():
    result = {"score": 71.5, "epoch": 2, "val/rt_sentiment/accuracy": 0.7, "done": False,
              "training_iteration": 2, "trial_id": "abc", "node_ip": "1.2.3.4", "config": {"x": 1},
              "time_total_s": 3.5, "time_this_iter_s": 1.0, "timestamp": 123, "pid": 9, "date": "x"}
    assert numeric_metrics(result) == {"score": 71.5, "epoch": 2.0, "val/rt_sentiment/accuracy": 0.7,
                                       "time_total_s": 3.5, "time_this_iter_s": 1.0}


def test_knob_values_drop_bookkeeping_keys():
    assert knob_values({"learning_rate": 0.1, "__trial_index__": 1, "__optuna_trial_number__": 3}) == {
        "learning_rate": 0.1}


def test_artifact_location_is_absolute_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifact_location_for("studies/a") == (tmp_path / "studies/a/mlartifacts").as_uri()
    assert artifact_location_for("s3://bucket/studies/a/") == "s3://bucket/studies/a/mlartifacts"


def test_experiment_and_parent_run_are_reused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    location = artifact_location_for(tmp_path)
    experiment_id = ensure_experiment(uri, "demo", location)
    assert ensure_experiment(uri, "demo", location) == experiment_id
    parent = ensure_parent_run(uri, experiment_id, "demo", {"setup.tasks": ["a", "b"]})
    client = client_for(uri)
    client.set_terminated(parent, "FINISHED")
    assert ensure_parent_run(uri, experiment_id, "demo", {}) == parent  # found by tag, reopened
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.params == {"setup.tasks": "['a', 'b']"}
    assert run.data.tags[TAG_ROLE] == "parent" and run.data.tags[TAG_STUDY] == "demo"
    assert len(client.search_runs([experiment_id])) == 1
    assert client.get_experiment(experiment_id).artifact_location == location


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_serve_ui_binds_loopback_and_stops_on_interrupt(tmp_path):
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from study.tracking import serve_ui; serve_ui({uri!r}, port={port})"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip().startswith(f"MLflow UI: http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "MLflow server did not answer /health"
                time.sleep(1)
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        bound = [line for line in listening.splitlines() if f":{port} " in line]
        assert bound and all("127.0.0.1:" in line for line in bound)
    finally:
        proc.send_signal(signal.SIGINT)  # serve_ui stops its server on Ctrl-C
        proc.wait(timeout=60)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
