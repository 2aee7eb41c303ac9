"""build_report end to end: CSV / study dir / MLflow sources, bad input, and the HTML in a real browser."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from routed_study.analysis.loading import load_trials
from routed_study.analysis.report import build_report
from tests.synthetic import planted_table
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import KNOBS

CHROMIUM = Path("/usr/bin/chromium")
FILES = {"trials", "importance", "findings", "tree", "html"}


def fake_study(root: Path, n: int = 30) -> Path:
    """A Ray-style study dir: params.json, result.json per epoch, error.txt, router_matrix.csv."""
    frame = planted_table(n, seed=5)
    tasks = ["rt_sentiment", "vader_movies"]
    for i, row in frame.iterrows():
        trial = root / f"trial_{i:03d}"
        trial.mkdir(parents=True)
        config = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.drop("score").items()}
        config.update(epochs=3, seed=0, __trial_index__=0)
        (trial / "params.json").write_text(json.dumps(config))
        epochs = 0 if i == 0 else (1 if i % 5 == 0 else 3)  # trial 0 errors, every 5th stopped early
        lines = [json.dumps({"epoch": e, "score": row["score"] - (3 - e), "config": config,
                             **{f"val/{t}": row["score"] + j for j, t in enumerate(tasks)}})
                 for e in range(1, epochs + 1)]
        (trial / "result.json").write_text("\n".join(lines) + "\n" if lines else "")
        if i == 0:
            (trial / "error.txt").write_text("Traceback...\nFloatingPointError: loss is nan at step 3\n")
        matrix = pd.DataFrame(np.random.default_rng(i).normal(size=(2, 4)), index=tasks,
                              columns=["source_0", "source_1", "source_2", "private"])
        matrix.to_csv(trial / "router_matrix.csv")
    return root


def test_study_dir_statuses_and_report(tmp_path):
    study = fake_study(tmp_path / "study")
    table = load_trials(study)
    status = table.frame.set_index("trial_id")["status"]
    assert status["trial_000"] == "error" and status["trial_005"] == "early_stopped"
    assert status["trial_001"] == "ok"
    assert table.frame.set_index("trial_id").loc["trial_001", "epochs_run"] == 3
    assert "val/rt_sentiment" in table.frame and "seed" in table.frame
    assert "epochs" in table.knobs and not any(k.startswith("__") for k in table.knobs)
    paths = build_report(study, tmp_path / "out")
    assert set(paths) == FILES and all(p.is_file() for p in paths.values())
    page = paths["html"].read_text()
    assert "early_stopped" in page and "broken" in page  # how each status was treated
    assert "Asymmetry of task-to-task use" in page and "router heatmap" in page
    assert "Per-task scores" in page
    importance = pd.read_csv(paths["importance"])
    assert set(importance.columns) >= {"factor", "method", "importance", "rank", "low", "high"}
    assert {"tree_regressor", "tree_classifier", "permutation", "fanova", "ped_anova"} == set(importance["method"])


def test_csv_report_with_config_prefix_and_browser(tmp_path):
    frame = planted_table(200, seed=1).rename(columns=lambda c: c if c == "score" else f"config/{c}")
    frame.to_csv(tmp_path / "t.csv", index=False)
    paths = build_report(tmp_path / "t.csv", tmp_path / "out")
    trials = pd.read_csv(paths["trials"])
    assert "apply_softmax_to" in trials and len(trials) == 200
    tree = paths["tree"].read_text()
    assert "apply_softmax_to=after" in tree and "log10(learning_rate)" in tree
    findings = pd.read_csv(paths["findings"]).set_index("id")
    assert findings.loc["F8b", "verdict"] == "supported"
    assert "never varied" in findings.loc["F6", "reason"]
    check_in_browser(paths["html"])


def check_in_browser(page: Path) -> None:
    """Open the report in headless Chromium: no console message, charts and tables in the DOM."""
    html = page.read_text()
    assert not re.search(r"(src|href)=\"https?:", html), "the report must not load anything from the network"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 6
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium): browser check not run")
    run = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-background-networking", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = run.stdout
    for section in ("summary", "best", "importance", "tree", "factors", "router", "findings"):
        assert f'id="{section}"' in dom
    assert dom.count("<img") == len(images) and dom.count("<table") >= 4
    assert "F8b" in dom


def test_mlflow_source(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("demo", artifact_location=str(tmp_path / "art"))
    frame = planted_table(24, seed=2, n_knobs=6)
    with mlflow.start_run(experiment_id=experiment, run_name="study"):
        for i, row in frame.iterrows():
            with mlflow.start_run(experiment_id=experiment, nested=True, run_name=f"t{i}"):
                mlflow.log_params(row.drop("score").to_dict())
                for epoch in (1, 2):
                    mlflow.log_metric("score", float(row["score"]) - 2 + epoch, step=epoch)
    table = load_trials(uri, experiment="demo")
    assert len(table.frame) == 24  # the parent run is not a trial
    assert table.frame["learning_rate"].dtype == float and set(table.frame["apply_softmax_to"]) <= {
        "before", "after", "norm", "normafter", "nothing"}
    np.testing.assert_allclose(np.sort(table.frame["best_score"]), np.sort(frame["score"]))
    with pytest.raises(InputError, match="no experiment 'dmeo' \\(did you mean 'demo'"):
        load_trials(uri, experiment="dmeo")


def test_missing_target_column(tmp_path):
    planted_table(50).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InputError, match=r"t.csv: no column 'scroe' for the target \(did you mean 'score'"):
        build_report(tmp_path / "t.csv", tmp_path / "out", target="scroe")


def test_constant_target_writes_what_it_can(tmp_path):
    planted_table(50).assign(score=70.0).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InputError, match="no importance method could run.*target is constant"):
        build_report(tmp_path / "t.csv", tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "id='skipped'" in page and "constant" in page
    assert (tmp_path / "out" / "trials.csv").is_file() and (tmp_path / "out" / "findings.csv").is_file()


def test_too_few_trials_lists_each_method(tmp_path):
    planted_table(8).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InputError, match="needs at least 10 trials"):
        build_report(tmp_path / "t.csv", tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    for method in ("tree_regressor", "tree_classifier", "permutation", "fanova", "ped_anova"):
        assert f"<td>{method}</td>" in page


def test_unknown_source(tmp_path):
    with pytest.raises(InputError, match="not found or not a supported source"):
        build_report(tmp_path / "nothing.json", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a study directory"):
        build_report(tmp_path / "empty", tmp_path / "out")


def test_mode_min_reads_lower_as_better(tmp_path):
    planted_table(150, seed=2).assign(loss=lambda f: -f["score"]).drop(columns="score").to_csv(
        tmp_path / "t.csv", index=False)
    paths = build_report(tmp_path / "t.csv", tmp_path / "out", target="loss", mode="min")
    assert pd.read_csv(paths["findings"]).set_index("id").loc["F8b", "verdict"] == "supported"
    with pytest.raises(InputError, match="mode got 'lowest'"):
        build_report(tmp_path / "t.csv", tmp_path / "out", target="loss", mode="lowest")


def test_router_that_never_moved_is_explained_not_read(tmp_path):
    from routed_study.analysis.report import _router_section

    tasks = ["rt_sentiment", "bbc_topic"]
    moved, frozen = tmp_path / "moved", tmp_path / "frozen"
    for folder, values in ((moved, [[0.8, -0.2], [-0.5, 0.4]]), (frozen, [[0.0, 0.0], [0.0, 0.0]])):
        folder.mkdir()
        pd.DataFrame(values, index=tasks, columns=["source_0", "source_1"]).to_csv(folder / "router_matrix.csv")
    best = pd.DataFrame({"trial_id": ["moved", "frozen"], "score": [80.0, 79.0],
                         "trial_dir": [str(moved), str(frozen)]})
    page = _router_section(best, "score")
    assert page.count("router heatmap") == 2
    assert page.count("never moved") == 1 and page.count("Strongest source per task") == 1
    assert "rt_sentiment -&gt; source_0, bbc_topic -&gt; source_1" in page


def test_trial_stopped_before_the_default_epochs_is_early_stopped(tmp_path):
    # epochs neither searched nor fixed: absent from the config, the trial trains the default.
    default = KNOBS["epochs"].default
    for name, epochs_run in (("full", default), ("cut", 1)):
        trial = tmp_path / "study" / name
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"learning_rate": 0.01}))
        (trial / "result.json").write_text("".join(json.dumps({"epoch": e, "score": 50.0 + e}) + "\n"
                                                   for e in range(1, epochs_run + 1)))
    status = load_trials(tmp_path / "study").frame.set_index("trial_id")["status"]
    assert status["full"] == "ok" and status["cut"] == "early_stopped"
