"""Findings: the kind registry, file validation, and verdicts on tables with planted structure.

Error rates over many simulated studies are checked in tests/test_calibration_claims.py; the
tests here pin single mechanisms (adjustment, nesting, failures, repeats, router matrices).
"""

from __future__ import annotations

import json
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from routed_study.analysis.findings import (DEFAULT_FILE, KINDS, VERDICT_COLUMNS, Entry, Evidence, FindingKind,
                                            evaluate_findings, judge, load_findings, register_kind)
from routed_study.analysis.loading import TrialTable, history_column, load_trials
from routed_study.analysis.routing import router_asymmetry
from routed_study.trainables.errors import InputError
from routed_study.trainables.results import REPEAT_INDEX_KEY, ROUTER_CSV
from tests.synthetic import EFFECT_AFTER, planted_table


def _entries(tmp_path, body: str):
    path = tmp_path / "findings.yaml"
    path.write_text("findings:\n" + body)
    return load_findings(path)


def _evidence(frame: pd.DataFrame, target: str = "score", **kwargs) -> Evidence:
    frame = frame.copy()
    if "status" not in frame:
        frame["status"] = "ok"
    knobs = [c for c in frame.columns if c not in (target, "status", "seed", "trial_id", "trial_dir")
             and "@" not in c]
    return Evidence.from_table(TrialTable(frame=frame, knobs=knobs, target=target, source="test"), **kwargs)


PLANTED = """
  - id: true_claim
    statement: With cat, after beats before.
    within: {compose_method: cat}
    knob: apply_softmax_to
    a: after
    b: before
  - id: false_claim
    statement: A higher learning rate is better.
    knob: learning_rate
    a: {min: 0.001}
    b: {max: 0.001}
  - id: no_effect
    statement: source_order desc and rand are alike (to within the noise SD of 2).
    knob: source_order
    a: desc
    b: rand
    expect: equal
    margin: 2.0
  - id: thin
    statement: Within the lowest 2% of rates with cat and asc, after beats norm.
    within: {learning_rate: {quantile: [0.0, 0.02]}, compose_method: cat, source_order: asc}
    knob: apply_softmax_to
    a: after
    b: norm
  - id: never_varied
    statement: mlp beats emb.
    knob: prompt_encoder
    a: mlp
    b: emb
"""


def test_planted_claims_get_the_right_verdicts(tmp_path):
    frame = planted_table(600, seed=0, n_knobs=12).drop(columns="prompt_encoder").assign(num_selected=2)
    v = evaluate_findings(_entries(tmp_path, PLANTED), _evidence(frame)).set_index("id")
    assert list(v.reset_index().columns) == VERDICT_COLUMNS
    row = v.loc["true_claim"]
    assert row["verdict"] == "supported" and row["decided_by"] == "difference"
    assert row["ci_low"] < EFFECT_AFTER < row["ci_high"] and row["ci_high"] - row["ci_low"] < 3
    assert row["p_adjusted"] < 1e-6 and row["view"] == "final" and row["n_seeds"] == 1
    assert v.loc["false_claim", "verdict"] == "contradicted" and v.loc["false_claim", "effect"] < -8
    assert v.loc["no_effect", "verdict"] == "supported" and v.loc["no_effect", "decided_by"] == "equivalence"
    assert v.loc["thin", "verdict"] == "inconclusive" and "too few configurations" in v.loc["thin", "reason"]
    assert v.loc["never_varied", "verdict"] == "inconclusive" and "never varied" in v.loc["never_varied", "reason"]


def test_effects_are_adjusted_for_knobs_that_the_searcher_moved_together(tmp_path):
    # A searcher that drifted: 'b_knob' follows 'a_knob' 90 % of the time; only a_knob matters.
    rng = np.random.default_rng(0)
    a = rng.choice(["x", "y"], 400)
    b = np.where(rng.random(400) < 0.9, a, rng.choice(["x", "y"], 400))
    frame = pd.DataFrame({"a_knob": a, "b_knob": b, "weight_decay": rng.uniform(0, 0.1, 400),
                          "score": 50 + 6.0 * (a == "y") + rng.normal(0, 2, 400)})
    raw_difference = frame.groupby("b_knob")["score"].mean().diff().iloc[-1]
    assert raw_difference > 4  # what a difference of group means would report
    entries = _entries(tmp_path, "  - {id: b, statement: y beats x, knob: b_knob, a: y, b: x}\n"
                                 "  - {id: a, statement: y beats x, knob: a_knob, a: y, b: x}\n")
    v = evaluate_findings(entries, _evidence(frame)).set_index("id")
    se = (v["ci_high"] - v["ci_low"]) / (2 * 1.966)
    assert v.loc["a", "verdict"] == "supported" and abs(v.loc["a", "effect"] - 6) < 3.5 * se["a"]
    assert abs(v.loc["b", "effect"]) < 3.5 * se["b"] < raw_difference / 2 and v.loc["b", "verdict"] != "supported"


def test_a_knob_that_applies_on_one_side_only_does_not_take_its_parents_effect(tmp_path):
    # target_share is n/a without add_target: its n/a mark must not copy add_target's column.
    rng = np.random.default_rng(2)
    add = rng.random(500) < 0.5
    share = np.where(add, rng.choice([0.25, 0.5, 0.75], 500), np.nan)
    frame = pd.DataFrame({"add_target": add, "target_share": share, "weight_decay": rng.uniform(0, 0.1, 500),
                          "score": 60 + 5.0 * add + rng.normal(0, 2, 500)})
    entries = _entries(tmp_path, "  - {id: add, statement: s, knob: add_target, a: true, b: false}\n"
                                 "  - {id: share, statement: s, knob: target_share, a: 0.25, b: 0.75,\n"
                                 "     within: {add_target: true}, expect: equal, margin: 1.5}\n")
    v = evaluate_findings(entries, _evidence(frame)).set_index("id")
    assert v.loc["add", "verdict"] == "supported" and v.loc["add", "ci_low"] < 5 < v.loc["add", "ci_high"]
    assert "averaged over target_share" in v.loc["add", "treatment"]
    assert v.loc["share", "verdict"] == "supported" and abs(v.loc["share", "effect"]) < 1


def test_repeats_are_one_configuration_and_seed_noise_is_judged(tmp_path):
    # 40 configurations x 3 seeds, a configuration effect of SD 2 and seed noise of SD 3.
    rng = np.random.default_rng(3)
    knob = np.repeat(rng.choice(["x", "y"], 40), 3)
    lr = np.repeat(10 ** rng.uniform(-4, -2, 40), 3)
    score = 50 + np.repeat(rng.normal(0, 2, 40), 3) + rng.normal(0, 3, 120)
    frame = pd.DataFrame({"k": knob, "learning_rate": lr, "seed": np.tile([0, 1, 2], 40), "score": score})
    entries = _entries(tmp_path, "  - {id: k, statement: s, knob: k, a: y, b: x}\n"
                                 "  - {id: noise, statement: s, kind: seed_noise}\n")
    v = evaluate_findings(entries, _evidence(frame)).set_index("id")
    assert v.loc["k", "n_configs"] == 40 and v.loc["k", "n_seeds"] == 3  # not 120 independent trials
    assert v.loc["noise", "verdict"] == "supported"
    assert v.loc["noise", "ci_low"] < 9 / 13 < v.loc["noise", "ci_high"]  # seed share 9 / (9 + 4)
    # Seeds that agree to within 0.1 points: repeats are not needed.
    frame["score"] = 50 + np.repeat(rng.normal(0, 5, 40), 3) + rng.normal(0, 0.1, 120)
    v = evaluate_findings(entries, _evidence(frame)).set_index("id")
    assert v.loc["noise", "verdict"] == "contradicted" and v.loc["noise", "ci_high"] < 0.1
    single = frame.drop_duplicates("learning_rate").drop(columns="seed")
    v = evaluate_findings(entries, _evidence(single)).set_index("id")
    assert v.loc["noise", "verdict"] == "inconclusive" and "repeated" in v.loc["noise", "reason"]


def test_diverged_trials_are_failures(tmp_path):
    # 'risky' diverges in 40 % of its trials; where it runs it scores like 'safe'.
    rng = np.random.default_rng(4)
    k = rng.choice(["risky", "safe"], 300)
    score = 60 + rng.normal(0, 2, 300)
    status = np.where((k == "risky") & (rng.random(300) < 0.4), "error", "ok")
    frame = pd.DataFrame({"k": k, "weight_decay": rng.uniform(0, 0.1, 300),
                          "score": np.where(status == "error", np.nan, score), "status": status})
    entries = _entries(tmp_path, "  - {id: better, statement: s, knob: k, a: risky, b: safe}\n"
                                 "  - {id: same, statement: s, knob: k, a: risky, b: safe, expect: equal, margin: 1}\n")
    v = evaluate_findings(entries, _evidence(frame)).set_index("id")
    assert v.loc["better", "p_failure"] < 1e-6 and v.loc["better", "fail_a"] > 40 and v.loc["better", "fail_b"] == 0
    assert v.loc["better", "verdict"] == "contradicted" and "worst rank" in v.loc["better", "treatment"]
    assert v.loc["same", "verdict"] == "supported" and "left out" in v.loc["same", "treatment"]


def test_inconclusive_claims_say_how_many_more_configurations_would_decide_them(tmp_path):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"k": rng.choice(["x", "y"], 30), "weight_decay": rng.uniform(0, 0.1, 30)})
    frame["score"] = 50 + 1.0 * (frame["k"] == "y") + rng.normal(0, 3, 30)
    entries = _entries(tmp_path, "  - {id: k, statement: s, knob: k, a: y, b: x}\n")
    row = evaluate_findings(entries, _evidence(frame)).iloc[0]
    assert row["verdict"] == "inconclusive"
    # At the observed effect and spread, the standard error shrinks as 1/sqrt(configurations).
    se = (row["ci_high"] - row["ci_low"]) / 2 / 2.05
    expected = 30 * ((1.96 + 0.8416) * se / abs(row["effect"])) ** 2 - 30
    assert row["configs_needed"] >= 1 and abs(row["configs_needed"] - expected) <= max(3, 0.15 * expected)
    assert row["trials_needed"] == row["configs_needed"] * row["n_seeds"]


def test_corrections_are_benjamini_hochberg_across_the_claims(tmp_path):
    # Three of these are below 0.05 alone, none of them after the correction.
    p_values = {"one": 0.001, "two": 0.021, "three": 0.035, "four": 0.045, "five": 0.3}

    class FixedEntry(Entry):
        kind: Literal["fixed_p"]
        value: float

    @register_kind
    class FixedP(FindingKind):
        name: ClassVar[str] = "fixed_p"
        Entry: ClassVar = FixedEntry
        family: ClassVar[str] = "claims"

        def evaluate(self, entry, evidence):
            return {"verdict": "supported", "p_value": entry.value, "reason": "fixed"}

    try:
        body = "".join(f"  - {{id: {k}, statement: s, kind: fixed_p, value: {p}}}\n" for k, p in p_values.items())
        v = evaluate_findings(_entries(tmp_path, body), _evidence(pd.DataFrame({"k": [1, 2], "score": [1.0, 2.0]})))
        expected = multipletests(list(p_values.values()), method="fdr_bh")[1]
        assert np.allclose(v["p_adjusted"], expected)
        assert list(v["verdict"]) == ["supported" if p < 0.05 else "inconclusive" for p in expected]
        assert list(v["verdict"]) == ["supported"] + ["inconclusive"] * 4
        assert "Benjamini-Hochberg" in v.loc[v["verdict"] == "inconclusive", "reason"].iloc[0]
    finally:
        KINDS.pop("fixed_p")


def test_a_kind_that_returns_unknown_columns_is_a_bug(tmp_path):
    class OddEntry(Entry):
        kind: Literal["odd"]

    @register_kind
    class Odd(FindingKind):
        name: ClassVar[str] = "odd"
        Entry: ClassVar = OddEntry
        family: ClassVar[str] = "claims"

        def evaluate(self, entry, evidence):
            return {"verdict": "supported", "colour": "red"}

    try:
        with pytest.raises(ValueError, match="colour"):
            evaluate_findings(_entries(tmp_path, "  - {id: x, statement: s, kind: odd}\n"),
                              _evidence(pd.DataFrame({"k": [1, 2], "score": [1.0, 2.0]})))
    finally:
        KINDS.pop("odd")


def test_mode_min_signs_the_target_and_its_history():
    frame = pd.DataFrame({"k": ["x", "y"], "loss": [1.0, 2.0], history_column("loss", 1): [3.0, 4.0]})
    ev = _evidence(frame, target="loss", mode="min")
    assert list(ev.frame["loss"]) == [-1.0, -2.0] and list(ev.frame["loss@1"]) == [-3.0, -4.0]


def _router_trial(path, matrix: np.ndarray, tasks, sources="tasks", labels=None):
    path.mkdir(parents=True)
    pd.DataFrame(matrix, index=pd.Index(tasks, name="task"), columns=labels or list(tasks)).to_csv(path / ROUTER_CSV)
    return {"trial_dir": str(path), "sources": sources, "trial_id": path.name}


def test_router_asymmetry_is_judged_against_a_permutation_null(tmp_path):
    tasks = ["cola", "mrpc", "stsb", "rte"]
    rng = np.random.default_rng(6)
    directional = np.array([[0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]], float)  # cola->mrpc, rte->stsb
    symmetric = directional + directional.T
    entries = _entries(tmp_path, "  - {id: F17, statement: s, kind: router_asymmetry}\n")
    verdicts = {}
    for name, truth in (("directional", directional), ("symmetric", symmetric)):
        rows = [_router_trial(tmp_path / name / f"t{i}", truth + rng.normal(0, 0.3, (4, 4)), tasks)
                for i in range(12)]
        frame = pd.DataFrame(rows).assign(lr=np.arange(12.0), score=rng.normal(50, 1, 12))
        verdicts[name] = evaluate_findings(entries, _evidence(frame)).iloc[0]
        per_trial = router_asymmetry(frame)
        assert per_trial["usable"].all() and per_trial["asymmetry"].between(0, 1).all()
    # The directional truth, centred, puts 0.6 of its square norm in its antisymmetric part.
    assert verdicts["directional"]["verdict"] == "supported"
    assert verdicts["directional"]["ci_low"] < 0.6 < verdicts["directional"]["ci_high"]
    assert verdicts["symmetric"]["verdict"] == "contradicted" and verdicts["symmetric"]["ci_high"] < 0.1
    anonymous = pd.DataFrame([_router_trial(tmp_path / "anon" / f"t{i}", directional, tasks, "anonymous",
                                            [f"source_{j}" for j in range(4)]) for i in range(4)])
    row = evaluate_findings(entries, _evidence(anonymous.assign(lr=np.arange(4.0), score=1.0))).iloc[0]
    assert row["verdict"] == "inconclusive" and "task-owned" in row["reason"]


def test_study_dir_keeps_each_trials_history_and_marks_early_stops(tmp_path):
    for i, (epochs_done, planned) in enumerate([(3, 3), (1, 3), (2, 3)]):
        trial = tmp_path / f"trial_{i}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps({"epochs": planned, "learning_rate": 10.0 ** -i,
                                                       "seed": 7, REPEAT_INDEX_KEY: i}))
        (trial / "result.json").write_text("\n".join(json.dumps({"epoch": e, "training_iteration": e,
                                                                 "score": 10.0 * e + i})
                                                     for e in range(1, epochs_done + 1)))
    frame = load_trials(tmp_path).frame.sort_values("trial_id")
    assert list(frame["status"]) == ["ok", "early_stopped", "early_stopped"]
    assert list(frame["score@1"]) == [10.0, 11.0, 12.0] and frame["score@3"].isna().tolist() == [False, True, True]
    assert list(frame["seed"]) == [7.0, 8.0, 9.0]


def test_csv_without_status_infers_early_stops_from_epochs(tmp_path):
    path = tmp_path / "trials.csv"
    pd.DataFrame({"config/epochs": [4, 4, 4], "config/lr": [0.1, 0.2, 0.3], "epoch": [4, 1, np.nan],
                  "status": [np.nan, np.nan, "error"], "score": [70.0, 40.0, np.nan],
                  "score@1": [50.0, 40.0, np.nan], "score@4": [70.0, np.nan, np.nan]}).to_csv(path, index=False)
    table = load_trials(path)
    assert list(table.frame["status"]) == ["ok", "early_stopped", "error"]
    assert table.knobs == ["epochs", "lr"]  # history columns are metrics, never knobs


def test_judge_validates_the_findings_before_reading_trials(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("findings:\n  - {id: x, statement: s, kind: compar}\n")
    with pytest.raises(InputError, match=r"key 'kind' got 'compar' \(did you mean 'compare'\?\); allowed values: "
                                         r"'compare'.*'seed_noise'"):
        judge(tmp_path / "missing.csv", findings=bad)


def test_the_ranking_kind_asks_the_ranking_judge(tmp_path, monkeypatch):
    ranking = pytest.importorskip("routed_study.analysis.ranking")
    seen = {}
    monkeypatch.setattr(ranking, "judge_ranking", lambda factors, evidence: seen.setdefault(
        "call", {"verdict": "inconclusive", "reason": f"asked about {factors}"}))
    entries = _entries(tmp_path, "  - {id: F1, kind: ranking, statement: s, factors: [a=b, c]}\n")
    row = evaluate_findings(entries, _evidence(pd.DataFrame({"k": [1, 2], "score": [1.0, 2.0]}))).iloc[0]
    assert row["reason"] == "asked about ('a=b', 'c')"


def test_shipped_findings_file_is_valid_and_covers_every_claim():
    entries = load_findings(DEFAULT_FILE)
    ids = [f.id for f in entries]
    for n in range(1, 19):
        assert any(i == f"F{n}" or i.startswith(f"F{n}") and not i[len(f"F{n}"):].isdigit() for i in ids), n
    by_id = {e.id: e for e in entries}
    f8b = by_id["F8b"]
    assert (f8b.within, f8b.knob, f8b.a, f8b.b, f8b.margin) == ({"compose_method": "cat"}, "apply_softmax_to",
                                                                 "after", "before", None)
    assert (by_id["F17"].kind, by_id["F18"].kind) == ("router_asymmetry", "seed_noise")


@pytest.mark.parametrize("body,message", [
    ("nope: 1", "top-level key 'findings'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n", "finding 'x': missing key 'b'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n    b: 2\n    expect: bigger\n",
     "finding 'x': key 'expect' got 'bigger'; allowed values: 'greater', 'less' or 'equal'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n    b: 2\n    withn: {}\n",
     "finding 'x': unknown key 'withn' \\(did you mean 'within'\\?\\) for kind 'compare'; allowed keys: id, "),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: {quantile: [0.5, 0.2]}\n    b: 2\n",
     "finding 'x': key 'a': 'quantile' must be"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n    b: 2\n    margin: -1\n",
     "finding 'x': key 'margin'"),
    ("findings:\n  - id: x\n    kind: guess\n    statement: s\n",
     "key 'kind' got 'guess'; allowed values: 'compare', 'ranking', 'untestable'"),
    ("findings:\n  - id: x\n    statement: s\n    kind: untestable\n    reason: r\n  - id: x\n    statement: s\n"
     "    kind: untestable\n    reason: r\n", "finding 'x': duplicate id"),
    ("findings: [\n", "not valid YAML"),
])
def test_bad_findings_file_names_entry_and_key(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(InputError, match=message):
        load_findings(path)
