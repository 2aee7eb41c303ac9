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
FILES = {"trials", "importance", "findings", "interactions", "tree", "html"}
METHODS = {"forest", "tree_regressor", "tree_classifier", "fanova", "ped_anova"}


def planted(n: int, seed: int = 0, **kw) -> pd.DataFrame:
    # Two of several sources selected: apply_softmax_to applies (with all kept, before = after).
    return planted_table(n, seed=seed, **kw).assign(num_selected=2)


def fake_study(root: Path, n: int = 30, stopped=lambda i: i % 5 == 0) -> Path:
    """A Ray-style study dir: params.json, result.json per epoch, error.txt, router_matrix.csv;
    trial 0 errors, trial i stops early after one epoch where ``stopped(i)``."""
    frame = planted(n, seed=5)
    tasks = ["rt_sentiment", "vader_movies"]
    for i, row in frame.iterrows():
        trial = root / f"trial_{i:03d}"
        trial.mkdir(parents=True)
        config = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.drop("score").items()}
        config.update(epochs=3, seed=0, __trial_index__=0)
        (trial / "params.json").write_text(json.dumps(config))
        epochs = 0 if i == 0 else (1 if stopped(i) else 3)
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
    assert "router heatmap" in page and "Per-task scores" in page
    # Anonymous sources are no task's prompt: no asymmetry that reads source_i as task i.
    assert "source_i" not in page and page.count("No F17 asymmetry: sources are not task-owned") == 3
    importance = pd.read_csv(paths["importance"])
    assert set(importance.columns) >= {"factor", "method", "importance", "rank", "low", "high", "p_value", "verdict"}
    assert set(importance["method"]) == METHODS


def test_importance_falls_back_to_the_common_budget_when_few_trials_completed(tmp_path):
    # As in a short ASHA study: 9 of 30 trials complete, too few for any importance method.
    study = fake_study(tmp_path / "study", stopped=lambda i: i % 3 != 0)
    claims = tmp_path / "claims.yaml"
    claims.write_text("findings:\n  - {id: R, kind: ranking, statement: planted order,\n"
                      "     factors: [apply_softmax_to=after, learning_rate, compose_method, source_order]}\n")
    paths = build_report(study, tmp_path / "out", findings=claims)
    importance = pd.read_csv(paths["importance"])
    assert len(importance) and importance["view"].str.startswith("every trial at epoch 1, the budget all reached").all()
    assert "needs at least 10 trials" in importance["view"].iloc[0]
    assert set(importance.loc[importance["method"] == "forest", "n_trials"]) == {29}  # all but the errored one
    page = paths["html"].read_text()
    assert "Fitted on every trial at epoch 1" in page and "The ranking claim (F1) uses completed" in page
    # The claims keep to the completed trials: a ranking cannot be judged on nine of them.
    ranking = pd.read_csv(paths["findings"]).set_index("id").loc["R"]
    assert ranking["verdict"] == "inconclusive" and "surrogate could not be fitted" in ranking["reason"]


def test_csv_report_with_config_prefix_and_browser(tmp_path):
    frame = planted(200, seed=1).rename(columns=lambda c: c if c == "score" else f"config/{c}")
    frame.to_csv(tmp_path / "t.csv", index=False)
    paths = build_report(tmp_path / "t.csv", tmp_path / "out")
    trials = pd.read_csv(paths["trials"])
    assert "apply_softmax_to" in trials and len(trials) == 200
    tree = paths["tree"].read_text()
    assert "apply_softmax_to=after" in tree and "log10(learning_rate)" in tree
    findings = pd.read_csv(paths["findings"]).set_index("id")
    assert findings.loc["F8b", "verdict"] == "supported"
    assert "never varied" in findings.loc["F6", "reason"]
    # findings.csv carries, per claim, what the report's verdict table shows (issue 9, item 11).
    assert set(findings.columns) >= {"statement", "verdict", "effect", "ci_low", "ci_high", "n_configs", "n_seeds",
                                     "p_value", "p_adjusted", "treatment", "trials_needed", "reason"}
    importance = pd.read_csv(paths["importance"]).query("method == 'forest'").set_index("factor")
    assert importance.loc["apply_softmax_to", "verdict"] == "matters"
    assert importance.loc["learning_rate", "verdict"] == "matters"
    assert (importance["rank"].isna() == (importance["importance"] <= 0)).all()  # zero importance: unranked
    interactions = pd.read_csv(paths["interactions"])
    assert {"F8a", "F8b", "F9", "F11"} <= set(interactions["claim"])
    check_in_browser(paths["html"])


def check_in_browser(page: Path) -> None:
    """Open the report in headless Chromium: no console message, charts and tables in the DOM."""
    html = page.read_text()
    assert not re.search(r"(src|href)=\"https?:", html), "the report must not load anything from the network"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5
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
    for section in ("summary", "best", "importance", "tree", "factors", "router", "findings", "interactions"):
        assert f'id="{section}"' in dom
    assert dom.count("<img") == len(images) and dom.count("<table") >= 4
    # What the researcher came for comes first: the verdicts, then one chart of every method.
    assert dom.index('id="verdict-table"') < dom.index('alt="importance of every method"') < dom.index('id="summary"')
    assert dom.count('alt="importance') == 1
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
    assert 'id="skipped"' in page and "constant" in page
    assert (tmp_path / "out" / "trials.csv").is_file() and (tmp_path / "out" / "findings.csv").is_file()


def test_too_few_trials_lists_each_method(tmp_path):
    planted_table(8).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InputError, match="needs at least 10 trials"):
        build_report(tmp_path / "t.csv", tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    for method in METHODS:
        assert f"<td>{method}</td>" in page


def test_unknown_source(tmp_path):
    with pytest.raises(InputError, match="not found or not a supported source"):
        build_report(tmp_path / "nothing.json", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a study directory"):
        build_report(tmp_path / "empty", tmp_path / "out")


def test_mode_min_reads_lower_as_better(tmp_path):
    planted(150, seed=2).assign(loss=lambda f: -f["score"]).drop(columns="score").to_csv(
        tmp_path / "t.csv", index=False)
    paths = build_report(tmp_path / "t.csv", tmp_path / "out", target="loss", mode="min")
    assert pd.read_csv(paths["findings"]).set_index("id").loc["F8b", "verdict"] == "supported"
    with pytest.raises(InputError, match="mode got 'lowest'"):
        build_report(tmp_path / "t.csv", tmp_path / "out", target="loss", mode="lowest")


def test_router_that_never_moved_is_explained_not_read(tmp_path):
    from routed_study.analysis.report import router_section

    tasks = ["rt_sentiment", "bbc_topic"]
    moved, frozen = tmp_path / "moved", tmp_path / "frozen"
    for folder, values in ((moved, [[0.8, -0.2], [-0.5, 0.4]]), (frozen, [[0.0, 0.0], [0.0, 0.0]])):
        folder.mkdir()
        pd.DataFrame(values, index=tasks, columns=["source_0", "source_1"]).to_csv(folder / "router_matrix.csv")
    best = pd.DataFrame({"trial_id": ["moved", "frozen"], "score": [80.0, 79.0],
                         "trial_dir": [str(moved), str(frozen)]})
    section = router_section(best, "score")
    lines = [line for trial in section["trials"] for line in trial["lines"]]
    assert all(trial["chart"] for trial in section["trials"])
    assert sum("never moved" in line for line in lines) == 1
    assert "Strongest candidate per task: rt_sentiment -> source_0, bbc_topic -> source_1" in lines


PLUGIN = """
from typing import Literal

import pandas as pd

from routed_study.analysis.findings import Entry, FindingKind, register_kind
from routed_study.analysis.importance import FactorImportance, register_method
from routed_study.trainables.routed_prompt.methods import register_route_method


@register_route_method("flat_analysis", tempered=False)
def flat(logits, tau):
    # Every candidate at weight one half: the temperature means nothing here.
    return logits * 0 + 0.5


@register_method("spread_of_means")
class SpreadOfMeans(FactorImportance):
    \"\"\"Range of the mean score over a knob's values.\"\"\"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, design):
        rows = self._finite(design)
        y = pd.Series(design.y[rows])
        spread = {k: y.groupby(design.raw[k].iloc[rows].astype(str).to_numpy()).mean().agg("max") -
                     y.groupby(design.raw[k].iloc[rows].astype(str).to_numpy()).mean().agg("min")
                  for k in design.knobs}
        self.factor_importances_ = self._result(pd.Series(spread))
        self.n_trials_ = len(rows)
        return self


class BestAboveEntry(Entry):
    kind: Literal["best_above"]
    threshold: float


@register_kind
class BestAbove(FindingKind):
    name = "best_above"
    Entry = BestAboveEntry
    family = "claims"

    def evaluate(self, entry, evidence):
        best = float(evidence.frame[evidence.target].max())
        return {"verdict": "supported" if best > entry.threshold else "contradicted", "effect": best,
                "p_value": 0.001, "reason": f"best {best:.1f} against {entry.threshold:g}"}
"""


@pytest.fixture
def analysis_plugin(tmp_path, monkeypatch):
    """A researcher's module outside the package: a route method, an importance method and a finding kind."""
    from routed_study.analysis.findings import KINDS
    from routed_study.analysis.importance import METHODS as REGISTERED
    from routed_study.trainables.routed_prompt.methods import ROUTE_METHODS

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "my_analysis_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    yield "my_analysis_plugin"
    REGISTERED.pop("spread_of_means", None)
    KINDS.pop("best_above", None)
    ROUTE_METHODS._entries.pop("flat_analysis", None)   # registries are process-wide
    import sys
    sys.modules.pop("my_analysis_plugin", None)


def plugin_findings(tmp_path) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text("findings:\n  - id: M1\n    kind: best_above\n    statement: Some trial beats 60.\n"
                    "    threshold: 60\n  - id: F8b\n    statement: With cat, after beats before.\n"
                    "    within: {compose_method: cat}\n    knob: apply_softmax_to\n    a: after\n    b: before\n")
    return path


def check_plugin_outputs(out: Path) -> None:
    importance = pd.read_csv(out / "importance.csv")
    assert "spread_of_means" in set(importance["method"])
    spread = importance[importance["method"] == "spread_of_means"].set_index("factor")["importance"]
    assert spread["apply_softmax_to"] > 10  # the planted +15 for after
    findings = pd.read_csv(out / "findings.csv").set_index("id")
    assert findings.loc["M1", "kind"] == "best_above" and findings.loc["M1", "verdict"] == "supported"
    page = (out / "report.html").read_text()
    assert "spread_of_means" in page and "Some trial beats 60." in page


def test_plugin_importance_method_and_finding_kind_through_analyze(tmp_path, analysis_plugin):
    from routed_study.study.cli import main

    table = planted(120, seed=3)
    table["route_method"] = np.where(np.arange(len(table)) % 2, "flat_analysis", "sigmoid")
    table.to_csv(tmp_path / "t.csv", index=False)
    code = main(["analyze", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--plugins", analysis_plugin,
                 "--findings", str(plugin_findings(tmp_path)), "--methods", "forest,spread_of_means"])
    assert code == 0
    check_plugin_outputs(tmp_path / "out")
    assert set(pd.read_csv(tmp_path / "out" / "importance.csv")["method"]) == {"forest", "spread_of_means"}
    # The plugin's route method is analysed with its own declaration: untempered, so the
    # temperature is not applicable in its trials (and only there).
    from routed_study.analysis.encoding import NA, mark_not_applicable

    marks = mark_not_applicable(table, ["route_method", "temperature", "compose_method"])["temperature"]
    assert ((marks == NA) == (table["route_method"] == "flat_analysis")).all()


def test_plugins_named_in_a_study_spec_reach_analyze(tmp_path, analysis_plugin):
    import yaml

    from routed_study.study.cli import main
    from tests.test_spec import BASE

    study = fake_study(tmp_path / "study", n=60)
    (study / "study.yaml").write_text(yaml.safe_dump({**BASE, "plugins": [analysis_plugin]}, sort_keys=False))
    assert main(["analyze", str(study), "--out", str(tmp_path / "out"),
                 "--findings", str(plugin_findings(tmp_path))]) == 0
    check_plugin_outputs(tmp_path / "out")


def test_unknown_importance_method_is_one_line(tmp_path):
    planted(50).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(InputError, match=r"--methods: unknown importance method 'forrest'; allowed values: .*forest"):
        build_report(tmp_path / "t.csv", tmp_path / "out", methods=["forrest"])


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
