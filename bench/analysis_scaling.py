"""Time the full analysis + report on synthetic trial tables of 1k, 3k and 10k trials x 25 knobs.

Run: .venv/bin/python bench/analysis_scaling.py   (last line: analysis_seconds_10k=<x>; target < 10 s)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

# `python bench/analysis_scaling.py` puts bench/ on the path, not the repository root whose
# tests/ holds the synthetic tables shared with the analysis tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from routed_study.analysis.report import build_report  # noqa: E402
from tests.synthetic import planted_table  # noqa: E402


def main() -> None:
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: the first call pays the imports (optuna, matplotlib, scipy), not the analysis.
        planted_table(200, seed=1).to_csv(Path(tmp) / "warm.csv", index=False)
        build_report(Path(tmp) / "warm.csv", Path(tmp) / "warm")
        for n in (1000, 3000, 10000):
            csv = Path(tmp) / f"trials_{n}.csv"
            planted_table(n, seed=0, n_knobs=25).to_csv(csv, index=False)
            started = time.perf_counter()
            build_report(csv, Path(tmp) / f"report_{n}")
            timings[n] = time.perf_counter() - started
            print(f"analysis_seconds_{n // 1000}k={timings[n]:.2f}", flush=True)
    sys.exit(0 if timings[10000] < 10 else 1)


if __name__ == "__main__":
    main()
