"""Trials each design needs before the planted claims are decided at 80 % power.

Simulated studies (``tests/design_simulator.py``) over the ``findings`` space with the shipped
findings file's 13 compared claims planted (true effects, one false claim, two true
equalities), with realistic noise: other knobs' main effects, pairwise interactions, a
configuration-level random effect, a shared and a per-trial seed effect. For each design and
budget, ``--reps`` independent studies are analysed the way the tool analyses that design:

- ``random``, ``qmc``, ``tpe``: the findings comparison (difference of side means, the
  bootstrap / normal interval of ``analysis.findings.mean_diff_interval``, Mann-Whitney p,
  the claims' decision rule ``analysis.designs.verdict``), every trial at the default seed as a
  sampled study runs them;
- ``pairs``: ``analysis.designs.paired_claim`` (paired t-test and nested paired bootstrap over
  bases) on ``study.designs.Pairs`` designs; budgets are the design's trials at each
  ``search.bases``.

A design's cost is the smallest budget at which every claim gets its correct verdict in at
least ``--power`` of the studies. ``qmc`` draws scrambled Sobol points with scipy (the engine
of Optuna's QMCSampler, mapped as it maps them); ``tpe`` runs Optuna's TPESampler (slow, so
fewer studies and a lower ceiling: a cost above it prints as ">N"). Last line:
``verdict_cost_ratio=<trials of the best design / trials of random>`` (a ">"-bounded random
cost makes the ratio an upper bound, said on the line before).

    python bench/verdict_cost.py [--reps 12] [--tpe-reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.design_simulator

from scipy.stats import mannwhitneyu  # noqa: E402

from routed_study.analysis.designs import paired_claim, verdict  # noqa: E402
from routed_study.analysis.findings import load_findings, mean_diff_interval  # noqa: E402
from routed_study.search_spaces import get_space  # noqa: E402
from routed_study.study.designs import Pairs  # noqa: E402
from routed_study.trainables.results import DESIGN_FLIP_KEY, DESIGN_SIDE_KEY, DESIGN_BASE_KEY  # noqa: E402
from tests.design_simulator import (Noise, PlantedSurface, correct_verdict, design_frame,  # noqa: E402
                                    draw_frame, random_frame)

ALPHA, MIN_TRIALS, N_BOOT = 0.05, 5, 1000


def sampled_verdicts(claims, masks, y, n, rng) -> dict[str, str]:
    """The findings comparison of every claim on the first ``n`` trials."""
    out = {}
    for claim in claims:
        side_a, side_b = masks[claim.finding.id]
        a, b = y[:n][side_a[:n]], y[:n][side_b[:n]]
        if min(len(a), len(b)) < MIN_TRIALS:
            out[claim.finding.id] = "inconclusive"
            continue
        low, high = mean_diff_interval(a, b, N_BOOT, ALPHA, rng)
        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        out[claim.finding.id] = verdict(claim.finding.expect, claim.finding.margin, low, high, p, ALPHA)[0]
    return out


def tpe_study(space, surface, n, seed, rng):
    """A TPE study of ``n`` trials maximising the simulated score: (its trials, the scores it saw)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    names = list(space.parameters())
    rows, scores = [], []
    for _ in range(n):
        trial = study.ask()
        space.define_by_run(trial)
        row = pd.DataFrame([trial.params], columns=names).astype(object)
        scores.append(float(surface.score(row, np.zeros(1), rng)[0]))
        study.tell(trial, scores[-1])
        rows.append(trial.params)
    return pd.DataFrame(rows, columns=names).astype(object), np.array(scores)


class GrowingStudy:
    """One sampled study, drawn further only as far as the budgets reached need (prefixes of one
    sequence: a study of n trials is the first n of a longer one)."""

    def __init__(self, draw, surface, rng):
        self.draw, self.surface, self.rng = draw, surface, rng
        self.y = np.zeros(0)
        self.masks = {c.finding.id: (np.zeros(0, bool), np.zeros(0, bool)) for c in surface.claims}

    def grow(self, n: int) -> None:
        more = n - len(self.y)
        if more <= 0:
            return
        frame = self.draw(more)
        self.y = np.concatenate([self.y, self.surface.score(frame, np.zeros(more), self.rng)])
        for c in self.surface.claims:
            a, b = c.masks(frame)
            old_a, old_b = self.masks[c.finding.id]
            self.masks[c.finding.id] = (np.concatenate([old_a, a]), np.concatenate([old_b, b]))


def sampled_cost(studies, surface, correct, budgets, power, rng):
    """(cost or None, correct rates per claim at the last budget tried): budgets are tried in
    order until every claim is decided correctly in ``power`` of the studies."""
    claims = surface.claims
    for n in budgets:
        hits = np.zeros(len(claims))
        for study in studies:
            study.grow(n)
            got = sampled_verdicts(claims, study.masks, study.y, n, rng)
            hits += [got[c.finding.id] == correct[c.finding.id] for c in claims]
        rates = hits / len(studies)
        if rates.min() >= power:
            return n, rates
    return None, rates


def _first_decided(budgets, rates, power):
    for n, row in zip(budgets, rates):
        if row.min() >= power:
            return n
    return None


def pairs_cost(space, findings, surface, correct, bases_grid, reps, power, rng):
    claims = [c.finding for c in surface.claims]
    hits = np.zeros((len(bases_grid), len(claims)))
    sizes = np.zeros(len(bases_grid))
    for rep in range(reps):
        design = Pairs(SimpleNamespace(seed=1000 + rep, findings=None, claims=[f.id for f in claims],
                                       bases=max(bases_grid)), space)
        frame = design_frame(design.points())
        frame["score"] = surface.score(frame, frame["seed"].to_numpy(), rng)
        flips = frame[frame[DESIGN_SIDE_KEY] != "base"]
        for i, b in enumerate(bases_grid):
            # Each claim's first b bases: the design search.bases = b would have drawn (same order).
            used = flips.groupby(DESIGN_FLIP_KEY, sort=False).head(b)
            kept = frame[(frame.index.isin(used.index)) | ((frame[DESIGN_SIDE_KEY] == "base")
                                                          & frame[DESIGN_BASE_KEY].isin(used[DESIGN_BASE_KEY]))]
            sizes[i] += len(kept)
            for j, f in enumerate(claims):
                row = paired_claim(f, kept, "score", alpha=ALPHA, n_boot=N_BOOT, rng=rng)
                hits[i, j] += row["verdict"] == correct[f.id]
    rates, sizes = hits / reps, sizes / reps
    for bases, size, row in zip(bases_grid, sizes, rates):
        if row.min() >= power:
            return int(round(size)), row, bases
    return None, rates[-1], int(sizes[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=12, help="simulated studies per design and budget")
    parser.add_argument("--tpe-reps", type=int, default=3)
    parser.add_argument("--tpe-max", type=int, default=362)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--max-bases", type=int, default=128, help="the largest search.bases tried")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="few studies, low ceilings (a smoke run)")
    for name, value in Noise().__dict__.items():  # e.g. --seed-sd from a pilot's measured spread over seeds
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)
    args = parser.parse_args()
    reps, tpe_reps, tpe_max = (4, 1, 64) if args.quick else (args.reps, args.tpe_reps, args.tpe_max)
    start = time.monotonic()
    space = get_space("findings")
    findings = [f for f in load_findings() if f.kind == "compare"]
    noise = Noise(**{name: getattr(args, name) for name in Noise().__dict__})
    surface = PlantedSurface(space, findings, noise=noise, seed=args.seed)
    truth = surface.truth(n=50_000 if args.quick else 200_000, seed=args.seed + 1)
    correct = {f.id: correct_verdict(f, truth[f.id]) for f in findings}
    print(f"planted claims (population difference a - b; the verdict a study should reach): "
          + ", ".join(f"{k} {v:+.2f} {correct[k]}" for k, v in truth.items()))
    print(f"noise: {noise}; {reps} studies per design and budget (tpe {tpe_reps}); power {args.power:.0%}")
    rng = np.random.default_rng(args.seed)
    top = 4096 if args.quick else 65536
    budgets = [int(64 * 2 ** (k / 2)) for k in range(0, 40) if 64 * 2 ** (k / 2) <= top]
    costs, lines = {}, []

    def show(name, cost, rates, budget_list, note=""):
        worst = {c.finding.id: r for c, r in zip(surface.claims, rates)}
        hardest = min(worst, key=worst.get)
        text = f"{cost}" if cost is not None else f">{budget_list[-1]}"
        lines.append(f"{name:>7}: {text:>7} trials{note}; hardest claim there: {hardest} "
                     f"({worst[hardest]:.0%} of studies correct)")
        print(lines[-1], flush=True)

    def random_draw(r):
        generator = np.random.default_rng(r)
        return lambda n: random_frame(space, n, generator)

    def sobol_draw(r):
        from scipy.stats import qmc

        engine = qmc.Sobol(d=len(space.parameters()), scramble=True, seed=r)
        return lambda n: draw_frame(space, engine.random(n))  # the sequence continues where it stopped

    for name, draw in (("random", random_draw), ("qmc", sobol_draw)):
        studies = [GrowingStudy(draw(10_000 * (name == "qmc") + r), surface, rng) for r in range(reps)]
        costs[name], rates = sampled_cost(studies, surface, correct, budgets, args.power, rng)
        show(name, costs[name], rates, budgets)
    tpe_budgets = [n for n in budgets if n <= tpe_max]
    tpe_runs = [tpe_study(space, surface, tpe_budgets[-1], r, rng) for r in range(tpe_reps)]
    studies = []
    for frame, y in tpe_runs:
        study = GrowingStudy(None, surface, rng)
        study.y = y
        study.masks = {c.finding.id: c.masks(frame) for c in surface.claims}
        studies.append(study)
    costs["tpe"], rates = sampled_cost(studies, surface, correct, tpe_budgets, args.power, rng)
    show("tpe", costs["tpe"], rates, tpe_budgets, f" ({tpe_reps} studies)")
    bases_grid = [b for b in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
                  if b <= (32 if args.quick else args.max_bases)]
    costs["pairs"], rates, bases = pairs_cost(space, findings, surface, correct, bases_grid, reps, args.power, rng)
    show("pairs", costs["pairs"], rates, [bases], f" (search.bases {bases})" if costs["pairs"] else
         f" (search.bases {bases_grid[-1]} at most)")
    print(f"wall time {time.monotonic() - start:.0f}s")
    designs = {k: v for k, v in costs.items() if k != "random" and v is not None}
    best = min(designs, key=designs.get) if designs else None
    if best is None:
        print("no design decided every claim within its ceiling")
        print("verdict_cost_ratio=nan")
        return
    if costs["random"] is None:
        print(f"random did not decide every claim within {budgets[-1]} trials: the ratio is an upper bound")
        print(f"verdict_cost_ratio={designs[best] / budgets[-1]:.4f}")
        return
    print(f"best design: {best} ({designs[best]} trials) vs random ({costs['random']} trials)")
    print(f"verdict_cost_ratio={designs[best] / costs['random']:.4f}")


if __name__ == "__main__":
    main()
