"""Designed studies (study/designs.py): what each design runs, the spec's checks at validate, and a
pairs study through Ray Tune + Optuna + MLflow, killed and resumed without loss or duplicates."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import yaml

from routed_study.search_spaces import get_space
from routed_study.study import cli
from routed_study.study.designs import FullSpaceQMCSampler, Pairs, Screening
from routed_study.study.spec import StudySpec, json_schema
from routed_study.trainables.errors import InputError
from routed_study.trainables.results import (DESIGN_BASE_KEY, DESIGN_DELTA_KEY, DESIGN_FLIP_KEY,
                                             DESIGN_KEYS, DESIGN_POINT_KEY, DESIGN_SIDE_KEY)

REPO = Path(__file__).resolve().parents[1]


def search(**values) -> SimpleNamespace:
    return SimpleNamespace(**{"seed": 0, "findings": None, "claims": None, "bases": 6, "trajectories": 4,
                              "levels": 4, **values})


def by_base(points):
    out: dict[int, list] = {}
    for p in points:
        out.setdefault(p.keys[DESIGN_BASE_KEY], []).append(p)
    return out


# ------------------------------------------------------------------ what the designs run
def test_pairs_flip_one_claim_knob_on_bases_shared_across_claims():
    space = get_space("findings")
    design = Pairs(search(), space, repeats=2)
    points = design.points()
    claims = {c.finding.id: c for c in design.claims}
    assert [p.keys[DESIGN_POINT_KEY] for p in points] == list(range(len(points)))
    assert Counter(p.keys[DESIGN_FLIP_KEY] for p in points if p.keys[DESIGN_FLIP_KEY]) == {c: 6 for c in claims}
    groups = by_base(points)
    # Shared: fewer bases than claims x bases, fewer trials than separate pairs would need.
    assert len(groups) < 6 * len(claims) and len(points) < 2 * 6 * len(claims)
    assert max(len(g) for g in groups.values()) > 3
    seeds = set()
    for base_id, group in groups.items():
        base, flips = group[0], group[1:]
        assert base.keys[DESIGN_SIDE_KEY] == "base" and flips
        assert {p.seed for p in group} == {base.seed} and base.seed == base_id * 2  # seeds nested in bases
        seeds.add(base.seed)
        for flip in flips:
            claim = claims[flip.keys[DESIGN_FLIP_KEY]]
            knob, side = claim.finding.knob, flip.keys[DESIGN_SIDE_KEY]
            assert claim.side_of(flip.params) == side and claim.side_of(base.params) == {"a": "b", "b": "a"}[side]
            assert claim.meets(base.params) and claim.meets(flip.params)
            # Only the claim's knob changed, besides knobs it switched on or off.
            changed = {k for k in base.params.keys() & flip.params.keys() if base.params[k] != flip.params[k]}
            assert changed == {knob}
            for k in base.params.keys() ^ flip.params.keys():
                param = space.parameters()[k]
                assert param.active(base.params) != param.active(flip.params)
    assert len(seeds) == len(groups)
    assert [p.params for p in Pairs(search(), space, repeats=2).points()] == [p.params for p in points]


def test_pairs_respect_a_claims_condition():
    """F8b holds within cat, F9 within cat and no add_target: every trial is cat, F9's pairs have no
    add_target, and F9 uses F8b's bases where they meet its condition."""
    design = Pairs(search(claims=["F8b", "F9"], bases=5), get_space("findings"))
    groups = by_base(design.points())
    shared = 0
    for group in groups.values():
        assert all(p.params["compose_method"] == "cat" for p in group)
        flipped = {p.keys[DESIGN_FLIP_KEY] for p in group[1:]}
        if "F9" in flipped:
            assert all(p.params["add_target"] is False for p in group if p.keys[DESIGN_FLIP_KEY] in ("", "F9"))
        shared += flipped == {"F8b", "F9"}
    assert shared >= 1 and len(groups) < 10


def test_screening_moves_one_knob_at_a_time():
    space = get_space("core")
    design = Screening(search(trajectories=5), space, repeats=1)
    points = design.points()
    knobs = list(space.parameters())
    assert len(points) == 5 * (len(knobs) + 1)
    for trajectory in by_base(points).values():
        moved = []
        for before, after in zip(trajectory, trajectory[1:]):
            changed = {k for k in knobs if before.params[k] != after.params[k]}
            assert changed == {after.keys[DESIGN_FLIP_KEY]}
            assert math.isclose(abs(after.keys[DESIGN_DELTA_KEY]), 2 / 3)
            moved.append(after.keys[DESIGN_FLIP_KEY])
        assert sorted(moved) == sorted(knobs) and trajectory[0].keys[DESIGN_FLIP_KEY] == ""


def test_qmc_stratifies_every_knob_from_the_first_trial():
    """64 scrambled Sobol points: each of 8 equal bins of a range holds exactly 8 (random draws rarely do)."""
    space = get_space("findings")
    distributions = {n: p.distribution for n, p in space.parameters().items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=FullSpaceQMCSampler(distributions, seed=3))
    values = []
    for _ in range(64):
        trial = study.ask()
        space.define_by_run(trial)
        values.append(trial.params["learning_rate"])
        study.tell(trial, 0.0)
    unit = (np.log(values) - math.log(1e-3)) / (math.log(3e-1) - math.log(1e-3))
    assert np.bincount((unit * 8).astype(int), minlength=8).tolist() == [8] * 8


# ------------------------------------------------------------------ the spec
def test_schema_shows_the_design_keys():
    search_schema = json_schema()["$defs"]["Search"]["properties"]
    assert set(search_schema["algorithm"]["enum"]) == {"tpe", "random", "grid", "qmc", "pairs", "screening"}
    for key in ("findings", "claims", "bases", "trajectories", "levels"):
        assert search_schema[key]["description"]


def spec_dict(tmp_path, **search_values) -> dict:
    return {"name": "designed", "data": {"tasks": ["rt_sentiment"]}, "space": {"name": "findings"},
            "search": {"algorithm": "pairs", **search_values}, "scheduler": {"name": "none"},
            "storage": {"dir": str(tmp_path / "studies")}, "report": False}


def test_designed_spec_counts_its_trials(tmp_path):
    spec = StudySpec.from_dict(spec_dict(tmp_path, claims=["F2", "F5"], bases=3))
    assert spec.num_trials == len(spec.design_points) == 9  # 3 bases, each flipped for both claims
    assert StudySpec.from_dict(spec.to_dict()).design_points == spec.design_points  # what resume reads
    assert any("pairs: 2 claim(s), 3 base configuration(s)" in line for line in spec.describe())


def write_findings(tmp_path, **entry) -> str:
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"findings": [{"id": "X1", "statement": "a claim", **entry}]}))
    return str(path)


def validate(tmp_path, raw: dict, capsys) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "studies").exists()  # before any trial
    return err


BAD_INPUT = {
    "a value outside the space": (
        lambda tmp: {"findings": write_findings(tmp, knob="num_prompt_tokens", a=64, b=4)},
        r"claim 'X1' .*key 'a' \(64\) lies outside space 'findings', where knob 'num_prompt_tokens' takes int in \[4, 20\]"),
    "a within value the space fixes away": (
        lambda tmp: {"claims": ["F8b"]},
        r"claim 'F8b' .*no configuration of space 'findings' meets within compose_method = cat: the space "
        r"fixes compose_method = wavg"),
    "a within no drawn configuration meets": (
        lambda tmp: {"findings": write_findings(tmp, knob="temperature", a={"quantile": [0, 0.5]},
                                                b={"quantile": [0.5, 1]}, within={"route_method": "const"}),
                     "bases": 2},
        r"claim 'X1': 0 of 2 bases found in 400 configurations .* route_method = const with knob 'temperature' "
        r"applying on both sides \(temperature applies only when"),
    "a claim knob the space does not search": (
        lambda tmp: {"claims": ["F6"]},
        r"claim 'F6' .*knob 'prompt_encoder' is not searched by space 'findings'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_a_design_the_space_cannot_build_is_one_line_at_validate(tmp_path, capsys, case):
    make, expected = BAD_INPUT[case]
    raw = spec_dict(tmp_path, **make(tmp_path))
    if case == "a within value the space fixes away":
        raw["space"]["fixed"] = {"compose_method": "wavg"}
    if case == "a claim knob the space does not search":
        raw["space"]["fixed"] = {"prompt_encoder": "emb"}
    assert re.search(expected, validate(tmp_path, raw, capsys)), case


def test_screening_refuses_a_conditional_knob(tmp_path, capsys):
    raw = spec_dict(tmp_path)
    raw["search"] = {"algorithm": "screening"}
    err = validate(tmp_path, raw, capsys)
    assert re.search(r"screening moves one knob at a time and cannot flip knob '\w+' of space 'findings', "
                     r"inert in some configurations \(it applies only when .*\); fix the knobs", err)
    raw["space"] = {"name": "core"}  # core's knobs apply everywhere
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert StudySpec.load(path).num_trials == 10 * (len(get_space("core").parameters()) + 1)


@pytest.mark.parametrize("change, expected", [
    ({"scheduler": {"name": "asha"}}, "key 'scheduler.name': the pairs design needs scheduler: none"),
    ({"trials": {"num": 5}}, "key 'trials.num': the pairs design has 9 configurations"),
    ({"search": {"algorithm": "tpe", "bases": 4}}, "key 'search.bases': read by algorithm pairs only, not tpe"),
    ({"search": {"algorithm": "screening", "levels": 3}}, "key 'search.levels': Morris screening needs an even"),
])
def test_design_keys_are_checked(tmp_path, change, expected):
    raw = spec_dict(tmp_path, claims=["F2", "F5"], bases=3)
    if change.get("search", {}).get("algorithm") == "screening":
        raw["space"] = {"name": "core"}
    raw.update(change)
    with pytest.raises(InputError, match=re.escape(expected)):
        StudySpec.from_dict(raw)


# ------------------------------------------------------------------ through the runner
def design_spec_raw(storage: Path, name: str) -> dict:
    return {"name": name, "data": {"tasks": ["rt_sentiment"]}, "space": {"name": "core", "fixed": {"epochs": 3}},
            "search": {"algorithm": "pairs", "claims": ["F2", "F5"], "bases": 2},
            "scheduler": {"name": "none"}, "trials": {"concurrency": 1, "repeats": 2},
            "resources": {"cpus": 1}, "storage": {"dir": str(storage)}, "report": False}


DRIVER = """
import sys
from tests.sleep_trainable import make_sleep_trainable
from routed_study.study.runner import resume_study, run_study
from routed_study.study.spec import StudySpec
trainable = make_sleep_trainable(float(sys.argv[3]))
if sys.argv[1] == "run":
    print(run_study(StudySpec.load(sys.argv[2]), trainable=trainable).summary(), flush=True)
else:
    print(resume_study(sys.argv[2], trainable=trainable).summary(), flush=True)
"""


def records(spec: StudySpec):
    """(Ray trials, Optuna trials, MLflow child runs) of a study."""
    from ray.tune import ExperimentAnalysis

    from routed_study.study.tracking import TAG_PARENT, client_for

    ray_trials = [{"id": t.trial_id, "status": t.status, "config": t.config}
                  for t in ExperimentAnalysis(str(spec.study_dir)).trials]
    study = optuna.load_study(study_name=spec.optuna_study_name, storage=spec.optuna_storage)
    client = client_for(spec.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    children = [r for r in client.search_runs([experiment.experiment_id]) if TAG_PARENT in r.data.tags]
    return ray_trials, study.trials, children


def check_one_to_one(spec: StudySpec) -> dict:
    from routed_study.study.tracking import DESIGN_TAGS, TAG_RAY_TRIAL_ID, TAG_REPEAT_INDEX

    ray_trials, optuna_trials, children = records(spec)
    points = {p.keys[DESIGN_POINT_KEY]: p for p in spec.design_points}
    runs = len(points) * spec.repeats
    ray_keys = Counter((t["config"][DESIGN_POINT_KEY], t["config"]["__trial_index__"]) for t in ray_trials)
    run_keys = Counter((int(r.data.tags[DESIGN_TAGS[DESIGN_POINT_KEY]]), int(r.data.tags[TAG_REPEAT_INDEX]))
                       for r in children)
    counts = {"requested": runs, "ray_trials": len(ray_trials), "completed": sum(t["status"] == "TERMINATED"
                                                                                  for t in ray_trials),
              "optuna_trials": len(optuna_trials), "mlflow_child_runs": len(children),
              "duplicated": sum(n - 1 for n in ray_keys.values()) + sum(n - 1 for n in run_keys.values())}
    assert counts["duplicated"] == 0 and counts["completed"] == runs == len(children), counts
    assert len(optuna_trials) == len(points) and all(t.state == optuna.trial.TrialState.COMPLETE
                                                      for t in optuna_trials), counts
    assert {t.user_attrs[DESIGN_POINT_KEY] for t in optuna_trials} == set(points)
    for trial in optuna_trials:  # Optuna holds exactly the design point's knobs and keys
        point = points[trial.user_attrs[DESIGN_POINT_KEY]]
        assert trial.params == point.params and {k: trial.user_attrs[k] for k in point.keys} == point.keys
    for t in ray_trials:
        point = points[t["config"][DESIGN_POINT_KEY]]
        assert all(t["config"][k] == v for k, v in point.params.items())
        assert {k: t["config"][k] for k in point.keys} == point.keys and t["config"]["seed"] == point.seed
    assert {r.data.tags[TAG_RAY_TRIAL_ID] for r in children} == {t["id"] for t in ray_trials}
    return counts


def test_pairs_study_runs_its_design_and_is_analysed_as_pairs(tmp_path, local_ray):
    from routed_study.analysis.designs import design_of, paired_claims
    from routed_study.analysis.findings import load_findings
    from routed_study.analysis.loading import load_trials
    from routed_study.study.runner import run_study
    from tests.sleep_trainable import make_sleep_trainable

    raw = design_spec_raw(tmp_path, "pairs-study")
    raw["space"]["fixed"]["epochs"] = 1
    spec = StudySpec.from_dict(raw)
    outcome = run_study(spec, trainable=make_sleep_trainable(0.05))
    assert (outcome.num_trials, outcome.completed) == (12, 12)
    check_one_to_one(spec)
    for source in (str(spec.study_dir), spec.mlflow_tracking_uri):  # both ways of reading a study
        table = load_trials(source)
        assert set(DESIGN_KEYS) - {DESIGN_DELTA_KEY} <= set(table.frame.columns)
        assert not set(DESIGN_KEYS) & set(table.knobs)
        assert design_of(table.frame).name == "pairs" and design_of(table.frame).n_bases == 2
        rows = paired_claims(table.frame, load_findings(), "score", min_bases=2)
        assert list(rows["id"]) == ["F2", "F5"] and (rows["n_configs"] == 2).all() and (rows["n_seeds"] == 4).all()


def progress(log: Path, study_dir: Path) -> tuple[set, set]:
    text = log.read_text(errors="replace")
    finished = set(re.findall(r"finished (\w+)", text))
    started = set(re.findall(r"started (\w+)", text))
    return finished, {t for t in started - finished if list(study_dir.glob(f"*_{t}/checkpoint_000000"))}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_designed_study_resumes_without_loss_or_duplicates(tmp_path):
    from tests.test_reliability_resume import kill_session

    spec_path = tmp_path / "designed.yaml"
    spec_path.write_text(yaml.safe_dump(design_spec_raw(tmp_path / "studies", "killed-pairs")))
    spec = StudySpec.load(spec_path)
    study_dir = Path(spec.study_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)])))
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, "run", str(spec_path), "0.7"], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + 300
            while True:  # kill once a trial finished and another is part-way
                done, part_way = progress(log_path, study_dir)
                if done and part_way:
                    break
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.05)
        finally:
            kill_session(driver)
    resumed = subprocess.run([sys.executable, "-c", DRIVER, "resume", str(study_dir), "0.7"], cwd=REPO,
                             capture_output=True, text=True, timeout=500, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    counts = check_one_to_one(spec)
    counts["finished_before_kill"] = len(done)
    print("designed kill-and-resume counts:", json.dumps(counts))
    assert counts["finished_before_kill"] < counts["requested"]


def test_qmc_study_is_sampled_and_named(tmp_path, local_ray):
    from routed_study.analysis.designs import design_of
    from routed_study.analysis.loading import load_trials
    from routed_study.study.runner import run_study
    from routed_study.study.tracking import DESIGN_TAGS
    from tests.sleep_trainable import make_sleep_trainable

    raw = design_spec_raw(tmp_path, "qmc-study")
    raw["search"] = {"algorithm": "qmc", "seed": 1}
    raw["space"]["fixed"]["epochs"] = 1
    raw["trials"] = {"num": 4, "concurrency": 2}
    spec = StudySpec.from_dict(raw)
    outcome = run_study(spec, trainable=make_sleep_trainable(0.05))
    assert (outcome.num_trials, outcome.completed) == (4, 4)
    assert design_of(load_trials(str(spec.study_dir)).frame).name == "qmc"
    _, optuna_trials, children = records(spec)
    assert {r.data.tags[DESIGN_TAGS[DESIGN_KEYS[0]]] for r in children} == {"qmc"}
    # Sobol from the first trial on: 4 points put one learning rate in each quarter of its (log) range.
    unit = [(math.log(t.params["learning_rate"]) - math.log(1e-3)) / (math.log(3e-1) - math.log(1e-3))
            for t in optuna_trials]
    assert sorted(int(u * 4) for u in unit) == [0, 1, 2, 3]
