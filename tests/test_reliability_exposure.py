"""Exposure: every HTTP server the tool starts listens on 127.0.0.1 unless the user asks otherwise.

The MLflow UI (`routed-study ui`) is started for real and its listening sockets read
with psutil; the local Ray the runner starts has no dashboard; the cluster launcher
config binds the dashboard and the MLflow server to loopback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(root: psutil.Process) -> dict[int, set[str]]:
    """port -> addresses that ``root`` or any of its descendants listens on."""
    found: dict[int, set[str]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue  # exited meanwhile
        for c in connections:
            if c.status == psutil.CONN_LISTEN:
                found.setdefault(c.laddr.port, set()).add(c.laddr.ip)
    return found


@pytest.fixture
def study_dir(tmp_path):
    from routed_study.study.spec import StudySpec

    raw = yaml.safe_load((REPO / "study" / "specs" / "smoke.yaml").read_text())
    raw["storage"] = {"dir": str(tmp_path / "studies")}
    spec = StudySpec.from_dict(raw)
    spec.dump(spec.study_dir / "study.yaml")
    return spec.study_dir


def test_mlflow_ui_listens_on_loopback_only(study_dir, tmp_path):
    port = free_port()
    console = Path(sys.executable).parent / "routed-study"
    ui = subprocess.Popen([str(console), "ui", str(study_dir), "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        root = psutil.Process(ui.pid)
        deadline = time.monotonic() + 90
        while port not in listening(root):
            assert ui.poll() is None, ui.stdout.read()
            assert time.monotonic() < deadline, "the MLflow UI did not start listening in 90 s"
            time.sleep(0.5)
        sockets = listening(root)
        assert sockets[port] <= LOOPBACK, sockets
        # Nothing else the UI started (gunicorn/uvicorn workers) listens publicly either.
        assert all(addresses <= LOOPBACK for addresses in sockets.values()), sockets
    finally:
        ui.send_signal(signal.SIGINT)  # the CLI's Ctrl-C path stops the server it started
        try:
            output = ui.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            ui.kill()
            output = ui.communicate()[0]
    assert f"MLflow UI: http://127.0.0.1:{port}" in output
    assert "warning" not in output


@pytest.mark.parametrize("host, warned", [(None, False), ("127.0.0.1", False), ("0.0.0.0", True)])
def test_ui_binds_where_asked_and_warns_when_public(host, warned, monkeypatch, capsys):
    import routed_study.study.tracking
    from routed_study import study

    commands = []

    class FakeServer:
        def __init__(self, command, env, **options):
            commands.append(command)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(study.tracking.subprocess, "Popen", FakeServer)
    monkeypatch.setattr(study.tracking, "stop_process_group", lambda process: None)  # no real process group
    kwargs = {} if host is None else {"host": host}
    study.tracking.serve_ui("sqlite:////tmp/x.db", port=5123, **kwargs)
    command = commands[0]
    assert command[command.index("--host") + 1] == (host or "127.0.0.1")
    assert ("no authentication" in capsys.readouterr().err) is warned


def test_local_ray_of_the_runner_has_no_dashboard():
    import ray

    from routed_study.study.runner import _ensure_ray

    if ray.is_initialized():
        pytest.skip("another test module left Ray running")
    assert _ensure_ray(None) is True
    try:
        node = ray._private.worker.global_worker.node
        assert not node.address_info.get("webui_url")
        sockets = listening(psutil.Process())
        assert 8265 not in sockets  # Ray's default dashboard port
    finally:
        ray.shutdown()


def test_cluster_config_binds_dashboard_and_mlflow_to_loopback():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    commands = " ".join(str(c) for key, value in config.items() if key.endswith("commands") for c in value)
    assert "mlflow server" in commands
    for part in commands.split("mlflow server")[1:]:
        assert "--host 127.0.0.1" in " ".join(part.split()[:40]), part[:300]
