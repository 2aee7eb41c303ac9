"""Concurrent writers: two studies, in two driver processes, write to one sqlite MLflow store at
the same time; both finish with every run recorded and no "database is locked" failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from routed_study.study.spec import StudySpec
from routed_study.study.tracking import TAG_PARENT, TAG_ROLE, client_for

REPO = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 4, 2

# One driver: the study of the spec file in argv[1], with the sleep trainable (no model).
DRIVER = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.sleep_trainable import make_sleep_trainable
from routed_study.study.runner import run_study
from routed_study.study.spec import StudySpec
outcome = run_study(StudySpec.load(sys.argv[1]), trainable=make_sleep_trainable(0.3))
assert (outcome.completed, outcome.errored) == ({TRIALS}, 0), outcome.summary()
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_studies_share_one_sqlite_store(tmp_path):
    shared = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    specs = []
    for name in ("left", "right"):
        path = tmp_path / f"{name}.json"  # JSON is YAML
        path.write_text(json.dumps({
            "name": name,
            "data": {"tasks": ["rt_sentiment"]},
            "space": {"name": "core", "fixed": {"epochs": EPOCHS}},
            "scheduler": {"name": "none"},
            "trials": {"num": TRIALS, "concurrency": 1},
            "resources": {"cpus": 1, "gpus": 0},
            "storage": {"dir": str(tmp_path / "studies"), "mlflow_tracking_uri": shared},
            "report": False,
        }))
        specs.append(StudySpec.load(path))
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / f"{s.name}.json")], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in specs]
    outputs = [d.communicate(timeout=540)[0] for d in drivers]
    for driver, output in zip(drivers, outputs):
        assert driver.returncode == 0, output[-3000:]
        assert "database is locked" not in output.lower(), output[-3000:]

    client = client_for(shared)
    for spec in specs:
        experiment = client.get_experiment_by_name(spec.name)
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
        children = [r for r in runs if TAG_PARENT in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == TRIALS and all(c.info.status == "FINISHED" for c in children)
        assert {c.data.tags[TAG_PARENT] for c in children} == {parents[0].info.run_id}
        for child in children:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "score"))
            assert steps == list(range(1, EPOCHS + 1))
