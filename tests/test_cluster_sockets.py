"""Loopback by default: every socket that a local study listens on, read with psutil.

`routed-study run` on a local spec starts its own Ray; its GCS, raylet, object manager,
agents and trial workers all listen on 127.0.0.1. Ray 2.60 has no documented setting for
that (it rewrites 127.0.0.1 to the machine's address, then listens on every interface); the
runner's undocumented switch does it, and this test fails when the switch stops working.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tiny_backbones import save_tiny_bert, write_tiny_glue

CONSOLE = Path(sys.executable).parent / "routed-study"
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listeners(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket of ``root`` and its descendants."""
    found = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for process in processes:
        try:
            name = process.name()
            for c in process.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue  # exited meanwhile
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_study_listens_on_loopback_only(tmp_path):
    data_dir = write_tiny_glue(tmp_path / "data", {"train": 16, "validation": 8, "test": 8})
    spec = {
        "name": "sockets",
        "backbone": {"name": str(save_tiny_bert(tmp_path / "tiny-bert")), "family": "encoder", "max_length": 16},
        "data": {"dir": str(data_dir), "tasks": ["sst2"], "train_per_task": 16, "eval_per_task": 8},
        "space": {"name": "core", "fixed": {"epochs": 2, "num_prompt_tokens": 4, "batch_size": 4}},
        "search": {"algorithm": "random", "seed": 0},
        "scheduler": {"name": "none"},
        "trials": {"num": 2, "concurrency": 1},
        "storage": {"dir": str(tmp_path / "studies")},
        "report": False,
    }
    spec_path = tmp_path / "sockets.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([str(CONSOLE), "run", str(spec_path)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, str, int]] = set()
    root = psutil.Process(driver.pid)
    while driver.poll() is None:  # the whole study: Ray's start, both trials, its shutdown
        seen |= listeners(root)
        time.sleep(0.2)
    output = driver.stdout.read()
    assert driver.returncode == 0, output[-3000:]
    assert "2 completed" in output

    for name, address, port in sorted(seen):
        print(f"listening: {name:<24} {address}:{port}")
    names = {name for name, _, _ in seen}
    # The study's Ray was really watched: its GCS, its raylet and a trial's worker process.
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sorted(seen)
    public = sorted(s for s in seen if s[1] not in LOOPBACK)
    assert not public, f"listening beyond loopback: {public}"
