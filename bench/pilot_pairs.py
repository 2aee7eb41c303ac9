"""Pilot of the ``pairs`` design on the real offline suite, and the size of findings_offline.yaml.

Runs (``--run``) or reads the pilot study of ``study/specs/pilot_pairs.yaml`` (MiniLM, a few
offline tasks, a few compared claims, every configuration with several seeds) and prints:

- its verdicts, per claim, from the pairs analysis (``analysis.designs.paired_claims``: paired
  t-test over bases, nested bootstrap interval), with the paired effect a - b and its interval;
- the measured spreads: seed spread (SD between seeds of one configuration, pooled over the
  design's points), configuration spread (SD of configuration means, seed share removed), and
  per claim the two parts of a pair's difference: the seed part (SD of a base's seed-matched
  differences between its seeds) and the base part (how the effect varies from base to base);
- the study's wall time and seconds per trial (from its MLflow runs' start and end times);
- the power computation that sizes ``study/specs/findings_offline.yaml``: per claim, the bases
  the pairs analysis needs for ``--power`` at alpha 0.05, each base run with that spec's
  ``trials.repeats`` seeds. Directional claims: the paired t-test over bases (its exact power
  from the noncentral t, statsmodels' ``TTestPower``) with a pair's SD
  sd^2 = base part^2 + seed part^2 / repeats, at the measured effect (printed) and, for the
  size, at the larger of the measured effect and ``--min-effect`` (default: one seed SD; a
  pilot's effect near 0 would ask for unbounded bases). Equality claims: TOST within the
  margin (normal approximation at a true difference of 0). The SD is the larger of the
  claim's own and the pooled one (a pilot's few bases can make one claim's SD look small by
  chance). A claim the pilot did not measure is sized at the pooled SD for ``--min-effect``.
  The study's ``search.bases`` is the largest need, at most ``--max-bases``; the power each
  claim then has is printed where it falls short.

Last line: ``findings_offline_runs=<runs findings_offline.yaml makes at that size>``.

    python bench/pilot_pairs.py [--run] [--study DIR] [--spec study/specs/pilot_pairs.yaml]
        [--target study/specs/findings_offline.yaml] [--power 0.8] [--max-bases 100] [--min-effect POINTS]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats
from statsmodels.stats.power import TTestPower

from routed_study.analysis.designs import pair_differences, paired_claims
from routed_study.analysis.effects import MARGIN_SEED_SD
from routed_study.analysis.findings import load_findings
from routed_study.analysis.loading import load_trials
from routed_study.study.cli import main as cli
from routed_study.study.spec import StudySpec
from routed_study.trainables.results import DESIGN_POINT_KEY

REPO = Path(__file__).resolve().parents[1]
ALPHA = 0.05
#: One GPU (reproduce_findings.yaml's header; docs/environment.md gives no GPU figure): an H100
#: measured 0.017 s a training step, and a run of ~315 steps took ~15-20 s, mostly model loading
#: and evaluation, so a run costs about GPU_RUN_S plus its steps.
GPU_STEP_S, GPU_RUN_S = 0.017, 15.0


def seed_spread(frame: pd.DataFrame, target: str) -> tuple[float, int]:
    """Pooled SD between seeds of one design point (one-way ANOVA residual) and its df."""
    groups = frame.groupby(DESIGN_POINT_KEY)[target]
    df = int((groups.count() - 1).clip(lower=0).sum())
    ss = float(groups.apply(lambda g: ((g - g.mean()) ** 2).sum()).sum())
    return math.sqrt(ss / df) if df else float("nan"), df


def config_spread(frame: pd.DataFrame, target: str, seed_sd: float) -> float:
    """SD of the configurations' own means (the seed share of their variance removed)."""
    groups = frame.groupby(DESIGN_POINT_KEY)[target]
    means, seeds = groups.mean(), groups.count().mean()
    return math.sqrt(max(0.0, float(means.var(ddof=1)) - seed_sd ** 2 / seeds))


def pair_parts(diffs: pd.DataFrame) -> dict[str, float]:
    """A claim's pair differences split into a seed part (within a base) and a base part."""
    by_base = diffs.groupby("base")["diff"]
    df_w = int((by_base.count() - 1).clip(lower=0).sum())
    seed_part = math.sqrt(float(by_base.apply(lambda g: ((g - g.mean()) ** 2).sum()).sum()) / df_w) if df_w else 0.0
    means = by_base.mean()
    seeds = float(by_base.count().mean())
    base_part = math.sqrt(max(0.0, float(means.var(ddof=1)) - seed_part ** 2 / seeds)) if len(means) > 1 else 0.0
    return {"seed_part": seed_part, "base_part": base_part, "df_seed": df_w, "df_base": len(means) - 1,
            "pilot_seeds": seeds}


def pair_sd(parts: dict[str, float], repeats: int) -> float:
    return math.sqrt(parts["base_part"] ** 2 + parts["seed_part"] ** 2 / repeats)


def power_at(what: str, size: float, sd: float, bases: int) -> float:
    """Power of the pairs analysis at ``bases`` bases: the two-sided paired t-test over bases for
    a difference of ``size`` points (exact, noncentral t); for an equality (``size`` = margin),
    TOST at alpha each side when a = b (normal approximation)."""
    if not np.isfinite(size) or bases < 2:
        return 0.0
    if sd == 0:
        return 1.0
    if what == "equal":
        z = size * math.sqrt(bases) / sd - stats.norm.ppf(1 - ALPHA)
        return max(0.0, 2 * stats.norm.cdf(z) - 1)
    return float(TTestPower().power(effect_size=size / sd, nobs=bases, alpha=ALPHA, alternative="two-sided"))


def bases_needed(what: str, size: float, sd: float, power: float, most: int = 10_000) -> float:
    """Fewest bases (>= 2) with ``power``; inf beyond ``most`` or with nothing to detect."""
    if not np.isfinite(size) or size == 0:
        return math.inf
    low, high = 2, most
    if power_at(what, size, sd, high) < power:
        return math.inf
    while low < high:   # power grows with the bases
        mid = (low + high) // 2
        low, high = (mid + 1, high) if power_at(what, size, sd, mid) < power else (low, mid)
    return float(low)


def wall_time(study_dir: Path) -> tuple[float, int]:
    """Seconds from the first trial's start to the last one's end, and the trials that ended."""
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if "mlflow.parentRunId" in r.data.tags and r.info.end_time]
    if not runs:
        return float("nan"), 0
    return (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000, len(runs)


def steps_per_trial(spec: StudySpec) -> float:
    """Training steps of an average trial (every task's examples / batch size x mean epochs)."""
    def mean_of(knob: str) -> float:
        values = spec.space._possible(knob)
        return float(np.mean(values))
    train = sum(spec.setup.train_size(t) for t in spec.setup.tasks)
    if "train_per_task" in spec.space.parameters() or "train_per_task" in spec.space.constants():
        train = mean_of("train_per_task") * len(spec.setup.tasks)
    return math.ceil(train / mean_of("batch_size")) * mean_of("epochs")


def _count(n: float) -> str:
    return str(math.ceil(n)) if math.isfinite(n) else "unbounded"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "study/specs/pilot_pairs.yaml"))
    parser.add_argument("--study", help="the pilot's study directory (default: the spec's)")
    parser.add_argument("--run", action="store_true", help="run the pilot first (routed-study run)")
    parser.add_argument("--target", default=str(REPO / "study/specs/findings_offline.yaml"))
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--max-bases", type=int, default=100)
    parser.add_argument("--min-effect", type=float, help="smallest difference (points) a directional claim "
                        "is sized to detect (default: the measured seed SD)")
    args = parser.parse_args()

    spec = StudySpec.load(args.spec)
    study_dir = Path(args.study) if args.study else Path(str(spec.study_dir))
    if args.run:
        start = time.perf_counter()
        code = cli(["run", args.spec])
        print(f"routed-study run: exit {code}, {time.perf_counter() - start:.0f} s")

    table = load_trials(study_dir, spec.metric)
    target = table.target
    frame = table.frame[table.frame["status"] == "ok"]
    seconds, ended = wall_time(study_dir)
    seed_sd, seed_df = seed_spread(frame, target)
    margin = MARGIN_SEED_SD * seed_sd
    min_effect = args.min_effect or seed_sd
    claims = [c.finding.id for c in spec.algorithm.claims]
    # Compared claims without a margin of their own take the project's default (half a seed SD).
    findings = [f.model_copy(update={"margin": margin}) if f.kind == "compare" and f.margin is None else f
                for f in load_findings(spec.file.search.findings)]
    by_id = {f.id: f for f in findings}

    print(f"pilot: {spec.name}, {len(frame)} of {spec.num_samples} trials ok, {len(spec.setup.tasks)} tasks "
          f"({', '.join(spec.setup.tasks)}), backbone {spec.setup.backbone}, {steps_per_trial(spec):.0f} training "
          f"steps a trial, {spec.repeats} seeds a configuration")
    print(f"wall time: {seconds:.0f} s for {ended} trials at concurrency {spec.concurrency}: "
          f"{seconds / max(ended, 1):.1f} s a trial")
    print(f"seed spread: SD {seed_sd:.2f} points between seeds of one configuration ({seed_df} df); "
          f"configuration spread: SD {config_spread(frame, target, seed_sd):.2f} points; "
          f"equality margin {margin:.2f} ({MARGIN_SEED_SD} seed SD)")

    # The pairs analysis, at the pilot's own number of bases (its default asks for 5).
    verdicts = paired_claims(frame, findings, target, min_bases=spec.file.search.bases).set_index("id")
    verdicts = verdicts.reindex(claims).fillna({"verdict": "no pairs yet"})
    target_spec = StudySpec.load(args.target)
    repeats = target_spec.repeats
    parts = {c: pair_parts(pair_differences(frame, c, target)) for c in claims}
    pooled = {k: math.sqrt(np.average([p[k] ** 2 for p in parts.values()],
                                      weights=[max(p["df_seed" if k == "seed_part" else "df_base"], 1e-9)
                                               for p in parts.values()]))
              for k in ("seed_part", "base_part")}
    pooled_sd = pair_sd(pooled, repeats)
    print(f"\nper claim (effect = a - b, points; interval 95 %; sd = a pair's SD at {repeats} seeds a base):")
    print(f"{'claim':6} {'verdict':13} {'effect':>7} {'interval':>17} {'p':>7} {'seed part':>9} "
          f"{'base part':>9} {'sd':>6} {'bases for ' + format(args.power, '.0%'):>14} {'sized at':>9}")
    print(f"(bases for {args.power:.0%}: at the measured effect, or for an equality at the margin; sized at: "
          f"at the larger of the measured effect and --min-effect {min_effect:.2f})")
    # claim -> (what it is sized to show: an effect or, for an equality, the margin; a pair's SD)
    sizing: dict[str, tuple[str, float, float]] = {}
    for c in claims:
        row, p, f = verdicts.loc[c], parts[c], by_id[c]
        sd = max(pair_sd(p, repeats), pooled_sd)
        at_measured = ("equal", f.margin, sd) if f.expect == "equal" else ("differ", abs(row.effect), sd)
        sizing[c] = at_measured if f.expect == "equal" else ("differ", max(abs(row.effect), min_effect), sd)
        print(f"{c:6} {row.verdict:13} {row.effect:7.2f} [{row.ci_low:7.2f}, {row.ci_high:7.2f}] "
              f"{row.p_value:7.3f} {p['seed_part']:9.2f} {p['base_part']:9.2f} {sd:6.2f} "
              f"{_count(bases_needed(*at_measured, args.power)):>14} {_count(bases_needed(*sizing[c], args.power)):>9}")
    print(f"pooled: seed part {pooled['seed_part']:.2f}, base part {pooled['base_part']:.2f}, "
          f"a pair's SD at {repeats} seeds {pooled_sd:.2f}")

    others = [c.finding for c in target_spec.algorithm.claims if c.finding.id not in parts]
    for f in others:
        sizing[f.id] = (("equal", f.margin if f.margin is not None else margin, pooled_sd) if f.expect == "equal"
                        else ("differ", min_effect, pooled_sd))
    needs = {c: bases_needed(*sized, args.power) for c, sized in sizing.items()}
    print(f"claims the pilot did not measure ({len(others)}): sized at the pooled SD for an effect of "
          f"{min_effect:.2f} points (directional) or the margin {margin:.2f} (equality): "
          + ", ".join(f"{f.id} {_count(needs[f.id])}" for f in others))

    finite = [n for n in needs.values() if math.isfinite(n)]
    bases = min(args.max_bases, max(5, math.ceil(max(finite, default=5))))
    short = [f"{c} ({power_at(*sizing[c], bases):.0%})" for c, n in needs.items() if n > bases]
    raw = yaml.safe_load(Path(args.target).read_text())
    raw["search"]["bases"] = bases
    sized = StudySpec.from_dict(raw, file=args.target)
    per_trial_here = seconds / max(ended, 1) * steps_per_trial(sized) / steps_per_trial(spec)
    hours_here = sized.num_samples * per_trial_here / 3600
    print(f"\nfindings_offline: {len(needs)} claims, search.bases {bases} (largest need"
          + (f", capped at --max-bases; power there: {', '.join(short)}" if short else "") + f"), "
          f"{sized.num_trials} configurations x {sized.repeats} seeds = {sized.num_samples} runs; "
          f"file has bases {target_spec.file.search.bases} ({target_spec.num_samples} runs)")
    gpu_hours = sized.num_samples * (GPU_RUN_S + GPU_STEP_S * steps_per_trial(sized)) / 3600
    print(f"expected time: {per_trial_here:.0f} s a trial here at concurrency {spec.concurrency} (the pilot's "
          f"{seconds / max(ended, 1):.0f} s x {steps_per_trial(sized):.0f} / {steps_per_trial(spec):.0f} steps): "
          f"{hours_here:.1f} h on this machine; one GPU, one run at a time ({GPU_RUN_S:.0f} s a run + "
          f"{GPU_STEP_S} s a step): {gpu_hours:.1f} h")
    print(f"findings_offline_runs={sized.num_samples}")


if __name__ == "__main__":
    main()
