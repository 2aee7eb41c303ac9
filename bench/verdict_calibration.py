"""Calibration of the findings verdicts on simulated studies (tests/study_simulator.py).

Per scenario: the false-verdict rate under the null (no knob changes the final score) and
with planted effects, and the power (share of planted claims supported).

Run: .venv/bin/python bench/verdict_calibration.py [seeds]   (last line: the figures over all)
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.study_simulator import SCENARIOS, calibrate  # noqa: E402


def main(n_seeds: int = 5) -> None:
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        null = calibrate(SCENARIOS, range(n_seeds), False, tmp)
        planted = calibrate(SCENARIOS, range(100, 100 + n_seeds), True, tmp)
    decided = lambda f: f[f["kind"] != "untestable"]  # noqa: E731
    for name in SCENARIOS:
        n, p = decided(null[null.scenario == name]), decided(planted[planted.scenario == name])
        worst = n.groupby("id")["false"].mean().sort_values().tail(1)
        print(f"{name:13s} null false {n['false'].mean():6.1%} (worst claim {worst.index[0]} "
              f"{worst.iloc[0]:.0%} of seeds)  planted false {p['false'].mean():6.1%}  "
              f"power {p['found'].mean():6.1%}")
    for label, frame, column in (("false verdicts (null)", null, "false"), ("false verdicts (planted)", planted, "false"),
                                 ("power", planted, "found")):
        table = frame.pivot_table(index="id", columns="scenario", values=column, aggfunc="mean").dropna(how="all")
        table = table[(table > 0).any(axis=1)] if column == "false" else table
        print(f"{label} per claim and scenario:\n{(100 * table[list(SCENARIOS)]).round(0).to_string()}")
    print(f"null_false_rate={decided(null)['false'].mean():.4f} planted_false_rate="
          f"{decided(planted)['false'].mean():.4f} power={planted['found'].mean():.4f} seeds={n_seeds}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
