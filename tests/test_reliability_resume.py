"""Driver killed: `routed-study run` dies by SIGKILL while trials run; `routed-study resume`
finishes the study with exactly the requested trials, and Ray's results, the Optuna study
and the MLflow child runs agree one to one (nothing lost, nothing recorded twice, the
parent run reused, the sampler continuing from its history).

Real trainable (offline MiniLM, smoke-sized data), real processes. The counts
(requested, completed, lost, duplicated) are printed and written to
``<tmp>/kill_resume_counts.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONSOLE = Path(sys.executable).parent / "routed-study"
TRIALS = 4


def progress(study_dir: Path, log: Path) -> tuple[set[str], set[str]]:
    """(trials the driver reported finished, started trials with a checkpoint not yet finished).

    Read from the driver's progress lines ("... finished <id>" / "... started <id>") and the
    checkpoints the workers write straight into the study directory.
    """
    text = log.read_text(errors="replace")
    finished = set(re.findall(r"finished (\w+)", text))
    started = set(re.findall(r"started (\w+)", text))
    checkpointed = {t for t in started - finished if list(study_dir.glob(f"*_{t}/checkpoint_000000"))}
    return finished, checkpointed


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the driver, then whatever else it started (its session), as a preempted host loses it."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    for child in psutil.process_iter(["pid"]):
        try:
            if os.getsid(child.pid) == process.pid:
                child.kill()
        except (ProcessLookupError, psutil.Error):
            pass


def ray_trials(study_dir: Path) -> list[dict]:
    """Ray's own record of the experiment: one entry per trial (id, status, config)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(study_dir))
    return [{"trial_id": t.trial_id, "status": t.status, "config": t.config} for t in analysis.trials]


def test_restored_searcher_adopts_orphaned_optuna_trials(tmp_path):
    """The searcher saved by Ray's last snapshot misses what happened after it, before the kill:
    a trial told to Optuna (Ray re-runs it: its results are ignored, not an error) and a trial
    Optuna proposed (the next new Ray trial adopts it; the one after gets a fresh proposal,
    not a replay of the orphan's parameters)."""
    import optuna

    from routed_study.study.runner import make_search_alg
    from routed_study.study.spec import StudySpec
    from routed_study.study.tracking import OPTUNA_TRIAL_KEY

    raw = yaml.safe_load((REPO / "study" / "specs" / "smoke.yaml").read_text())
    raw["storage"] = {"dir": str(tmp_path)}
    spec = StudySpec.from_dict(raw)
    spec.study_dir.mkdir(parents=True)
    before_kill = make_search_alg(spec)
    first = before_kill.suggest("ray-1")
    before_kill.save(str(tmp_path / "searcher.pkl"))  # Ray's last experiment snapshot
    final = {"score": 60.0, "training_iteration": 1, "config/epochs": 1}
    before_kill.on_trial_complete("ray-1", final)  # finished after the snapshot
    orphan = before_kill.suggest("ray-2")  # proposed, then the driver is killed

    resumed = make_search_alg(spec)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    # Ray re-runs ray-1 (its snapshot says running): its results must not crash the resume.
    resumed.on_trial_result("ray-1", final)
    resumed.on_trial_complete("ray-1", final)
    adopted = resumed.suggest("ray-3")
    fresh = resumed.suggest("ray-4")
    def knobs(config: dict) -> dict:
        return {k: v for k, v in config.items() if k != OPTUNA_TRIAL_KEY}

    assert adopted == orphan and adopted[OPTUNA_TRIAL_KEY] == 1
    assert fresh[OPTUNA_TRIAL_KEY] == 2 and knobs(fresh) not in (knobs(orphan), knobs(first))
    study = optuna.load_study(study_name=spec.optuna_study_name, storage=spec.optuna_storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    resumed.on_trial_complete("ray-3", {"score": 50.0, "training_iteration": 1, "config/epochs": 1})
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_driver_resumes_without_loss_or_duplicates(tmp_path, offline_data):
    from routed_study.study.spec import StudySpec
    from routed_study.study.tracking import TAG_OPTUNA_TRIAL, TAG_PARENT, TAG_RAY_TRIAL_ID, TAG_ROLE, client_for

    raw = yaml.safe_load((REPO / "study" / "specs" / "smoke.yaml").read_text())
    raw["data"]["dir"] = str(offline_data)
    # Checkpoints mid-trial to resume from, and trials long enough to be caught running.
    raw["space"]["fixed"]["epochs"] = 3
    raw["data"]["train_per_task"] = 32
    raw["trials"].update(num=TRIALS, concurrency=1)
    raw["storage"] = {"dir": str(tmp_path / "studies")}
    spec_path = tmp_path / "kill.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    spec = StudySpec.load(spec_path)
    study_dir = Path(spec.study_dir)

    log = open(tmp_path / "run.log", "w")
    driver = subprocess.Popen([str(CONSOLE), "run", str(spec_path)], cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))  # progress lines as they happen
    try:
        deadline = time.monotonic() + 420
        while True:  # kill once a trial finished and another is part-way (checkpointed, unfinished)
            done, part_way = progress(study_dir, tmp_path / "run.log")
            if done and part_way:
                break
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.05)
    finally:
        kill_session(driver)
        log.close()
    done_before_kill = len(done)
    client = client_for(spec.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    parents_before = [r.info.run_id for r in client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = 'parent'")]

    resumed = subprocess.run([str(CONSOLE), "resume", str(study_dir)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    print(resumed.stdout.strip().splitlines()[-1])

    # --- Ray
    trials = ray_trials(study_dir)
    completed = [t for t in trials if t["status"] == "TERMINATED"]
    ray_ids = Counter(t["trial_id"] for t in trials)
    ray_numbers = Counter(t["config"]["__optuna_trial_number__"] for t in trials)
    # --- Optuna
    import optuna

    study = optuna.load_study(study_name=spec.optuna_study_name, storage=spec.optuna_storage)
    optuna_numbers = Counter(t.number for t in study.trials)
    # --- MLflow
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    children = [r for r in runs if TAG_PARENT in r.data.tags]
    run_ids = Counter(r.data.tags[TAG_RAY_TRIAL_ID] for r in children)
    run_numbers = Counter(int(r.data.tags[TAG_OPTUNA_TRIAL]) for r in children)

    duplicated = (sum(n - 1 for n in ray_ids.values()) + sum(n - 1 for n in ray_numbers.values())
                  + sum(n - 1 for n in run_ids.values()) + max(0, len(optuna_numbers) - TRIALS)
                  + max(0, len(trials) - TRIALS))
    counts = {"requested": TRIALS, "completed": len(completed), "lost": TRIALS - len(completed),
              "duplicated": duplicated, "finished_before_kill": done_before_kill,
              "ray_trials": len(trials), "optuna_trials": len(study.trials), "mlflow_child_runs": len(children)}
    print("kill-and-resume counts:", json.dumps(counts))
    (tmp_path / "kill_resume_counts.json").write_text(json.dumps(counts, indent=2))

    assert counts["lost"] == 0 and counts["duplicated"] == 0, counts
    assert len(trials) == len(study.trials) == len(children) == TRIALS, counts
    # One to one: the same Ray trial ids in MLflow, the same Optuna numbers everywhere.
    assert set(run_ids) == set(ray_ids)
    # What `analyze` reads from the study directory: one trial folder per Ray trial. (A Ray
    # trial the killed driver never snapshotted leaves a folder with checkpoints only.)
    assert len(list(study_dir.glob("*/params.json"))) == TRIALS
    assert set(ray_numbers) == set(run_numbers) == set(optuna_numbers) == set(range(TRIALS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(r.info.status == "FINISHED" for r in children)
    assert [p.info.run_id for p in parents] == parents_before and len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    # The sampler continued from its history: a restarted seeded sampler would propose the
    # first configurations again.
    proposals = [tuple(sorted((k, v) for k, v in t.params.items())) for t in study.trials]
    assert len(set(proposals)) == len(proposals), proposals
    for t in study.trials:  # Optuna's trial and Ray's trial of the same number hold the same knobs
        ray_config = next(r["config"] for r in trials if r["config"]["__optuna_trial_number__"] == t.number)
        assert all(ray_config[k] == v for k, v in t.params.items())
