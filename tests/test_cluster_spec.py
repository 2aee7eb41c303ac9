"""`routed-study validate` on the shipped cluster spec and the README's variants: the plan (where
Ray's results and checkpoints, the Optuna study, MLflow's runs and artifacts and the report go),
exit 0; a malformed bucket or endpoint: one line naming the key, exit 2."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from routed_study.study.cli import main

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SPEC = REPO / "study" / "specs" / "cluster_study.yaml"


@pytest.fixture
def cluster_raw() -> dict:
    return yaml.safe_load(CLUSTER_SPEC.read_text())


def validate(raw: dict, tmp_path: Path, capsys) -> tuple[int, str, str]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_shipped_cluster_spec_prints_its_plan(cluster_raw, tmp_path, capsys, monkeypatch):
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = validate(cluster_raw, tmp_path, capsys)
    assert code == 0, err
    assert "resources per trial: 4 CPU, 1 GPU on the Ray cluster at auto" in out
    assert "Ray results and checkpoints: s3://your-bucket/studies/cluster_study/<trial>/ (AWS S3)" in out
    assert "Optuna study 'cluster_study': sqlite:////home/ubuntu/studies/optuna.db" in out
    assert "MLflow runs (experiment 'cluster_study'): http://127.0.0.1:5000" in out
    assert "MLflow artifacts: the tracking server artifact store (proxied)" in out
    assert f"report: {tmp_path / 'reports' / 'cluster_study'} (built from the MLflow runs)" in out


def test_cluster_yaml_and_readme_name_the_shipped_spec():
    assert "study/specs/cluster_study.yaml" in (REPO / "cluster.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    assert "study/specs/cluster_study.yaml" in readme and "my_cluster_study" not in readme


@pytest.mark.parametrize("change, expected", [
    ({"resources": {"cpus": 2, "gpus": 0.25}}, "2 CPU, 0.25 GPU on the Ray cluster"),
    ({"storage.optuna_storage": "postgresql://optuna@db.internal:5432/studies"},
     "Optuna study 'cluster_study': postgresql://optuna@db.internal:5432/studies"),
    ({"storage.mlflow_tracking_uri": "https://mlflow.internal"}, "MLflow runs (experiment 'cluster_study'): "
                                                                 "https://mlflow.internal"),
    ({"cluster": "ray://head.internal:10001"}, "on the Ray cluster at ray://head.internal:10001"),
    ({"env": ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")},
     "s3://your-bucket/studies/cluster_study/<trial>/ (S3 endpoint http://127.0.0.1:9000, from $AWS_ENDPOINT_URL)"),
    ({"storage.mlflow_tracking_uri": "sqlite:////home/ubuntu/mlflow/mlflow.db"},
     "MLflow artifacts: s3://your-bucket/studies/cluster_study/mlartifacts"),
])
def test_readme_variants_validate(cluster_raw, change, expected, tmp_path, capsys, monkeypatch):
    raw = apply(cluster_raw, change, monkeypatch)
    code, out, err = validate(raw, tmp_path, capsys)
    assert code == 0, err
    assert expected in out


@pytest.mark.parametrize("change, message", [
    ({"storage.dir": "s3://Your_Bucket/studies"}, "key 'storage.dir': 's3://Your_Bucket/studies' does not name "
                                                  "a valid bucket"),
    ({"storage.dir": "s3:///studies"}, "key 'storage.dir': 's3:///studies' does not name a valid bucket"),
    ({"storage.mlflow_tracking_uri": "http://:5000"}, "key 'storage.mlflow_tracking_uri': 'http://:5000' is not "
                                                      "an HTTP endpoint"),
    ({"storage.mlflow_tracking_uri": "http://127.0.0.1:50o0"}, "is not an HTTP endpoint (expected "
                                                               "http://HOST[:PORT]"),
    ({"env": ("AWS_ENDPOINT_URL", "127.0.0.1:9000")}, "$AWS_ENDPOINT_URL: '127.0.0.1:9000' is not an S3 "
                                                      "endpoint URL"),
    ({"env": ("AWS_ENDPOINT_URL_S3", "http://minio:port")}, "$AWS_ENDPOINT_URL_S3: 'http://minio:port' is not"),
])
def test_malformed_bucket_or_endpoint_is_one_line(cluster_raw, change, message, tmp_path, capsys, monkeypatch):
    raw = apply(cluster_raw, change, monkeypatch)
    code, out, err = validate(raw, tmp_path, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def apply(raw: dict, change: dict, monkeypatch) -> dict:
    raw = copy.deepcopy(raw)
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    for key, value in change.items():
        if key == "env":
            monkeypatch.setenv(*value)
        elif "." in key:
            section, leaf = key.split(".")
            raw[section][leaf] = value
        else:
            raw[key] = value
    return raw
