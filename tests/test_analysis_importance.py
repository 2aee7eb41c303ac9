"""The encoder (not-applicable marks from the knob table) and every registered importance method:
planted structure, the per-knob null reference calibrated over simulated studies, interactions."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from routed_study.analysis.encoding import NA, KnobEncoder, mark_not_applicable
from routed_study.analysis.importance import (CANNOT_TELL, DOES_NOT, MATTERS, METHODS, Design, ForestImportance,
                                             TreeRegressorImportance)
from routed_study.analysis.interactions import pair_strengths
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import inert_knobs
from tests.synthetic import LR_THRESHOLD, planted_table


def planted(n: int, seed: int = 0, **kw) -> pd.DataFrame:
    # Two of several sources selected: apply_softmax_to applies (with all kept, before = after).
    return planted_table(n, seed=seed, **kw).assign(num_selected=2)


def design(frame: pd.DataFrame, clusters=None) -> Design:
    knobs = [c for c in frame.columns if c not in ("score", "seed")]
    return Design.from_frame(frame, knobs, frame["score"], clusters)


def test_encoder_one_column_per_two_level_knob_and_no_na_indicator():
    frame = pd.DataFrame({
        "apply_softmax_to": ["after", "before", "after", "norm"],
        "compose_method": ["cat", "wavg", "cat", "cat"],
        "add_target": [True, False, True, True],
        "target_share": [0.5, np.nan, "learned", 0.25],
        "learning_rate": [1e-3, 1e-2, 1e-4, 1e-3],
        "num_selected": [-1, 1, 2, 1],
        "private_prompts": [False, False, False, False],  # constant: left out
    })
    encoder = KnobEncoder().fit(frame)
    X = encoder.transform(frame)
    assert "compose_method=cat" in X and not any(c.startswith("compose_method=wavg") for c in X)
    assert X["compose_method=cat"].tolist() == [1, 0, 1, 1]
    assert X["add_target"].tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(X["log10(learning_rate)"], [-3, -2, -4, -3])
    assert not any(c.endswith(f"={NA}") for c in X)
    # target_share without add_target does not apply: NaN in all its columns, no indicator copying add_target.
    assert X["target_share"].isna().tolist() == [False, True, True, False]
    assert X["target_share=learned"].isna().tolist() == [False, True, False, False]
    # apply_softmax_to with every candidate kept (num_selected=-1) is inert.
    assert X["apply_softmax_to=after"].isna().tolist() == [True, False, False, False]
    assert encoder.constant_knobs_ == ["private_prompts"]


@pytest.mark.parametrize("context, inert", [
    ({"add_target": True, "target_share": 1.0}, {"route_method", "compose_method", "num_selected", "temperature",
                                                 "anneal_dir", "apply_softmax_to", "source_order"}),
    ({"route_method": "const"}, {"temperature", "anneal_dir"}),
    ({"compose_method": "concat", "num_selected": 2}, {"apply_softmax_to", "temperature"}),
    ({"compose_method": "cat", "num_selected": 1}, {"source_order"}),
])
def test_inert_knobs_marked_from_the_knob_table(context, inert):
    knobs = ["route_method", "compose_method", "num_selected", "temperature", "anneal_dir", "apply_softmax_to",
             "source_order", "learning_rate"]
    row = {"route_method": "rb", "compose_method": "cat", "num_selected": 2, "temperature": 1.0, "anneal_dir": 1,
           "apply_softmax_to": "after", "source_order": "asc", "learning_rate": 1e-3, **context}
    frame = pd.DataFrame([row, {**row, "learning_rate": 1e-2}])
    marked = mark_not_applicable(frame, list(frame.columns))
    got = {k for k in knobs if k in marked and marked.loc[0, k] == NA}
    assert inert <= got  # the rules of issue 9 ...
    assert got == set(inert_knobs(row)) & set(knobs)  # ... read from the knob table's one declaration
    assert marked.loc[0, "learning_rate"] != NA


def test_marks_agree_with_inert_knobs_row_by_row():
    frame = planted_table(400, seed=9, n_knobs=25)
    rng = np.random.default_rng(0)
    frame["add_target"] = rng.choice([True, False], len(frame))
    frame["target_share"] = [rng.choice([0.5, 1.0]) if a else np.nan for a in frame["add_target"]]
    knobs = [c for c in frame.columns if c not in ("score", "noise_knob")]
    marked = mark_not_applicable(frame, knobs)
    for i in range(0, len(frame), 7):
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in frame.iloc[i][knobs].items()
                  if not (isinstance(v, float) and np.isnan(v))}
        assert {k for k in knobs if marked.iloc[i][k] == NA} == set(inert_knobs(values)) & set(knobs)


@pytest.mark.parametrize("n,seed", [(300, 0), (600, 1)])
def test_forest_finds_planted_factors_and_clears_noise(n, seed):
    forest = ForestImportance(random_state=seed).fit(design(planted(n, seed=seed)))
    imp = forest.factor_importances_
    ranking = imp["importance"].sort_values(ascending=False).index.tolist()
    assert set(ranking[:2]) == {"apply_softmax_to", "learning_rate"}
    assert {"source_order", "compose_method"} & set(ranking[2:4])
    assert imp.loc["apply_softmax_to", "verdict"] == imp.loc["learning_rate", "verdict"] == MATTERS
    assert imp.loc["noise_knob", "verdict"] in (DOES_NOT, CANNOT_TELL)
    assert forest.cv_score_ > 0.8 and forest.cv_p_ < 1e-6
    assert forest.draws_.shape == (forest.n_boot, len(imp))


def null_study(seed: int, n_configs: int = 100, seeds: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """No knob changes the score: a configuration effect (sd 3) plus seed noise (sd 3)."""
    rng = np.random.default_rng(seed)
    configs = planted(n_configs, seed=seed).drop(columns="score")
    effect = rng.normal(0, 3, n_configs)
    frame = configs.loc[configs.index.repeat(seeds)].reset_index(drop=True)
    clusters = np.repeat(np.arange(n_configs), seeds)
    frame["score"] = 60 + effect[clusters] + rng.normal(0, 3, len(frame))
    return frame, clusters


@pytest.mark.slow
def test_null_reference_calibrated_over_null_studies():
    """Over 20 null studies with repeats: at most 5 % of knob verdicts say 'matters', and the
    surrogate's held-out gate (grouped by configuration) passes in at most 10 % of them."""
    verdicts, gates = [], []
    for seed in range(20):
        frame, clusters = null_study(seed)
        forest = ForestImportance(random_state=seed).fit(design(frame, clusters))
        verdicts += forest.factor_importances_["verdict"].tolist()
        gates.append(forest.cv_p_ < 0.05)
    print({"matters": verdicts.count(MATTERS) / len(verdicts), "gate": np.mean(gates)})
    assert verdicts.count(MATTERS) / len(verdicts) <= 0.05
    assert np.mean(gates) <= 0.1


def test_grouped_folds_do_not_pass_the_gate_on_configuration_noise():
    frame, clusters = null_study(3)
    forest = ForestImportance().fit(design(frame, clusters))
    assert forest.cv_p_ > 0.05 and forest.cv_score_ < 0.1
    assert (forest.factor_importances_["verdict"] != MATTERS).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_tree_recovers_planted_threshold(seed):
    tree = TreeRegressorImportance().fit(design(planted(800, seed=seed)))
    splits = [float(v) for v in re.findall(r"log10\(learning_rate\) <= (-?[\d.]+)", tree.rules_)]
    assert splits and min(abs(s - np.log10(LR_THRESHOLD)) for s in splits) < 0.1
    assert tree.cv_score_ > 0.8 and tree.best_depth_ >= 2


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_puts_a_planted_factor_first(name):
    method = METHODS[name](random_state=0).fit(design(planted(400, seed=3)))
    imp = method.factor_importances_["importance"].sort_values(ascending=False)
    assert imp.index[0] in {"apply_softmax_to", "learning_rate"}
    assert "noise_knob" not in imp.index[:2]  # the Optuna methods may leave a 40-level knob out
    assert method.n_trials_ <= 400


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_refuses_too_few_trials(name):
    with pytest.raises(InputError, match="needs at least"):
        METHODS[name]().fit(design(planted(6, seed=0)))


def test_planted_interaction_is_stronger_than_an_additive_pair():
    # F8's pair interacts (after helps only with cat); learning rate and encoder act additively.
    rng = np.random.default_rng(4)
    n = 600
    frame = pd.DataFrame({"compose_method": rng.choice(["wavg", "cat"], n),
                          "apply_softmax_to": rng.choice(["before", "after", "norm"], n),
                          "learning_rate": 10 ** rng.uniform(-5, -1, n),
                          "prompt_encoder": rng.choice(["emb", "mlp"], n), "num_selected": 2})
    frame["score"] = (60 + 8 * ((frame["compose_method"] == "cat") & (frame["apply_softmax_to"] == "after"))
                      + 6 * (frame["learning_rate"] < 1e-3) + 5 * (frame["prompt_encoder"] == "mlp")
                      + rng.normal(0, 2, n))
    d = design(frame)
    forest = ForestImportance(random_state=0).fit(d)
    h = pair_strengths(forest, d, [("planted", "compose_method", "apply_softmax_to"),
                                   ("additive", "learning_rate", "prompt_encoder")]).set_index("claim")
    assert h.loc["planted", "low"] > h.loc["additive", "high"]
    assert h.loc["planted", "h"] > 0.3 and h.loc["additive", "h"] < 0.2
