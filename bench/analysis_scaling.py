"""Time the full analysis + report on synthetic trial tables of 1k, 3k and 10k trials x 25 knobs.

Run: .venv/bin/python bench/analysis_scaling.py   (last line: analysis_seconds_10k=<x>; target < 10 s)

Subsampled methods (their options, stated in the report): ``forest`` fits on at most
``max_trials`` = 1500 trials (whole configurations drawn at random), fANOVA and PED-ANOVA on
at most 500, the decision trees' depth search on at most 2000. What the forest's cap costs
is measured here on the 10k table: the median width of its per-knob intervals at the cap
against twice the cap (``forest_interval_width_ratio``, > 1: the cap's intervals are wider).
Per-part seconds (importance methods, findings, interactions) are printed for each size.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

# `python bench/analysis_scaling.py` puts bench/ on the path, not the repository root whose
# tests/ holds the synthetic tables shared with the analysis tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from routed_study.analysis import report  # noqa: E402
from routed_study.analysis.importance import Design, ForestImportance  # noqa: E402
from tests.synthetic import planted_table  # noqa: E402


def timed(parts: dict[str, float], name: str, fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - started
    return wrapper


def interval_width_ratio(frame, cap: int) -> float:
    knobs = [c for c in frame.columns if c != "score"]
    design = Design.from_frame(frame, knobs, frame["score"])
    widths = []
    for trials in (cap, 2 * cap):
        imp = ForestImportance(max_trials=trials).fit(design).factor_importances_
        widths.append((imp["high"] - imp["low"]).median())
    return float(widths[0] / widths[1])


def main() -> None:
    timings = {}
    parts: dict[str, float] = {}
    report.fit_methods = timed(parts, "importance", report.fit_methods)
    report.evaluate_findings = timed(parts, "findings", report.evaluate_findings)
    report.interaction_section = timed(parts, "interactions", report.interaction_section)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: the first call pays the imports (optuna, matplotlib, scipy), not the analysis.
        planted_table(200, seed=1).to_csv(Path(tmp) / "warm.csv", index=False)
        report.build_report(Path(tmp) / "warm.csv", Path(tmp) / "warm")
        for n in (1000, 3000, 10000):
            csv = Path(tmp) / f"trials_{n}.csv"
            frame = planted_table(n, seed=0, n_knobs=25)
            frame.to_csv(csv, index=False)
            parts.clear()
            started = time.perf_counter()
            report.build_report(csv, Path(tmp) / f"report_{n}")
            timings[n] = time.perf_counter() - started
            print(f"parts_{n // 1000}k: " + ", ".join(f"{k}={v:.2f}s" for k, v in parts.items()), flush=True)
            print(f"analysis_seconds_{n // 1000}k={timings[n]:.2f}", flush=True)
        cap = ForestImportance().max_trials
        print(f"forest_interval_width_ratio (max_trials {cap} vs {2 * cap}, 10k table)="
              f"{interval_width_ratio(frame, cap):.2f}", flush=True)
    print(f"analysis_seconds_10k={timings[10000]:.2f}")
    sys.exit(0 if timings[10000] < 10 else 1)


if __name__ == "__main__":
    main()
