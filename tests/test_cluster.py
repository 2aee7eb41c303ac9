"""cluster.yaml: valid for Ray's own schema, installs torch pinned and first, binds nothing publicly."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_valid_for_ray_schema(cluster):
    validate_config(cluster)
    # `ray up` fills defaults first, then validates again; both must pass.
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_schema_check_is_strict(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0  # typo of min_workers
    with pytest.raises(Exception, match="min_worker"):
        validate_config(broken)


def test_gpu_workers_autoscale(cluster):
    worker = cluster["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 < worker["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0}


def test_torch_pinned_and_installed_before_the_project(cluster):
    commands = cluster["setup_commands"]
    torch = [i for i, c in enumerate(commands) if "torch" in c]
    project = [i for i, c in enumerate(commands) if re.search(r"pip install -e ~/routed-study", c)]
    assert torch and project and torch[0] < project[0]
    assert "torch==2.13.0" in commands[torch[0]]
    pyproject = (CLUSTER_YAML.parent / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject  # the cluster pin matches the project's


def test_nothing_bound_to_a_public_address(cluster):
    text = yaml.safe_dump(cluster)
    assert "0.0.0.0" not in text
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    mlflow = next(c for c in cluster["head_start_ray_commands"] if "mlflow server" in c)
    assert "--host 127.0.0.1" in mlflow and "--artifacts-destination s3://" in mlflow
    assert "--backend-store-uri sqlite:///" in mlflow
