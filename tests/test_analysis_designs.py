"""The analysis of designed studies (analysis/designs.py), checked by calibration: many simulated
pairs studies under the null and with planted effects (false verdicts, power), elementary effects
of a screening study on a known function, and which design a table came from."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from routed_study.analysis.designs import (CLAIM_COLUMNS, design_of, elementary_effects, paired_claim,
                                           paired_claims)
from routed_study.search_spaces import get_space
from routed_study.study.designs import Screening, _scale
from routed_study.trainables.errors import InputError
from routed_study.trainables.results import (DESIGN_BASE_KEY, DESIGN_FLIP_KEY, DESIGN_KEY, DESIGN_POINT_KEY,
                                             DESIGN_SIDE_KEY)
from tests.design_simulator import design_frame

SIMULATIONS = 300


def claim(expect: str = "greater", margin: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(id="X1", statement="a claim", kind="compare", expect=expect, margin=margin)


def pairs_study(rng, bases: int, seeds: int, effect: float, diff_sd: float, base_sd: float = 10.0) -> pd.DataFrame:
    """A pairs study of one claim: each base (its own level, sd ``base_sd``) runs on one side and its
    flip on the other, ``seeds`` seeds each; a pair's difference is ``effect`` plus noise of sd ``diff_sd``."""
    rows = []
    for base in range(bases):
        level = rng.normal(0, 1)
        flip_side = "a" if rng.random() < 0.5 else "b"
        for s in range(seeds):
            seed = base * seeds + s
            noise = rng.normal(0, diff_sd / np.sqrt(2), 2)
            y_base = 60 + base_sd * level + noise[0]
            y_flip = y_base - noise[0] + noise[1] + (effect if flip_side == "a" else -effect)
            common = {DESIGN_KEY: "pairs", DESIGN_BASE_KEY: base, "seed": seed}
            rows.append({**common, DESIGN_POINT_KEY: 2 * base, DESIGN_FLIP_KEY: "", DESIGN_SIDE_KEY: "base",
                         "score": y_base})
            rows.append({**common, DESIGN_POINT_KEY: 2 * base + 1, DESIGN_FLIP_KEY: "X1",
                         DESIGN_SIDE_KEY: flip_side, "score": y_flip})
    return pd.DataFrame(rows)


def verdicts(finding, seed: int = 0, **study) -> list[str]:
    rng = np.random.default_rng(seed)
    boot = np.random.default_rng(seed + 1)
    return [paired_claim(finding, pairs_study(rng, **study), "score", n_boot=500, rng=boot)["verdict"]
            for _ in range(SIMULATIONS)]


def rate(found: list[str], verdict: str) -> float:
    return found.count(verdict) / len(found)


def test_no_effect_is_rarely_called_an_effect():
    """Null: a greater-claim with no effect, 8 bases x 2 seeds: false 'supported' near alpha / 2."""
    found = verdicts(claim("greater"), bases=8, seeds=2, effect=0.0, diff_sd=2.0)
    assert rate(found, "supported") <= 0.05, rate(found, "supported")


def test_a_planted_effect_is_found():
    found = verdicts(claim("greater"), bases=12, seeds=2, effect=2.0, diff_sd=2.0)
    assert rate(found, "supported") >= 0.8 and rate(found, "contradicted") == 0


def test_equality_at_the_margin_is_rarely_called_equal():
    """Null for an equality claim: the true difference sits on the margin; 'supported' would be false."""
    found = verdicts(claim("equal", margin=1.0), bases=20, seeds=1, effect=1.0, diff_sd=1.5)
    assert rate(found, "supported") <= 0.05, rate(found, "supported")
    found = verdicts(claim("equal", margin=1.0), bases=20, seeds=2, effect=0.0, diff_sd=1.0)
    assert rate(found, "supported") >= 0.8


def test_the_bases_own_levels_cancel_in_pairs():
    """Identical verdicts whatever the spread of the bases: the paired difference does not hold it."""
    calm = verdicts(claim(), seed=5, bases=8, seeds=2, effect=1.0, diff_sd=2.0, base_sd=0.0)
    wild = verdicts(claim(), seed=5, bases=8, seeds=2, effect=1.0, diff_sd=2.0, base_sd=50.0)
    assert calm == wild


def test_claim_rows_have_the_claims_columns_and_count_bases_and_seeds():
    study = pairs_study(np.random.default_rng(0), bases=6, seeds=3, effect=2.0, diff_sd=1.0)
    rows = paired_claims(study, [claim()], "score")
    assert list(rows.columns) == CLAIM_COLUMNS
    row = rows.iloc[0]
    assert (row["n_configs"], row["n_seeds"]) == (6, 18) and row["ci_low"] < 2.0 < row["ci_high"]
    few = paired_claims(study[study[DESIGN_BASE_KEY] < 3], [claim()], "score")
    assert few.iloc[0]["verdict"] == "inconclusive" and "too few complete pairs" in few.iloc[0]["reason"]


def test_elementary_effects_of_a_known_function():
    """y = 3 u(learning_rate) + 1.5 u(temperature) + noise on the core space: mu* ranks them, its
    intervals hold the true slopes, the knobs without effect come out near 0."""
    space = get_space("core")
    design = Screening(SimpleNamespace(seed=1, trajectories=12, levels=4), space, repeats=2)
    frame = design_frame(design.points())
    frame = pd.concat([frame.assign(seed=frame["seed"] + r) for r in range(2)], ignore_index=True)
    unit = {k: frame[k].map(lambda v, d=space.parameters()[k].distribution: _scale(d)[0](v))
            for k in ("learning_rate", "temperature")}
    rng = np.random.default_rng(0)
    frame["score"] = 3 * unit["learning_rate"] + 1.5 * unit["temperature"] + rng.normal(0, 0.05, len(frame))
    effects = elementary_effects(frame, "score").set_index("knob")
    assert list(effects.index[:2]) == ["learning_rate", "temperature"]
    for knob, slope in (("learning_rate", 3.0), ("temperature", 1.5)):
        row = effects.loc[knob]
        assert row["mu_star_low"] <= slope <= row["mu_star_high"] and row["mu_low"] <= slope <= row["mu_high"]
        assert row["sigma"] < 0.2
    assert (effects.drop(index=["learning_rate", "temperature"])["mu_star"] < 0.2).all()
    assert (effects["n_trajectories"] == 12).all()


def test_design_of_names_the_design():
    study = pairs_study(np.random.default_rng(0), bases=4, seeds=1, effect=0.0, diff_sd=1.0)
    found = design_of(study)
    assert (found.name, found.n_bases) == ("pairs", 4) and "matched pairs" in found.why
    assert design_of(pd.DataFrame({"score": [1.0]})).name == "sampled"
    mixed = study.assign(**{DESIGN_KEY: ["pairs", "screening"] * (len(study) // 2)})
    with pytest.raises(InputError, match="mixes designs"):
        design_of(mixed)
