"""Planted-structure tests of the encoder and every registered importance method."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from routed_study.analysis.encoding import NA, KnobEncoder
from routed_study.analysis.importance import METHODS, BootstrapRanks, TreeImportance, PermutationImportance
from tests.synthetic import LR_THRESHOLD, planted_table
from routed_study.trainables.errors import InputError


def design(frame: pd.DataFrame):
    knobs = [c for c in frame.columns if c != "score"]
    encoder = KnobEncoder().fit(frame[knobs])
    return encoder, encoder.transform(frame[knobs]), frame["score"].to_numpy(float)


def test_encoder_names_kinds_and_not_applicable():
    frame = pd.DataFrame({
        "apply_softmax_to": ["after", "before", "after", "norm"],
        "add_target": [True, False, True, False],
        "target_share": [0.5, np.nan, "learned", np.nan],
        "learning_rate": [1e-3, 1e-2, 1e-4, 1e-3],
        "num_selected": [-1, 1, 2, -1],
        "private_prompts": [False, False, False, False],  # constant: left out
    })
    encoder = KnobEncoder().fit(frame)
    X = encoder.transform(frame)
    assert "apply_softmax_to=after" in X and X["apply_softmax_to=after"].tolist() == [1, 0, 1, 0]
    assert X["add_target"].tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(X["log10(learning_rate)"], [-3, -2, -4, -3])
    # target_share without add_target did not apply: NaN in the number, marked by an indicator.
    assert X["target_share"].isna().tolist() == [False, True, True, True]
    assert X[f"target_share={NA}"].tolist() == [0, 1, 0, 1]
    assert X["target_share=learned"].tolist() == [0, 0, 1, 0]
    assert X["num_selected=-1"].tolist() == [1, 0, 0, 1]
    assert encoder.constant_knobs_ == ["private_prompts"]
    assert set(encoder.groups_.values()) == {"apply_softmax_to", "add_target", "target_share",
                                             "learning_rate", "num_selected"}


@pytest.mark.parametrize("n,seed", [(300, 0), (600, 1), (1500, 2)])
def test_grouped_permutation_ranks_planted_factors_above_noise(n, seed):
    encoder, X, y = design(planted_table(n, seed=seed))
    imp = PermutationImportance(random_state=seed).fit(X, y, encoder.groups_).factor_importances_
    ranking = imp["importance"].sort_values(ascending=False).index.tolist()
    assert set(ranking[:2]) == {"apply_softmax_to", "learning_rate"}
    # The interaction enters through source_order=asc (n/a under wavg) or compose_method.
    assert {"source_order", "compose_method"} & set(ranking[2:4])
    assert ranking.index("noise_knob") >= 4
    assert imp.loc["noise_knob", "importance"] < 0.1 * imp.loc["apply_softmax_to", "importance"]


@pytest.mark.parametrize("seed", [0, 1])
def test_tree_recovers_planted_threshold(seed):
    encoder, X, y = design(planted_table(800, seed=seed))
    tree = TreeImportance().fit(X, y, encoder.groups_)
    splits = [float(v) for v in re.findall(r"log10\(learning_rate\) <= (-?[\d.]+)", tree.rules_)]
    assert splits and min(abs(s - np.log10(LR_THRESHOLD)) for s in splits) < 0.1
    assert tree.cv_score_ > 0.8 and tree.best_depth_ >= 2


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_puts_a_planted_factor_first(name):
    frame = planted_table(400, seed=3)
    encoder, X, y = design(frame)
    method = METHODS[name](random_state=0)
    method.fit(frame.drop(columns="score") if method.input == "raw" else X, y, encoder.groups_)
    imp = method.factor_importances_["importance"].sort_values(ascending=False)
    assert imp.index[0] in {"apply_softmax_to", "learning_rate"}
    assert "noise_knob" not in imp.index[:2]  # the Optuna methods may leave a 40-level knob out
    assert method.n_trials_ <= 400


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_refuses_too_few_trials(name):
    frame = planted_table(6, seed=0)
    encoder, X, y = design(frame)
    method = METHODS[name]()
    with pytest.raises(InputError, match="needs at least"):
        method.fit(frame.drop(columns="score") if method.input == "raw" else X, y, encoder.groups_)


def test_bootstrap_ranks_are_stable_for_a_dominant_factor_and_use_repeats():
    frame = planted_table(300, seed=4)
    frame = pd.concat([frame, frame.assign(score=frame["score"] + np.random.default_rng(0).normal(0, 1, 300))])
    encoder, X, y = design(frame)
    configs = frame.drop(columns="score").astype(str).agg("|".join, axis=1)
    boot = BootstrapRanks(depth=4, n_boot=30).fit(X, y, encoder.groups_, clusters=configs)
    assert boot.has_repeats_
    first = boot.ranks_.loc["apply_softmax_to"]
    assert first["rank_low"] == first["rank_high"] == 1 and first["p_first"] == 1
    assert boot.ranks_.loc["noise_knob", "rank_low"] > 2
