"""The analysis report: trials.csv, importance.csv, findings.csv, tree.txt and report.html.

``build_report`` loads the trials, fits every registered importance method it can on one
:class:`~analysis.importance.Design`, judges the findings on one
:class:`~analysis.findings.Evidence` (which carries the fitted methods for the kinds that
use them) and renders ``templates/report.html.j2``. Each section of the page has one small
function here that gathers its data; the templates only lay it out. The page opens with
the verdicts, then which knobs matter, then the detail. A method that cannot run on the
data is listed with the reason and the rest is still written; if no method at all could
run, InputError is raised after writing what could be computed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import jinja2
import numpy as np
import pandas as pd

from routed_study.analysis import charts
from routed_study.analysis.designs import StudyDesign, design_of, elementary_effects
from routed_study.analysis.effects import study_effects
from routed_study.analysis.encoding import KnobEncoder, mark_not_applicable
from routed_study.analysis.findings import CORRECTION_TEXT, Evidence, evaluate_findings, load_findings
from routed_study.analysis.importance import COMPLETED_VIEW, METHODS, Design
from routed_study.analysis.interactions import pair_strengths
from routed_study.analysis.loading import STATUS_TREATMENT, load_trials
from routed_study.analysis.ranking import EXTRAS_KEY
from routed_study.analysis.routing import router_asymmetry
from routed_study.trainables.errors import InputError, format_choices
from routed_study.trainables.plugins import load_plugins

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("routed_study.analysis", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def _table(frame: pd.DataFrame, cls: str = "data") -> str:
    return frame.to_html(classes=cls, float_format="{:.4g}".format, na_rep="", border=0, escape=True)


def common_budget_design(evidence: Evidence, knobs: list[str], encoder: KnobEncoder,
                         why_not_completed: dict) -> Design | None:
    """Every trial at the study's common budget (the last epoch every non-failed trial reached;
    errored trials keep their failure), or None where early stops left no common epoch. A
    partly-trained score measures learning speed as much as the final score: the page says so."""
    study = study_effects(evidence)
    rung = study.common_rung(~study.failed)
    if rung is None or not study.stopped.any():
        return None
    y = np.where(study.failed, study.y, study.score_at(rung))
    reason = next(iter(why_not_completed.values()), "")
    view = (f"every trial at epoch {rung}, the budget all reached (the completed trials alone were too few: "
            f"{reason}); a score at epoch {rung} shows learning speed as much as the final score")
    return Design.from_frame(evidence.frame, knobs, y, evidence.clusters, encoder, view=view)


def fit_methods(design: Design, names: Sequence[str], random_state: int) -> tuple[dict, dict]:
    """Fit each named method with its own defaults (and the report's random_state where it takes one)."""
    fitted, skipped = {}, {}
    for name in names:
        cls = METHODS[name]
        kwargs = {"random_state": random_state} if "random_state" in cls().get_params() else {}
        try:
            fitted[name] = cls(**kwargs).fit(design)
        except InputError as exc:
            skipped[name] = str(exc)
    return fitted, skipped


def importance_table(fitted: dict, view: str = COMPLETED_VIEW) -> pd.DataFrame:
    """One row per method and knob; rank 1 = most important, importance <= 0 unranked; ``view``:
    which trials and scores the methods were fitted on."""
    columns = ["factor", "method", "importance", "rank", "low", "high", "p_value", "verdict", "n_trials", "view"]
    parts = []
    for name, method in fitted.items():
        imp = method.factor_importances_.copy()
        imp["rank"] = imp["importance"].where(imp["importance"] > 0).rank(ascending=False, method="min")
        imp["n_trials"] = method.n_trials_
        imp["view"] = view
        parts.append(imp.rename_axis("factor").reset_index().assign(method=name))
    return pd.concat(parts).reindex(columns=columns) if parts else pd.DataFrame(columns=columns)


def interaction_pairs(entries) -> list[tuple[str, str, str]]:
    """(claim, condition knob, knob) for every claim that compares a knob within a condition (F8, F9, F11)."""
    return [(e.id, w, e.knob) for e in entries for w in (getattr(e, "within", None) or {})
            if getattr(e, "knob", None) and w != e.knob]


# --- sections: each gathers what its template shows -------------------------------------------------

def verdict_section(verdicts: pd.DataFrame, alpha: float) -> dict:
    rows = []
    for r in verdicts.to_dict("records"):
        effect = _fmt(r["effect"])
        if effect and _fmt(r["ci_low"]):
            effect += f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        size = f"{_fmt(r['n_configs'])} x {_fmt(r['n_seeds'])}" if _fmt(r["n_configs"]) else ""
        view = r.get("view")
        treatment = " ".join(str(x) for x in (f"view: {view};" if isinstance(view, str) else "",
                                              r.get("treatment")) if isinstance(x, str) and x)
        rows.append({"id": r["id"], "statement": r["statement"], "verdict": r["verdict"], "effect": effect,
                     "size": size, "p_value": _fmt(r["p_value"]), "p_adjusted": _fmt(r["p_adjusted"]),
                     "treatment": treatment, "needed": _fmt(r["trials_needed"]), "reason": r["reason"]})
    return {"rows": rows, "n": len(rows), "correction": CORRECTION_TEXT, "alpha": alpha}


def importance_section(importance: pd.DataFrame, fitted: dict, skipped: dict, view: str) -> dict:
    section = {"chart": None, "skipped": skipped, "note": "", "null_table": [], "null_method": "",
               "table": _table(importance.drop(columns="view").set_index(["method", "factor"]))
               if len(importance) else ""}
    if not len(importance):
        return section
    section["chart"] = charts.importance_chart(importance)
    section["note"] = f"Fitted on {view}. Trials per method: " + ", ".join(
        f"{name} {m.n_trials_}" for name, m in fitted.items()) + ". " + " ".join(
        f"{name}: {(m.__doc__ or '').strip().splitlines()[0]}" for name, m in fitted.items())
    with_null = [n for n, m in fitted.items() if m.factor_importances_["verdict"].astype(bool).any()]
    if with_null:
        name = with_null[0]
        imp = fitted[name].factor_importances_.sort_values("importance", ascending=False)
        section["null_method"] = name
        section["null_table"] = [
            {"knob": knob, "verdict": r["verdict"], "css": r["verdict"].replace(" ", "-"),
             "importance": f"{_fmt(r['importance'])} [{_fmt(r['low'])}, {_fmt(r['high'])}]", "p": _fmt(r["p_value"])}
            for knob, r in imp.iterrows()]
    return section


def summary_section(table, evidence: Evidence, design: Design, encoder: KnobEncoder, fitted: dict, mode: str,
                    started: float) -> dict:
    frame, target = evidence.frame, table.target
    ok = frame[np.isfinite(frame[target].to_numpy(float))]
    sign = 1 if mode == "max" else -1
    lines = [f"{len(frame)} trials in {len(np.unique(evidence.clusters))} configurations; target {target} "
             f"({mode}imised)" + (f": best {sign * ok[target].max():.4g}, median {sign * ok[target].median():.4g}"
                                  if len(ok) else ": no trial has a value")]
    lines += [f"{count} {status}: {STATUS_TREATMENT.get(status, 'used as is')}"
              for status, count in table.counts().items()]
    stopped = int((frame["status"] == "early_stopped").sum()) if "status" in frame else 0
    if design.view == COMPLETED_VIEW:
        lines.append(f"Importance methods and the ranking claim (F1): {len(design.y)} {COMPLETED_VIEW}; "
                     f"{stopped} early-stopped trials left out (a partly-trained score measures learning speed, "
                     f"not the final score)")
    else:
        lines.append(f"Importance methods: {len(design.y)} trials, {design.view}. The ranking claim (F1) uses "
                     f"{COMPLETED_VIEW} only.")
    lines.append(f"Knobs analysed: {len(encoder.knobs_)} ({len(encoder.feature_names_out_)} encoded columns; "
                 f"a knob is not applicable where the knob table says it is inert); constant, left out: "
                 f"{', '.join(encoder.constant_knobs_) or 'none'}")
    for name, method in fitted.items():
        if hasattr(method, "cv_score_") and hasattr(method, "cv_p_"):
            lines.append(f"{name}: held-out fit on folds grouped by configuration, R^2 {method.cv_score_:.3f} "
                         f"(p {method.cv_p_:.2g} that it predicts unseen configurations no better than their "
                         f"mean); {method.n_trials_} trials of {method.n_configs_} configurations used")
    lines += table.notes
    lines.append(f"Analysis took {time.perf_counter() - started:.1f} s before this page was drawn.")
    return {"source": str(table.source), "lines": lines}


def design_section(study_design: StudyDesign, evidence: Evidence) -> tuple[dict, pd.DataFrame | None]:
    """Which design the trials came from and why its verdicts hold; a screening study's Morris
    statistics per knob."""
    section = {"name": study_design.name, "why": study_design.why, "points": study_design.n_points,
               "bases": study_design.n_bases, "table": ""}
    effects = None
    if study_design.name == "screening":
        try:
            effects = elementary_effects(evidence.frame, evidence.target, random_state=evidence.random_state)
        except InputError as exc:
            section["why"] += f" (elementary effects not computed: {exc})"
        else:
            section["table"] = _table(effects.set_index("knob"))
    return section, effects


def interaction_section(fitted: dict, design: Design, entries) -> tuple[dict, pd.DataFrame | None]:
    pairs = interaction_pairs(entries)
    if "forest" not in fitted or not pairs:
        return {"rows": [], "why": "No forest surrogate was fitted, or no claim names a pair of knobs."}, None
    strengths = pair_strengths(fitted["forest"], design, pairs)
    rows = [{"claim": r["claim"], "knobs": f"{r['knob_a']} x {r['knob_b']}",
             "h": f"{_fmt(r['h'])} [{_fmt(r['low'])}, {_fmt(r['high'])}]" if np.isfinite(r["h"]) else "",
             "note": r["note"]} for r in strengths.to_dict("records")]
    return {"rows": rows, "why": ""}, strengths


def best_section(table, best: pd.DataFrame) -> dict:
    return {"table": _table(best.head(5)[["trial_id", "status", table.target, *table.knobs]].set_index("trial_id"))}


def tree_sections(fitted: dict, design: Design) -> list[dict]:
    """Every fitted method that has decision rules (``rules_``; a tree chart where it has ``estimator_``)."""
    out = []
    for name, method in fitted.items():
        if not hasattr(method, "rules_"):
            continue
        chart = (charts.tree_chart(method.estimator_, list(design.X.columns)) if hasattr(method, "estimator_")
                 else None)
        describe = getattr(method, "describe", None)
        out.append({"method": name, "description": describe() if describe else "", "chart": chart,
                    "rules": method.rules_})
    return out


def factor_section(importance: pd.DataFrame, table, ok: pd.DataFrame, top: int = 4) -> dict:
    if not len(importance):
        return {"charts": [], "why": "No importance method could run."}
    order = importance.groupby("factor")["rank"].median().sort_values().index[:top]
    raw = mark_not_applicable(ok, table.knobs)
    out = []
    for knob in order:
        numeric = pd.to_numeric(raw[knob], errors="coerce")
        is_numeric = numeric.notna().all() and numeric.nunique() > 10
        values = numeric if is_numeric else raw[knob].astype(str)
        out.append({"knob": knob, "src": charts.factor_chart(values, ok[table.target], knob, table.target,
                                                             is_numeric)})
    return {"charts": out, "why": ""}


def task_section(frame: pd.DataFrame, ok: pd.DataFrame, best: pd.DataFrame) -> dict:
    tasks = [c for c in frame.columns if c.startswith("val/") and c.count("/") == 1]
    if not tasks or not len(ok):
        return {"table": ""}
    return {"table": _table(pd.DataFrame({"mean": ok[tasks].mean(), "best trial": best[tasks].iloc[0],
                                          "max": ok[tasks].max()}))}


def router_section(best: pd.DataFrame, target: str, top: int = 3) -> dict:
    """Heatmaps of the best trials' router matrices, labelled with the matrix's own rows and columns."""
    if "trial_dir" not in best:
        return {"why": "No trial folders in this source: router matrices are only read from a study directory.",
                "trials": []}
    trials = []
    asymmetry = router_asymmetry(best.head(top)).set_index("trial_id")
    for _, row in best.head(top).iterrows():
        entry = {"trial_id": str(row["trial_id"]), "score": f"{target} = {row[target]:.4g}", "chart": None,
                 "lines": []}
        path = Path(str(row["trial_dir"])) / "router_matrix.csv"
        if not path.is_file():
            entry["lines"].append("no router_matrix.csv in its folder")
            trials.append(entry)
            continue
        matrix = pd.read_csv(path, index_col=0)
        entry["chart"] = charts.heatmap(matrix, "router logits (rows: tasks; columns: candidates)")
        if not matrix.to_numpy(float).any():
            # Logits start at 0; still 0 means no gradient ever reached them.
            entry["lines"].append("The router never moved from its initial 0: in this configuration the scores do "
                                  "not shape the prompt (route_method=const, compose_method=concat, one selected "
                                  "candidate normalised to 1, or target_share=1), so it shows no routing.")
        else:
            strongest = matrix.idxmax(axis=1)  # the sigmoid is monotone: the largest logit is the strongest
            entry["lines"].append("Strongest candidate per task: " + ", ".join(
                f"{t} -> {c}" for t, c in strongest.items()))
        mine = asymmetry.loc[row["trial_id"]]
        entry["lines"].append(f"Asymmetry of task-to-task use (F17): {mine['asymmetry']:.3f} (0 = symmetric, "
                              f"1 = one-way)" if mine["usable"] else f"No F17 asymmetry: {mine['why']}.")
        trials.append(entry)
    return {"why": "" if trials else "No trials with a target value.", "trials": trials}


def build_report(source, out_dir, target: str = "score", mode: str = "max", findings=None,
                 experiment: str | None = None, methods: Sequence[str] | None = None,
                 plugins: Sequence[str] = (), alpha: float = 0.05, random_state: int = 0) -> dict[str, Path]:
    """Analyse a study dir, CSV or MLflow URI; write the report files into ``out_dir``.

    ``methods``: importance methods to run (default: every registered one); ``plugins``: modules
    imported first (a researcher's own importance methods and finding kinds). With
    ``mode="min"`` every method and claim sees the negated target, so "greater" in a finding and
    a high importance both mean "better". Returns the written paths by name.
    """
    load_plugins(plugins, where="--plugins")
    if mode not in ("max", "min"):
        raise InputError(f"mode got {mode!r}; allowed values: 'max', 'min'")
    names = list(METHODS) if methods is None else list(methods)
    for name in names:
        if name not in METHODS:
            raise InputError(f"--methods: unknown importance method {name!r}; allowed values: "
                             f"{format_choices(METHODS)}")
    started = time.perf_counter()
    table = load_trials(source, target=target, experiment=experiment)
    entries = load_findings(findings)  # validate before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.csv"}
    table.frame.to_csv(paths["trials"], index=False)

    evidence = Evidence.from_table(table, mode=mode, alpha=alpha, random_state=random_state)
    knobs = [k for k in table.knobs if k != "seed"]  # the seed is the repeat, never a factor
    encoder = KnobEncoder().fit(table.frame[knobs])
    design = Design.completed(evidence.frame, knobs, target, evidence.clusters, encoder)
    fitted, skipped = fit_methods(design, names, random_state)
    # The claims (F1 among them) see the completed trials only; the page's importance falls back
    # to the common budget when too few trials completed to fit any method on them.
    evidence.extras.update({"design": design, EXTRAS_KEY: dict(fitted)})
    if not fitted:
        budget = common_budget_design(evidence, knobs, encoder, skipped)
        if budget is not None:
            design = budget
            fitted, skipped = fit_methods(design, names, random_state)

    importance = importance_table(fitted, design.view)
    paths["importance"] = out / "importance.csv"
    importance.to_csv(paths["importance"], index=False)
    verdicts = evaluate_findings(entries, evidence)
    paths["findings"] = out / "findings.csv"
    verdicts.to_csv(paths["findings"], index=False)

    study_design, effects = design_section(design_of(table.frame), evidence)
    if effects is not None:
        paths["elementary_effects"] = out / "elementary_effects.csv"
        effects.to_csv(paths["elementary_effects"], index=False)
    interactions, strengths = interaction_section(fitted, design, entries)
    if strengths is not None:
        paths["interactions"] = out / "interactions.csv"
        strengths.to_csv(paths["interactions"], index=False)
    trees = tree_sections(fitted, design)
    paths["tree"] = out / "tree.txt"
    paths["tree"].write_text("\n".join(f"# {t['method']}: {t['description']}\n{t['rules']}" for t in trees)
                             + "".join(f"# {n}: not fitted: {why}\n" for n, why in skipped.items()))

    frame = table.frame
    ok = frame[np.isfinite(frame[target].to_numpy(float))]
    best = ok.sort_values(target, ascending=(mode == "min"))
    page = TEMPLATES.get_template("report.html.j2").render(
        verdicts=verdict_section(verdicts, alpha),
        design=study_design,
        importance=importance_section(importance, fitted, skipped, design.view),
        interactions=interactions,
        best=best_section(table, best),
        trees=trees,
        factors=factor_section(importance, table, ok),
        tasks=task_section(frame, ok, best),
        router=router_section(best, target),
        summary=summary_section(table, evidence, design, encoder, fitted, mode, started))
    paths["html"] = out / "report.html"
    paths["html"].write_text(page)
    if not fitted:
        raise InputError(f"{source}: no importance method could run ({'; '.join(skipped.values())}); "
                         f"what could be computed is in {out}")
    return paths
