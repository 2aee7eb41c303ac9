"""The analysis report: trials.csv, importance.csv, findings.csv, tree.txt and report.html.

``build_report`` runs every registered importance method it can; a method that
cannot run on the data (too few trials, constant target, one class only) is
listed in the report with the reason and the rest is still written. If nothing
at all could be computed it raises InputError after writing what it has.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np
import pandas as pd

from routed_study.analysis import charts
from routed_study.analysis.encoding import KnobEncoder, mark_not_applicable
from routed_study.analysis.findings import evaluate_findings, load_findings
from routed_study.analysis.importance import METHODS, BootstrapRanks
from routed_study.analysis.loading import STATUS_TREATMENT, load_trials
from routed_study.trainables.errors import InputError


def _rank(values: pd.Series) -> pd.Series:
    return values.rank(ascending=False, method="min")


def _table(frame: pd.DataFrame, cls: str = "data", float_format="{:.4g}".format) -> str:
    return frame.to_html(classes=cls, float_format=float_format, na_rep="", border=0, escape=True)


def _router_section(best: pd.DataFrame, target: str, top: int = 3) -> str:
    """Heatmaps of the best trials' router matrices plus the F17 asymmetry of task -> source use."""
    parts = []
    if "trial_dir" not in best:
        return "<p>No trial folders in this source: router matrices are only read from a study directory.</p>"
    for _, row in best.head(top).iterrows():
        path = Path(str(row["trial_dir"])) / "router_matrix.csv"
        if not path.is_file():
            parts.append(f"<p>{html.escape(str(row['trial_id']))}: no router_matrix.csv in its folder.</p>")
            continue
        matrix = pd.read_csv(path, index_col=0)
        parts.append(f"<h3>{html.escape(str(row['trial_id']))} ({target} = {row[target]:.4g})</h3>")
        parts.append(f'<img class="chart" alt="router heatmap" src="{charts.heatmap(matrix, "router logits")}">')
        if not matrix.to_numpy(float).any():
            # Logits start at 0; still 0 means no gradient ever reached them.
            parts.append("<p>The router never moved from its initial 0: in this configuration the scores do "
                         "not shape the prompt (route_method=const, compose_method=concat, one selected "
                         "candidate normalised to 1, or target_share=1), so it shows no routing.</p>")
            continue
        sources = [c for c in matrix.columns if c.startswith("source_")]
        weights = 1 / (1 + np.exp(-matrix[sources].to_numpy(float)))  # sigmoid of the logits
        uses = {task: sources[int(np.argmax(w))] for task, w in zip(matrix.index, weights)}
        parts.append("<p>Strongest source per task: " + html.escape(
            ", ".join(f"{t} -> {s}" for t, s in uses.items())) + "</p>")
        n = len(matrix.index)
        if len(sources) >= n:
            # Directional use (F17) when source_i is read as task i's prompt: |S - S^T| / |S|.
            square = weights[:, :n]
            asym = float(np.linalg.norm(square - square.T) / max(np.linalg.norm(square), 1e-12))
            parts.append(f"<p>Asymmetry of task-to-task use (source_i read as task i's prompt): "
                         f"{asym:.3f} (0 = symmetric).</p>")
    return "\n".join(parts) or "<p>No trials with a target value.</p>"


def build_report(source, out_dir, target: str = "score", mode: str = "max", findings=None,
                 experiment: str | None = None, max_trials: int = 2000, optuna_max_trials: int = 500,
                 n_boot: int = 50, random_state: int = 0) -> dict[str, Path]:
    """Analyse a study dir, CSV or MLflow URI; write the report files into ``out_dir``.

    ``max_trials`` caps the trials of the depth search, permutation importance and
    each bootstrap resample, ``optuna_max_trials`` those of fANOVA and PED-ANOVA
    (random subsamples); the sizes used are stated in the report and importance.csv.
    With ``mode="min"`` every method sees the negated target, so "greater" in a
    finding and a high importance both mean "better". Returns the written paths by name.
    """
    if mode not in ("max", "min"):
        raise InputError(f"mode got {mode!r}; allowed values: 'max', 'min'")
    started = time.perf_counter()
    table = load_trials(source, target=target, experiment=experiment)
    claims = load_findings(findings)  # validate before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = table.frame
    y = frame[target].to_numpy(float)
    better = y if mode == "max" else -y  # higher is better for every method below
    paths = {"trials": out / "trials.csv"}
    frame.to_csv(paths["trials"], index=False)

    configs = table.config_key
    encoder = KnobEncoder().fit(frame[table.knobs])
    X = encoder.transform(frame[table.knobs])
    groups = encoder.groups_
    raw = frame[table.knobs]
    results, skipped, fitted = [], {}, {}
    for name, factory in METHODS.items():
        kwargs = {"random_state": random_state}
        if name == "permutation":
            kwargs["max_trials"] = max_trials
        if name in ("fanova", "ped_anova"):
            kwargs["max_trials"] = optuna_max_trials
        method = factory(**kwargs)
        try:
            method.fit(raw if method.input == "raw" else X, better, groups)
        except InputError as exc:
            skipped[name] = str(exc)
            continue
        fitted[name] = method
        table.notes += [f"{name}: left out knob {k} ({why})" for k, why in getattr(method, "skipped_", {}).items()]
        imp = method.factor_importances_.copy()
        imp["rank"] = _rank(imp["importance"])
        imp["n_trials"] = method.n_trials_
        results.append(imp.rename_axis("factor").reset_index().assign(method=name))

    stability = None
    if "tree_regressor" in fitted:
        tree = fitted["tree_regressor"]
        stability = BootstrapRanks(depth=tree.best_depth_, n_boot=n_boot, max_trials=max_trials,
                                   random_state=random_state).fit(X, better, groups, clusters=configs)
        boot = stability.ranks_
        reg = results[list(fitted).index("tree_regressor")]
        for col in ("low", "high", "rank_low", "rank_high", "p_first"):
            reg[col] = reg["factor"].map(boot[col])
    columns = ["factor", "method", "importance", "rank", "low", "high", "rank_low", "rank_high", "p_first",
               "n_trials"]
    importance = (pd.concat(results).reindex(columns=columns) if results else pd.DataFrame(columns=columns))
    paths["importance"] = out / "importance.csv"
    importance.to_csv(paths["importance"], index=False)

    ranking = tree_cv_score = None
    if "tree_regressor" in fitted:
        ranking = fitted["tree_regressor"].feature_importances_.sort_values(ascending=False)
        tree_cv_score = fitted["tree_regressor"].cv_score_
    signed = frame.assign(**{target: better})
    verdicts = evaluate_findings(claims, signed, target, encoder.knobs_, feature_ranking=ranking, groups=groups,
                                 tree_cv_score=tree_cv_score, random_state=random_state)
    paths["findings"] = out / "findings.csv"
    verdicts.to_csv(paths["findings"], index=False)

    paths["tree"] = out / "tree.txt"
    tree_text = []
    for name in ("tree_regressor", "tree_classifier"):
        if name in fitted:
            m = fitted[name]
            extra = f", broken if {target} <= {m.threshold_:g}" if name == "tree_classifier" else ""
            tree_text.append(f"# {name}: depth {m.best_depth_} (CV score {m.cv_score_:.3f}{extra})\n{m.rules_}")
        else:
            tree_text.append(f"# {name}: not fitted: {skipped[name]}\n")
    paths["tree"].write_text("\n".join(tree_text))

    paths["html"] = out / "report.html"
    paths["html"].write_text(_html(table, configs, X, encoder, importance, fitted, skipped, stability, verdicts,
                                   mode, (max_trials, optuna_max_trials), n_boot, started))
    if not fitted:
        raise InputError(f"{source}: no importance method could run ({'; '.join(skipped.values())}); "
                         f"what could be computed is in {out}")
    return paths


def _html(table, configs, X, encoder, importance, fitted, skipped, stability, verdicts, mode, caps, n_boot,
          started) -> str:
    frame, target = table.frame, table.target
    ok = frame[np.isfinite(frame[target].to_numpy(float))]
    best = ok.sort_values(target, ascending=(mode == "min"))
    s = []
    s.append(f"<h1>Study analysis: {html.escape(str(table.source))}</h1>")
    s.append("<h2 id='summary'>Summary</h2><ul>")
    s.append(f"<li>{len(frame)} trials; target <code>{html.escape(target)}</code> ({mode}imised): "
             f"best {best[target].iloc[0]:.4g}, median {ok[target].median():.4g}</li>" if len(ok) else
             f"<li>{len(frame)} trials; no trial has a value of <code>{html.escape(target)}</code></li>")
    for status, count in table.counts().items():
        s.append(f"<li>{count} {html.escape(status)}: {html.escape(STATUS_TREATMENT.get(status, 'used as is'))}</li>")
    s.append(f"<li>Knobs analysed: {len(encoder.knobs_)} ({X.shape[1]} encoded columns); constant, left out: "
             f"{html.escape(', '.join(encoder.constant_knobs_) or 'none')}</li>")
    s.append(f"<li>Subsampling: the tree depth search, permutation importance and each bootstrap resample use "
             f"at most {caps[0]} trials, fANOVA and PED-ANOVA at most {caps[1]}, drawn at random; the final "
             f"trees use all trials; the bootstrap draws {n_boot} resamples.</li>")
    groups = ok.groupby(configs[ok.index])[target]
    repeated = groups.std().dropna()
    if len(repeated):
        s.append(f"<li>Seed noise (F18): {len(repeated)} settings were repeated; median spread (std) of "
                 f"{target} across seeds {repeated.median():.3g}.</li>")
    for note in table.notes:
        s.append(f"<li>{html.escape(note)}</li>")
    s.append(f"<li>Analysis took {time.perf_counter() - started:.1f} s before this page was drawn.</li></ul>")
    if skipped:
        s.append("<h3>Methods not run</h3><table class='data' id='skipped'><tr><th>method</th><th>reason</th></tr>")
        s += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in skipped.items()]
        s.append("</table>")

    s.append("<h2 id='best'>Best configurations</h2>")
    s.append(_table(best.head(5)[["trial_id", "status", target, *table.knobs]].set_index("trial_id")))

    s.append("<h2 id='importance'>Factor importance</h2>")
    for method, part in importance.groupby("method", sort=False):
        s.append(f"<h3>{html.escape(method)} ({int(part['n_trials'].iloc[0])} trials)</h3>")
        s.append(f'<img class="chart" alt="importance {html.escape(method)}" '
                 f'src="{charts.importance_chart(part, method)}">')
    if stability is not None:
        s.append("<h3>Rank stability (bootstrap over configurations"
                 f"{' and seeds' if stability.has_repeats_ else ''}, {stability.n_trials_} trials per resample)</h3>")
        s.append(_table(stability.ranks_.sort_values("rank").head(15)))
    s.append(_table(importance.set_index(["method", "factor"])))

    if "tree_regressor" in fitted:
        tree = fitted["tree_regressor"]
        s.append(f"<h2 id='tree'>Decision tree (depth {tree.best_depth_} by CV, R<sup>2</sup> {tree.cv_score_:.3f})</h2>")
        s.append(f'<img class="chart" alt="decision tree" src="{charts.tree_chart(tree.estimator_, list(X.columns))}">')
        s.append(f"<pre>{html.escape(tree.rules_)}</pre>")
        top = tree.factor_importances_["importance"].sort_values(ascending=False).head(4).index
        s.append("<h2 id='factors'>Score against the top factors</h2>")
        raw = mark_not_applicable(ok, table.knobs)
        for knob in top:
            numeric = pd.to_numeric(raw[knob], errors="coerce")
            is_numeric = numeric.notna().all() and numeric.nunique() > 10
            values = numeric if is_numeric else raw[knob].astype(str)
            s.append(f'<img class="chart" alt="{html.escape(knob)}" '
                     f'src="{charts.factor_chart(values, ok[target], knob, target, is_numeric)}">')

    tasks = [c for c in frame.columns if c.startswith("val/") and c.count("/") == 1]
    if tasks:
        s.append("<h2 id='tasks'>Per-task scores</h2>")
        per_task = pd.DataFrame({"mean": ok[tasks].mean(), "best trial": best[tasks].iloc[0],
                                 "max": ok[tasks].max()})
        s.append(_table(per_task))

    s.append("<h2 id='router'>Router heatmaps of the best trials</h2>")
    s.append(_router_section(best, target))

    s.append("<h2 id='findings'>Findings</h2>")
    s.append(_table(verdicts.set_index("id"), cls="data findings"))
    body = "\n".join(s)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Study analysis</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table.data {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
table.data td, table.data th {{ border: 1px solid #ccc; padding: 2px 6px; }}
img.chart {{ max-width: 100%; margin: 0.5em; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 11px; }}
</style></head><body>
{body}
</body></html>
"""
