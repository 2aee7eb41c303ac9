"""Findings files: validation, and verdicts on tables with planted true and false claims."""

from __future__ import annotations

import pandas as pd
import pytest

from routed_study.analysis.encoding import KnobEncoder
from routed_study.analysis.findings import DEFAULT_FILE, evaluate_findings, load_findings
from routed_study.analysis.importance import TreeImportance
from tests.synthetic import planted_table
from routed_study.trainables.errors import InputError

PLANTED = """
findings:
  - id: true_claim
    statement: With cat, after beats before.
    within: {compose_method: cat}
    knob: apply_softmax_to
    a: after
    b: before
    expect: greater
  - id: false_claim
    statement: A higher learning rate is better.
    knob: learning_rate
    a: {min: 0.001}
    b: {max: 0.001}
    expect: greater
  - id: no_effect
    statement: prompt_position makes no difference.
    knob: prompt_position
    a: pre
    b: post
    expect: equal
    margin: 3.0
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
  - id: ranking
    kind: ranking
    statement: after ranks first, then the learning rate.
    factors: [apply_softmax_to=after, learning_rate]
"""


@pytest.fixture
def verdicts(tmp_path):
    path = tmp_path / "findings.yaml"
    path.write_text(PLANTED)
    frame = planted_table(600, seed=0, n_knobs=17).drop(columns="prompt_encoder")
    assert "prompt_position" in frame
    knobs = [c for c in frame.columns if c != "score"]
    encoder = KnobEncoder().fit(frame[knobs])
    tree = TreeImportance().fit(encoder.transform(frame[knobs]), frame["score"].to_numpy(), encoder.groups_)
    ranking = tree.feature_importances_.sort_values(ascending=False)
    return evaluate_findings(load_findings(path), frame, "score", knobs, feature_ranking=ranking,
                             groups=encoder.groups_, tree_cv_score=tree.cv_score_).set_index("id")


def test_planted_claims_get_the_right_verdicts(verdicts):
    assert verdicts.loc["true_claim", "verdict"] == "supported"
    row = verdicts.loc["true_claim"]
    assert 10 < row["ci_low"] < row["effect"] < row["ci_high"] < 20  # planted +15
    assert row["n_a"] > 20 and row["n_b"] > 20 and row["p_value"] < 1e-6 and row["rank_biserial"] > 0.5
    assert verdicts.loc["false_claim", "verdict"] == "contradicted"
    assert verdicts.loc["no_effect", "verdict"] == "supported"
    assert verdicts.loc["thin", "verdict"] == "inconclusive" and "too few trials" in verdicts.loc["thin", "reason"]
    assert verdicts.loc["never_varied", "verdict"] == "inconclusive"
    assert "never varied" in verdicts.loc["never_varied", "reason"]
    assert verdicts.loc["ranking", "verdict"] == "supported"


def test_ranking_of_a_tree_that_predicts_nothing_is_inconclusive(tmp_path):
    ranking = pd.Series({"apply_softmax_to=after": 0.6, "target_share": 0.3, "anneal_dir": 0.1})
    path = tmp_path / "ranking.yaml"
    path.write_text("findings:\n  - {id: F1, kind: ranking, statement: after ranks first,\n"
                    "     factors: [apply_softmax_to=after, target_share]}\n")
    claim = load_findings(path)
    groups = {"apply_softmax_to=after": "apply_softmax_to", "target_share": "target_share",
              "anneal_dir": "anneal_dir"}
    frame = pd.DataFrame({"score": [1.0, 2.0]})
    good = evaluate_findings(claim, frame, "score", [], feature_ranking=ranking, groups=groups, tree_cv_score=0.4)
    noise = evaluate_findings(claim, frame, "score", [], feature_ranking=ranking, groups=groups, tree_cv_score=-3.5)
    assert good.loc[0, "verdict"] == "supported"
    assert noise.loc[0, "verdict"] == "inconclusive" and "R^2 -3.50" in noise.loc[0, "reason"]


def test_shipped_findings_file_is_valid_and_covers_every_claim():
    ids = [f.id for f in load_findings(DEFAULT_FILE)]
    for n in range(1, 19):
        assert any(i == f"F{n}" or i.startswith(f"F{n}") and not i[len(f"F{n}"):].isdigit() for i in ids), n
    f8b = next(f for f in load_findings() if f.id == "F8b")
    assert (f8b.within, f8b.knob, f8b.a, f8b.b) == ({"compose_method": "cat"}, "apply_softmax_to", "after", "before")


@pytest.mark.parametrize("body,message", [
    ("nope: 1", "top-level key 'findings'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n", "finding 'x': missing key 'b'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n    b: 2\n    expect: bigger\n",
     "finding 'x': key 'expect' got 'bigger'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: 1\n    b: 2\n    withn: {}\n",
     "finding 'x': unknown key 'withn' \\(did you mean 'within'"),
    ("findings:\n  - id: x\n    statement: s\n    knob: k\n    a: {quantile: [0.5, 0.2]}\n    b: 2\n",
     "finding 'x': key 'a': 'quantile'"),
    ("findings:\n  - id: x\n    kind: guess\n    statement: s\n", "key 'kind' got 'guess'"),
    ("findings: [\n", "not valid YAML"),
])
def test_bad_findings_file_names_entry_and_key(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(InputError, match=message):
        load_findings(path)
