"""F17, routing is directional: router asymmetry across trials against a permutation null.

Only trials whose sources are task-owned (knob ``sources: tasks``) have a router matrix
whose columns are the tasks themselves (``router_matrix.csv``, rows and columns labelled
with task names), so only there does "task i relies on task j's prompt" mean anything.
Each such trial's task-by-task block is standardised (off-diagonal entries to mean 0,
SD 1, so that trials weigh alike) into Z; its directional part is D = Z - Z^T.

The statistic is the antisymmetric share of the mean over trials, A = ||mean D||^2 / (4 ||mean Z||^2)
(Frobenius norms: the share of the matrix's square norm in its antisymmetric part (Z - Z^T)/2;
0 = symmetric use, 1 = wholly antisymmetric). Under the null of
no direction, S and S^T are exchangeable in every trial, so the null distribution flips the
sign of each trial's D at random (:data:`PERMUTATIONS` draws). The interval resamples whole
configurations (the seeds of one share a cluster). Supported when the permutation p is small;
contradicted when the interval lies below :data:`MIN_ASYMMETRY`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pydantic

from routed_study.analysis.findings import Entry, Evidence, FindingKind, register_kind
from routed_study.trainables.results import ROUTER_CSV

PERMUTATIONS = 2000
BOOTSTRAPS = 1000
#: Asymmetry below which routing counts as symmetric.
MIN_ASYMMETRY = 0.1
TASK_OWNED = "tasks"


def task_block(matrix: pd.DataFrame) -> pd.DataFrame | None:
    """The tasks x tasks part of a router matrix (rows tasks, columns candidates), or None when its
    columns are not labelled with the task names (anonymous sources)."""
    tasks = [str(t) for t in matrix.index]
    columns = [str(c) for c in matrix.columns]
    if len(tasks) < 2 or not set(tasks) <= set(columns):
        return None
    block = matrix.copy()
    block.index, block.columns = tasks, columns
    return block.loc[tasks, tasks].astype(float)


def _standardise(block: np.ndarray) -> np.ndarray | None:
    off = ~np.eye(len(block), dtype=bool)
    values = block[off]
    sd = values.std()
    if not np.isfinite(sd) or sd <= 1e-12:
        return None  # a router that never moved shows no routing at all
    z = np.zeros_like(block)
    z[off] = (values - values.mean()) / sd
    return z


def asymmetry(z: np.ndarray) -> float:
    """Antisymmetric share ||Z - Z^T||^2 / (4 ||Z||^2) of one (or a mean) standardised task block."""
    norm = np.linalg.norm(z)
    return float(np.linalg.norm(z - z.T) ** 2 / (4 * norm ** 2)) if norm > 0 else 0.0


def router_asymmetry(frame: pd.DataFrame) -> pd.DataFrame:
    """Per trial: whether its router matrix is usable for F17 and its own asymmetry (for the report).

    Columns: trial_id, usable, asymmetry, n_tasks, why (the reason a trial is left out)."""
    rows = []
    for _, trial in frame.iterrows():
        row = {"trial_id": trial.get("trial_id"), "usable": False, "asymmetry": np.nan, "n_tasks": 0, "why": ""}
        rows.append(row)
        if str(trial.get("sources", "")) != TASK_OWNED:
            row["why"] = "sources are not task-owned (knob sources is not 'tasks')"
            continue
        path = Path(str(trial["trial_dir"])) / ROUTER_CSV if pd.notna(trial.get("trial_dir")) else None
        if path is None or not path.is_file():
            row["why"] = f"no {ROUTER_CSV} in the trial's folder"
            continue
        block = task_block(pd.read_csv(path, index_col=0))
        if block is None:
            row["why"] = f"{ROUTER_CSV} columns are not labelled with the task names"
            continue
        z = _standardise(block.to_numpy())
        if z is None:
            row["why"] = "the router never moved (all task-to-task entries equal)"
            continue
        row.update(usable=True, asymmetry=asymmetry(z), n_tasks=len(block), tasks=tuple(block.index))
    return pd.DataFrame(rows)


class RouterAsymmetryEntry(Entry):
    kind: Literal["router_asymmetry"]
    min_asymmetry: float = pydantic.Field(default=MIN_ASYMMETRY, gt=0, lt=1)


@register_kind
class RouterAsymmetry(FindingKind):
    name = "router_asymmetry"
    Entry = RouterAsymmetryEntry
    family = "claims"

    def evaluate(self, entry, evidence: Evidence) -> dict:
        frame = evidence.frame.assign(_config=evidence.clusters)
        if "sources" not in frame or not (frame["sources"].astype(str) == TASK_OWNED).any():
            return {"verdict": "inconclusive",
                    "reason": "no trial with task-owned sources (knob sources: tasks): anonymous source prompts "
                              "belong to no task, so a router matrix says nothing about task-to-task direction"}
        per_trial = router_asymmetry(frame)
        usable = per_trial["usable"].to_numpy(bool)
        if usable.sum() < 3:
            whys = per_trial.loc[~usable, "why"].value_counts()
            return {"verdict": "inconclusive", "n_configs": int(usable.sum()),
                    "reason": f"{int(usable.sum())} trials with a usable task-by-task router matrix (need 3); "
                              + "; ".join(f"{n} trials: {w}" for w, n in whys.items())}
        tasks = per_trial.loc[usable, "tasks"].mode().iloc[0]
        keep = usable & (per_trial["tasks"] == tasks).to_numpy()
        blocks = []
        for trial_dir in frame.loc[keep, "trial_dir"]:
            block = task_block(pd.read_csv(Path(str(trial_dir)) / ROUTER_CSV, index_col=0)).loc[list(tasks), list(tasks)]
            blocks.append(_standardise(block.to_numpy()))
        Z = np.stack(blocks)
        D = Z - np.transpose(Z, (0, 2, 1))
        configs = frame.loc[keep, "_config"].to_numpy()
        rng = np.random.default_rng(evidence.random_state)

        def statistic(weights: np.ndarray) -> float:
            return asymmetry((weights[:, None, None] / weights.sum() * Z).sum(0))

        observed = statistic(np.ones(len(Z)))
        # Null: each trial's direction is a coin flip (S and S^T exchangeable); |Z| is unchanged.
        signs = rng.choice([-1.0, 1.0], size=(PERMUTATIONS, len(D)))
        null_norm = np.linalg.norm(np.einsum("pt,tij->pij", signs, D) / len(D), axis=(1, 2))
        p_direction = float((1 + (null_norm >= np.linalg.norm(D.mean(0)) - 1e-12).sum()) / (1 + PERMUTATIONS))
        ids, inverse = np.unique(configs, return_inverse=True)
        boots = np.array([statistic(np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))[inverse]
                                    .astype(float)) for _ in range(BOOTSTRAPS)])
        low, high = np.quantile(boots, [evidence.alpha / 2, 1 - evidence.alpha / 2])
        p_symmetric = float((1 + (boots >= entry.min_asymmetry).sum()) / (1 + len(boots)))
        if p_direction <= p_symmetric:
            verdict, p, why = "supported", p_direction, f"directional beyond the sign-flip null (p={p_direction:.3g})"
        else:
            verdict, p, why = "contradicted", p_symmetric, (f"asymmetry below {entry.min_asymmetry:g} "
                                                            f"(bootstrap p={p_symmetric:.3g})")
        return {"verdict": verdict, "p_value": p, "effect": observed, "ci_low": float(low), "ci_high": float(high),
                "n_configs": len(ids), "n_seeds": int(round(keep.sum() / len(ids))), "decided_by": "difference",
                "view": "router matrices of completed trials with task-owned sources",
                "treatment": f"{int(keep.sum())} trials over tasks {', '.join(tasks)}; sign-flip permutation null "
                             f"({PERMUTATIONS}), configuration bootstrap ({BOOTSTRAPS})",
                "reason": f"asymmetry of the mean task-by-task router matrix {observed:.3f} "
                          f"[{low:.3f}, {high:.3f}]; {why}"}
