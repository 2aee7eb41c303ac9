"""Calibration of the findings verdicts: error rates over simulated studies, not single examples.

Studies come from tests/study_simulator.py (TPE-like drifting search, repeats with a
configuration effect, ASHA stops whose partial scores depend on learning speed, diverged
trials) and go through the code path of ``routed-study analyze`` (``analysis.findings.judge``
on a CSV). Under the null no knob changes the final score; planted effects are 3-6 points
against seed noise of 3. The quick variants run a few studies per scenario; the slow ones
(and bench/verdict_calibration.py, whose figures the closing note gives) run more.
"""

from __future__ import annotations

import warnings

import pytest

from tests.study_simulator import SCENARIOS, TRUE_FINAL, calibrate, scenario, write_study

#: Acceptance: at most this share of false verdicts under the null, at least this power.
MAX_FALSE = 0.05
MIN_POWER = 0.8


def _judged(frame):
    return frame[frame["kind"] != "untestable"]


def _check_null(verdicts):
    judged = _judged(verdicts)
    assert judged["false"].mean() <= MAX_FALSE, judged.loc[judged["false"], ["scenario", "seed", "id", "reason"]]
    # No claim wrong in most seeds of one scenario (a systematic error, not bad luck).
    per_claim = judged.groupby(["scenario", "id"])["false"].mean()
    assert (per_claim <= 0.5).all(), per_claim[per_claim > 0.5]


def _check_planted(verdicts):
    judged = _judged(verdicts)
    assert not judged["false"].any(), judged.loc[judged["false"], ["scenario", "seed", "id", "verdict", "reason"]]
    assert verdicts["found"].mean() >= MIN_POWER, verdicts.groupby(["scenario", "id"])["found"].mean().dropna()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_no_claim_is_falsely_decided_under_the_null(tmp_path):
    _check_null(calibrate(["repeats", "asha_repeats"], range(2), False, tmp_path))


def test_planted_effects_are_found_and_never_contradicted(tmp_path):
    _check_planted(calibrate(["repeats"], range(100, 102), True, tmp_path))


def test_early_stopped_trials_keep_their_history_and_are_projected(tmp_path):
    # ASHA stops most trials after an epoch or two: the loader keeps every epoch's score, and the
    # claims compare at the common budget and carry stopped trials to the final budget.
    from routed_study.analysis.effects import _study
    from routed_study.analysis.findings import Evidence, load_findings
    from routed_study.analysis.loading import load_trials
    import numpy as np

    table = load_trials(write_study(tmp_path / "asha.csv", scenario("asha_repeats", False, configs=150), 7))
    assert set(table.frame["status"]) == {"ok", "early_stopped", "error"}
    assert (table.frame["status"] == "early_stopped").mean() > 0.4
    evidence = Evidence.from_table(table)
    evidence.extras["entries"] = load_findings()
    draws, how = _study(evidence).projections()
    stopped = (table.frame["status"] == "early_stopped").to_numpy()
    truth = table.frame[TRUE_FINAL].to_numpy()
    assert "projected to the final budget from their score at epoch 1" in how
    # Unbiased on average over the stopped trials (their final scores were never seen).
    error = draws.mean(0)[stopped] - truth[stopped]
    assert abs(error.mean()) < 3 * error.std() / np.sqrt(stopped.sum()) + 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_null_calibration_per_scenario(tmp_path, name):
    _check_null(calibrate([name], range(5), False, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_power_per_scenario(tmp_path, name):
    _check_planted(calibrate([name], range(100, 105), True, tmp_path))
