"""`routed-study ui`: prints and serves the study's runs page (the parent run with its trials, not
MLflow's GenAI start page), SIGTERM stops the server's whole process group, a port in use is a
one-line error naming the port and --port. Real processes; the page is rendered in headless
Chromium when it is installed (`make test` installs it)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONSOLE = Path(sys.executable).parent / "routed-study"
TRIALS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def tracked_study(tmp_path):
    """A study directory whose MLflow store holds the parent run and TRIALS nested trial runs."""
    from routed_study.study.spec import StudySpec
    from routed_study.study.tracking import TAG_PARENT, TAG_RAY_TRIAL_ID, client_for, ensure_experiment, ensure_parent_run

    raw = yaml.safe_load((REPO / "study" / "specs" / "smoke.yaml").read_text())
    raw["storage"] = {"dir": str(tmp_path / "studies")}
    spec = StudySpec.from_dict(raw)
    spec.dump(spec.study_dir / "study.yaml")
    experiment_id = ensure_experiment(spec.mlflow_tracking_uri, spec.name, spec.mlflow_artifact_location)
    parent = ensure_parent_run(spec.mlflow_tracking_uri, experiment_id, spec.name, {"num_trials": TRIALS})
    client = client_for(spec.mlflow_tracking_uri)
    for i in range(TRIALS):
        run = client.create_run(experiment_id, run_name=f"trial_{i}",
                                tags={TAG_PARENT: parent, TAG_RAY_TRIAL_ID: f"t{i}"})
        client.log_metric(run.info.run_id, "score", 50.0 + i)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent)
    return spec.study_dir, experiment_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ui_serves_the_runs_page_and_sigterm_stops_its_process_group(tracked_study, tmp_path):
    study_dir, experiment_id = tracked_study
    port = free_port()
    ui = subprocess.Popen([str(CONSOLE), "ui", str(study_dir), "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = ui.stdout.readline()
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
        assert first.startswith(f"MLflow UI: {url} "), first
        deadline = time.monotonic() + 120
        while not healthy(port):
            assert ui.poll() is None, ui.stdout.read()
            assert time.monotonic() < deadline, "the MLflow UI did not answer /health in 120 s"
            time.sleep(0.5)

        # A second `ui` on the same port: one line naming the port and --port, exit 2.
        busy = subprocess.run([str(CONSOLE), "ui", str(study_dir), "--port", str(port)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and busy.stdout == ""
        assert busy.stderr.count("\n") == 1, busy.stderr
        assert f"port {port} on 127.0.0.1 is in use" in busy.stderr and "--port" in busy.stderr

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:  # the page a user opens: the runs table with the parent and its nested trials
            rendered = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                 "--window-size=1400,800", "--dump-dom", url],
                capture_output=True, text=True, timeout=120).stdout
            assert "Training runs" in rendered
            assert re.search(rf"<strong>{TRIALS + 1}</strong> matching runs", rendered)  # parent + trials
            assert ">smoke<" in rendered  # the parent run, its trials nested under it

        server = [p for p in psutil.Process(ui.pid).children(recursive=True)]
        assert server, "no MLflow server process under `routed-study ui`"
        ui.send_signal(signal.SIGTERM)  # as `kill PID`, a closing terminal or a process manager does
        assert ui.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, f"left running after SIGTERM: {alive}"
        assert not healthy(port)
    finally:
        if ui.poll() is None:
            ui.kill()
        for process in psutil.process_iter(["pid"]):  # whatever this test's server left behind
            try:
                if process.pid != ui.pid and psutil.Process(process.pid).ppid() == 1 and \
                        f"--port {port}" in " ".join(process.cmdline()):
                    process.kill()
            except psutil.Error:
                pass


def test_ui_of_a_study_whose_tracking_server_is_down_is_one_line(tmp_path, capsys, monkeypatch):
    from routed_study.study.cli import main
    from routed_study.study.spec import StudySpec

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of backing off
    raw = yaml.safe_load((REPO / "study" / "specs" / "smoke.yaml").read_text())
    raw["storage"] = {"dir": str(tmp_path / "studies"), "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"}
    spec = StudySpec.from_dict(raw)
    spec.dump(spec.study_dir / "study.yaml")
    assert main(["ui", str(spec.study_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read experiment 'smoke' from {raw['storage']['mlflow_tracking_uri']}" in err
