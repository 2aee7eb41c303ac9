"""The cluster path of the README, rehearsed for real on this machine.

- Ray: an autoscaling cluster built from the node types of the project's own cluster.yaml
  (a CPU head, a GPU worker type with min_workers 0) through Ray's fake multi-node
  provider: `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`. The workers
  declare one GPU each, so the study's `resources: {gpus: 1}` makes the autoscaler launch
  them and every trial runs there (on CPU: the GPUs are declared, not real).
- S3: moto's server on 127.0.0.1 with a bucket made here; `storage.dir: s3://...` reaches it
  through the standard AWS_ENDPOINT_URL, so the same spec runs on AWS with it unset.
- MLflow: a tracking server on 127.0.0.1 with a sqlite backend and artifacts proxied to the
  same bucket (`--artifacts-destination s3://...`); the driver holds no S3 credentials for it.
- The driver (`routed-study run`) is SIGKILLed mid-study; `routed-study resume s3://...`
  completes it with nothing lost or duplicated across Ray, Optuna and MLflow (the count of
  test_reliability_resume.py); the report is built from the MLflow server; the idle workers
  are then removed by the autoscaler.

Every process started here (Ray's, MLflow's, the drivers) carries a marker variable in its
environment and is stopped by PID at the end: never `ray stop`, which ends every Ray on the
machine. The figures are printed and written to ``<tmp>/cluster_rehearsal.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

from routed_study.study.runner import CHECKPOINTS_KEPT
from tiny_backbones import save_tiny_bert, write_tiny_glue

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONSOLE = BIN / "routed-study"
TRIALS = 10          # the report's importance methods need 10 trials with a score
WORKERS = 2          # this machine's cap on the GPU worker type (cluster.yaml allows 8)
IDLE_TIMEOUT_MIN = 0.25
MARKER = "ROUTED_STUDY_REHEARSAL"
NODE_ID_VARIABLE = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # how the fake provider names each node's processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked(marker: str) -> list[psutil.Process]:
    """Every process of this rehearsal: those whose environment carries ``MARKER=marker``."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(MARKER) == marker:
                found.append(process)
        except (psutil.Error, OSError):
            continue  # another user's, or exited meanwhile
    return found


def stop_marked(marker: str, grace_s: float = 15.0) -> None:
    """SIGTERM every process of the rehearsal, SIGKILL what is left after ``grace_s``."""
    processes = [p for p in marked(marker) if p.pid != os.getpid()]
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


class NodeWatch(threading.Thread):
    """Polls the rehearsal's processes: which fake worker nodes are up (their raylet runs) and
    which node each Ray worker process belongs to (its environment names the node)."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker = marker
        self.seen: set[str] = set()           # worker nodes ever up
        self.up: set[str] = set()             # worker nodes up at the last poll
        self.most_up = 0                      # most worker nodes up at once
        self.node_of_pid: dict[int, str] = {}
        self._stopping = threading.Event()

    def poll(self) -> None:
        up = set()
        for process in psutil.process_iter(["pid", "name"]):
            name = process.info["name"] or ""
            if not (name == "raylet" or name.startswith("ray::")):
                continue
            try:
                env = process.environ()
            except (psutil.Error, OSError):
                continue
            node = env.get(NODE_ID_VARIABLE)
            if env.get(MARKER) != self.marker or node in (None, FAKE_HEAD_NODE_ID):
                continue  # another cluster's, or the head's
            if name == "raylet":
                up.add(node)
            else:
                self.node_of_pid[process.pid] = node
        self.up = up
        self.seen |= up
        self.most_up = max(self.most_up, len(up))

    def run(self) -> None:
        while not self._stopping.is_set():
            self.poll()
            self._stopping.wait(0.5)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=10)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(interval_s)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def fake_cluster_config(gcs_port: int) -> dict:
    """An autoscaler config for Ray's fake multi-node provider with cluster.yaml's node types.

    The node types keep cluster.yaml's resources and min_workers; what differs is what this
    one machine needs: the provider (the fake one names its head type ``ray.head.default``),
    the worker cap (WORKERS), a short idle timeout, and a small object store per node.
    """
    project = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = project["available_node_types"]
    head_type = project["head_node_type"]
    small_store = {"object_store_memory": 100 * 2**20}
    node_types = {"ray.head.default": {"resources": dict(types[head_type]["resources"]), "node_config": {},
                                       "max_workers": 0}}
    for name, node_type in types.items():
        if name != head_type:
            node_types[name] = {"resources": {**node_type["resources"], **small_store}, "node_config": {},
                                "min_workers": node_type["min_workers"],
                                "max_workers": min(node_type["max_workers"], WORKERS)}
    return {
        "cluster_name": "rehearsal", "max_workers": WORKERS, "upscaling_speed": project["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": node_types, "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "nobody"}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def progress(log: Path, s3, bucket: str, prefix: str) -> tuple[set[str], set[str]]:
    """(trials the driver reported finished, started trials with a checkpoint on S3, not finished)."""
    text = log.read_text(errors="replace")
    finished = set(re.findall(r"finished (\w+)", text))
    started = set(re.findall(r"started (\w+)", text))
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    checkpointed = {t for t in started - finished if any(f"_{t}/checkpoint_000000/" in k for k in keys)}
    return finished, checkpointed


def all_keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cluster_path_autoscaled_s3_mlflow_server_kill_and_resume(tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    started_at = time.monotonic()
    marker = uuid.uuid4().hex
    short = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # Ray's sockets: the AF_UNIX path limit
    bucket, s3_port, mlflow_port, gcs_port = "rehearsal", free_port(), free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in aws.items():
        monkeypatch.setenv(key, value)  # this process reads S3 too (Ray's results, the counts)
    # Ray's token authentication, on by default, set the same way for the cluster, the drivers and tools.
    env = dict(os.environ, **aws, **{MARKER: marker}, RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=uuid.uuid4().hex, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               RAY_TMPDIR=str(short))
    env.pop("RAY_ADDRESS", None)
    figures: dict = {}

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    watch = NodeWatch(marker)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)

        # --- MLflow tracking server: SQL backend, artifacts proxied to the bucket
        with open(tmp_path / "mlflow.log", "w") as mlflow_log:  # the server keeps its own descriptor
            subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 "--artifacts-destination", f"s3://{bucket}/mlartifacts", "--host", "127.0.0.1",
                 "--port", str(mlflow_port), "--workers", "1"],
                env=dict(env, MLFLOW_S3_ENDPOINT_URL=endpoint), stdout=mlflow_log, stderr=subprocess.STDOUT,
                start_new_session=True)
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"

        # --- the autoscaling Ray cluster: head from cluster.yaml's head type, workers on demand
        config_file = tmp_path / "autoscaler.yaml"
        config = fake_cluster_config(gcs_port)
        config_file.write_text(yaml.safe_dump(config))
        head_cpus = int(config["available_node_types"]["ray.head.default"]["resources"].get("CPU", 0))
        head = subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", f"--autoscaling-config={config_file}",
             f"--num-cpus={head_cpus}", "--num-gpus=0", "--include-dashboard=false",
             f"--object-store-memory={100 * 2**20}", f"--temp-dir={short}", "--disable-usage-stats"],
            env=dict(env, RAY_FAKE_CLUSTER="1"), capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-3000:] + head.stderr[-3000:]
        watch.start()
        wait_for(lambda: http_ok(f"{tracking_uri}/health"), 120, "the MLflow server's /health")

        # --- the study: a tiny model, GPU trials, everything stored remotely
        data_dir = write_tiny_glue(tmp_path / "data", {"train": 96, "validation": 16, "test": 16})
        backbone = save_tiny_bert(tmp_path / "tiny-bert")
        spec = {
            "name": "rehearsal",
            "backbone": {"name": str(backbone), "family": "encoder", "max_length": 16},
            "data": {"dir": str(data_dir), "tasks": ["sst2"], "train_per_task": 96, "eval_per_task": 16},
            "space": {"name": "core", "fixed": {"epochs": 3, "num_prompt_tokens": 4, "batch_size": 4}},
            "search": {"algorithm": "random", "seed": 0},
            "scheduler": {"name": "none"},
            "trials": {"num": TRIALS, "concurrency": WORKERS, "max_failures": 0},
            "resources": {"cpus": 1, "gpus": 1},
            "cluster": f"127.0.0.1:{gcs_port}",
            "storage": {"dir": f"s3://{bucket}/studies", "mlflow_tracking_uri": tracking_uri,
                        "optuna_storage": f"sqlite:///{tmp_path / 'optuna.db'}"},
            "report": True,
        }
        spec_path = tmp_path / "rehearsal.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        study_uri = f"s3://{bucket}/studies/rehearsal"

        validated = subprocess.run([str(CONSOLE), "validate", str(spec_path)], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=120)
        assert validated.returncode == 0, validated.stderr
        assert f"Ray results and checkpoints: {study_uri}/<trial>/ (S3 endpoint {endpoint}" in validated.stdout

        # --- run, then SIGKILL the driver once a trial finished and another is part-way
        log_path = tmp_path / "run.log"
        with open(log_path, "w") as log:
            driver = subprocess.Popen([str(CONSOLE), "run", str(spec_path)], env=env, cwd=tmp_path, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.monotonic() + 420
                while True:
                    done, part_way = progress(log_path, s3, bucket, "studies/rehearsal/")
                    if done and part_way:
                        break
                    assert driver.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, "no trial finished in time:\n" + log_path.read_text()[-3000:]
                    time.sleep(0.1)
            finally:
                driver.send_signal(signal.SIGKILL)
                driver.wait(timeout=30)
        figures["finished_before_kill"] = len(done)
        figures["part_way_at_kill"] = len(part_way)
        nodes_at_kill, launched_before_kill = set(watch.up), set(watch.seen)

        from routed_study.study.tracking import TAG_OPTUNA_TRIAL, TAG_PARENT, TAG_RAY_TRIAL_ID, TAG_ROLE, client_for

        client = client_for(tracking_uri)
        experiment = client.get_experiment_by_name("rehearsal")
        parents_before = [r.info.run_id for r in client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'parent'")]

        resume_started = time.monotonic()
        resumed = subprocess.run([str(CONSOLE), "resume", study_uri], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        figures["resume_s"] = round(time.monotonic() - resume_started, 1)
        assert f"MLflow runs: {tracking_uri}/#/experiments/{experiment.experiment_id}/runs" in resumed.stdout
        summary = resumed.stdout.strip().splitlines()[-1]
        print(summary)

        # --- the three-way count: Ray (its experiment state on S3), Optuna, MLflow (the server)
        from ray.tune import ExperimentAnalysis

        trials = ExperimentAnalysis(study_uri).trials
        completed = [t for t in trials if t.status == "TERMINATED"]
        ray_ids = Counter(t.trial_id for t in trials)
        ray_numbers = Counter(t.config["__optuna_trial_number__"] for t in trials)
        import optuna

        study = optuna.load_study(study_name="rehearsal", storage=spec["storage"]["optuna_storage"])
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
        children = [r for r in runs if TAG_PARENT in r.data.tags]
        run_ids = Counter(r.data.tags[TAG_RAY_TRIAL_ID] for r in children)
        run_numbers = Counter(int(r.data.tags[TAG_OPTUNA_TRIAL]) for r in children)
        duplicated = (sum(n - 1 for n in ray_ids.values()) + sum(n - 1 for n in ray_numbers.values())
                      + sum(n - 1 for n in run_ids.values()) + max(0, len(study.trials) - TRIALS)
                      + max(0, len(trials) - TRIALS))
        figures["counts"] = {"requested": TRIALS, "completed": len(completed), "lost": TRIALS - len(completed),
                             "duplicated": duplicated, "ray_trials": len(trials),
                             "optuna_trials": len(study.trials), "mlflow_child_runs": len(children)}
        assert figures["counts"]["lost"] == 0 and duplicated == 0, figures
        assert len(trials) == len(study.trials) == len(children) == TRIALS, figures
        assert set(run_ids) == set(ray_ids)
        assert set(ray_numbers) == set(run_numbers) == {t.number for t in study.trials} == set(range(TRIALS))
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        assert all(r.info.status == "FINISHED" for r in children)
        assert [p.info.run_id for p in parents] == parents_before and parents[0].info.status == "FINISHED"

        # --- where the trials ran: on the autoscaled GPU workers, never the head, on CPU
        per_node = Counter(watch.node_of_pid.get(t.last_result["pid"], "unknown") for t in completed)
        figures["trials_per_node"] = dict(per_node)
        assert "unknown" not in per_node and set(per_node) <= watch.seen, (per_node, watch.seen)
        import torch

        if not torch.cuda.is_available():  # the GPUs were declared, not real: the trials fell back to CPU
            assert all(t.last_result.get("gpu_peak_mib") is None for t in completed)

        # --- S3: Ray's checkpoints and trial files, MLflow's artifacts (proxied by the server)
        keys = all_keys(s3, bucket)
        checkpoints = {m.group(0) for m in map(re.compile(r"^.*/checkpoint_\d+/").match, keys) if m}
        # A trial the killed driver started after its last snapshot leaves a folder Ray no longer knows.
        kept = {c for c in checkpoints if any(f"_{trial_id}/checkpoint_" in c for trial_id in ray_ids)}
        mlflow_artifacts = [k for k in keys if k.startswith("mlartifacts/")]
        figures["s3_objects"] = {
            "total": len(keys), "ray_study_files": sum(k.startswith("studies/") for k in keys),
            "checkpoints_kept": len(kept),  # CHECKPOINTS_KEPT per trial, the older ones deleted
            "checkpoints_of_unknown_trials": len(checkpoints - kept),
            "checkpoint_files": sum(bool(re.search(r"/checkpoint_\d+/", k)) for k in keys),
            "mlflow_artifacts": len(mlflow_artifacts),
            "router_matrices_in_mlflow": sum(k.endswith("/router_matrix.csv") for k in mlflow_artifacts)}
        assert f"studies/rehearsal/{'study.yaml'}" in keys and any(k.endswith("tuner.pkl") for k in keys)
        assert figures["s3_objects"]["router_matrices_in_mlflow"] == TRIALS, figures["s3_objects"]
        assert len(kept) == TRIALS * CHECKPOINTS_KEPT, sorted(kept)
        artifacts = client.list_artifacts(children[0].info.run_id)
        assert {"router_matrix.csv", "router_heatmap.png"} <= {a.path for a in artifacts}

        # --- the report, built from the MLflow server's runs
        report = tmp_path / "reports" / "rehearsal" / "report.html"
        assert f"report: {report}" in resumed.stdout, resumed.stdout[-2000:]
        trials_csv = (report.parent / "trials.csv").read_text().splitlines()
        assert len(trials_csv) == TRIALS + 1  # header + one row per MLflow child run

        # --- the idle workers go away
        launched = set(watch.seen)
        scale_down_started = time.monotonic()
        wait_for(lambda: not watch.up, 180, "the autoscaler to remove the idle workers")
        figures["scale_down_s"] = round(time.monotonic() - scale_down_started, 1)
        # Workers left idle between the kill and the resume's first trials may be removed and
        # launched again: counted as such.
        figures["nodes"] = {"launched": len(launched), "launched_before_kill": len(launched_before_kill),
                            "launched_after_kill": len(launched - launched_before_kill),
                            "removed": len(launched - watch.up), "most_up_at_once": watch.most_up,
                            "up_when_killed": len(nodes_at_kill), "up_at_end": len(watch.up)}
        assert WORKERS <= len(launched) and watch.most_up == WORKERS  # concurrency 2: both workers used
        assert launched - watch.up == launched and nodes_at_kill

        # --- `analyze` and `ui` take the study's s3:// URI too (its study.yaml names the tracking server)
        analyzed = subprocess.run([str(CONSOLE), "analyze", study_uri, "--out", str(tmp_path / "analysis")],
                                  env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert analyzed.returncode == 0, analyzed.stderr[-3000:]
        assert len((tmp_path / "analysis" / "trials.csv").read_text().splitlines()) == TRIALS + 1
        shown = subprocess.run([str(CONSOLE), "ui", study_uri], env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert shown.stdout.startswith(f"MLflow UI: {tracking_uri}/#/experiments/{experiment.experiment_id}/runs ")
    finally:
        for cleanup in (watch.stop, lambda: stop_marked(marker), moto.stop):
            try:
                cleanup()
            except Exception as exc:  # the next step still runs; the test's own failure stays the one shown
                print(f"cleanup step failed: {exc!r}")
        shutil.rmtree(short, ignore_errors=True)
        figures["wall_s"] = round(time.monotonic() - started_at, 1)
        print("cluster rehearsal:", json.dumps(figures))
        (tmp_path / "cluster_rehearsal.json").write_text(json.dumps(figures, indent=2))
