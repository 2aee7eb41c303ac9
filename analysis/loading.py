"""Trial results -> one tidy table, one row per trial.

Three sources share one output (:class:`TrialTable`): a study directory (Ray
Tune's trial folders), an MLflow experiment (one run per trial), or any CSV
whose columns are knobs and metrics. Loaders are registered by name in
:data:`LOADERS`; :func:`load_trials` picks the first that accepts the source.

Errored and early-stopped trials are kept and marked in the ``status`` column
(``ok`` / ``early_stopped`` / ``error``); what each analysis does with them is
decided later and written into the report (:data:`STATUS_TREATMENT`). Each trial's
per-epoch history of the target is kept in columns ``<target>@<epoch>``
(:func:`history_column`), so that trials can be compared at a common budget.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import yaml

from routed_study.trainables.errors import InputError, did_you_mean
from routed_study.trainables.results import (DESIGN_KEYS, EPOCH, REPEAT_INDEX_KEY, TIMING_METRICS,
                                             TRAINING_ITERATION, stopped_early)

#: How each trial status enters the analysis (also printed in the report).
STATUS_TREATMENT = {
    "ok": "used as reported (final epoch)",
    "early_stopped": "in claims: its score at the rung every compared trial reached, carried to the final "
                     "budget by the regression of final on that score among the trials that went on "
                     "(the completed-only view is shown beside it); elsewhere its last reported value",
    "error": "no target value: a failure; claims compare failure rates (Fisher exact) and, where a claim "
             "is about 'better', give it the worst observed score (worst rank); counted as 'broken' by "
             "the good/broken classifier",
}

#: Result columns that are metrics or bookkeeping, never knobs.
METRIC_PREFIXES = ("val/", "test/", "train/", "best/")
BOOKKEEPING = {"trial_id", "status", "epochs_run", "seed", "error", "trial_dir",
               "score", "test_score", "train_loss", "tau", EPOCH, "step", TRAINING_ITERATION,
               *TIMING_METRICS, "timestamp", "done", "date", "pid", "hostname",
               "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
               "experiment_tag", "run_id", "start_time", "end_time",
               "step_seconds", "gpu_peak_mib", "gpu_reserved_peak_mib"}


#: A trial's target at one epoch is kept in column ``<target>@<epoch>`` (its per-epoch history).
HISTORY_SEP = "@"


def history_column(target: str, epoch: int) -> str:
    return f"{target}{HISTORY_SEP}{int(epoch)}"


def history_epochs(frame: pd.DataFrame, target: str) -> list[tuple[int, str]]:
    """``(epoch, column)`` of the target's per-epoch history columns, by epoch."""
    prefix = f"{target}{HISTORY_SEP}"
    found = [(int(c[len(prefix):]), c) for c in frame.columns
             if isinstance(c, str) and c.startswith(prefix) and c[len(prefix):].isdigit()]
    return sorted(found)


@dataclass
class TrialTable:
    """Trials of one study as a DataFrame plus which columns are knobs and which is the target.

    ``frame`` has one row per trial: the knob columns (raw values, NaN where a
    trial did not set the knob), ``status``, ``epochs_run``, ``seed``, the
    target's final value (column ``target``) and best value over epochs
    (``best_<target>``), and every other metric of the last report.
    """

    frame: pd.DataFrame
    knobs: list[str]
    target: str
    source: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.target not in self.frame.columns:
            metrics = [c for c in self.frame.columns if c not in self.knobs]
            raise InputError(f"{self.source}: no column '{self.target}' for the target"
                             f"{did_you_mean(self.target, metrics)}; metric columns: "
                             f"{', '.join(metrics) or '(none)'}")
        if not self.knobs:
            raise InputError(f"{self.source}: no knob columns found (expected knob names such as "
                             f"learning_rate, or columns prefixed 'config/')")

    @property
    def config_key(self) -> pd.Series:
        """A group number per row: rows with the same knob setting except the seed (repeats)."""
        knobs = [k for k in self.knobs if k != "seed"]
        keys = self.frame[knobs].astype(object).where(self.frame[knobs].notna(), "n/a")
        return keys.groupby(knobs, sort=False, dropna=False).ngroup()

    def counts(self) -> dict[str, int]:
        return self.frame["status"].value_counts().to_dict()


def _parse_value(text: Any) -> Any:
    """MLflow stores params as strings; turn 'true' / '0.01' / 'None' back into values."""
    if not isinstance(text, str):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None or text in ("None", "nan", ""):
        return np.nan
    if text in ("True", "False"):
        return text == "True"
    return value if isinstance(value, (bool, int, float, str)) else text


def _finish(rows: list[dict], target: str, source: str, notes: list[str]) -> TrialTable:
    frame = pd.DataFrame(rows)
    if "seed" in frame:  # the effective seed (config seed + repeat index) replaces the configured one
        frame = frame.drop(columns=[c for c in ("config/seed",) if c in frame])
    knobs = [c for c in frame.columns if c.startswith("config/")]
    frame = frame.rename(columns={c: c[len("config/"):] for c in knobs})
    knobs = [c[len("config/"):] for c in knobs if not c.startswith("config/__")]
    # Bookkeeping keys go, except a designed study's (the analysis of the design reads them).
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("__") and c not in DESIGN_KEYS])
    return TrialTable(frame=frame, knobs=knobs, target=target, source=source, notes=notes)


class Loader(ABC):
    """Reads one kind of source into rows (``config/<knob>`` keys for knobs)."""

    name: ClassVar[str]

    @staticmethod
    @abstractmethod
    def accepts(source: str) -> bool: ...

    @abstractmethod
    def load(self, source: str, target: str, experiment: str | None) -> TrialTable: ...


def _status(config: dict, last: dict, errored: bool) -> str:
    if errored:
        return "error"
    return "early_stopped" if stopped_early(config, last) else "ok"


def _seed(config: dict) -> float:
    # Ray's Repeater adds the repeat index to the configured seed (trainable contract).
    return float(config.get("seed", 0)) + float(config.get(REPEAT_INDEX_KEY, 0))


def _history(results: list[dict], target: str) -> dict[str, float]:
    """``{<target>@<epoch>: value}`` of a trial's results (its epoch, else Ray's iteration count)."""
    out = {}
    for r in results:
        value, epoch = r.get(target), r.get(EPOCH, r.get(TRAINING_ITERATION))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(epoch, (int, float)):
            out[history_column(target, epoch)] = float(value)
    return out


class StudyDirLoader(Loader):
    """A Ray Tune experiment directory: one sub-folder per trial with params.json / result.json."""

    name = "study_dir"

    @staticmethod
    def accepts(source: str) -> bool:
        return Path(source).is_dir()

    def load(self, source: str, target: str, experiment: str | None) -> TrialTable:
        trial_dirs = sorted(p.parent for p in Path(source).glob("*/params.json"))
        if not trial_dirs:
            raise InputError(f"{source}: not a study directory (no trial folder with params.json); "
                             f"give a study dir, a CSV file or an MLflow tracking URI")
        rows = []
        for trial_dir in trial_dirs:
            config = json.loads((trial_dir / "params.json").read_text())
            results = []
            result_file = trial_dir / "result.json"
            if result_file.is_file():
                results = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
            last = results[-1] if results else {}
            errored = (trial_dir / "error.txt").is_file()
            row = {f"config/{k}": v for k, v in config.items()}
            row.update({k: v for k, v in last.items() if isinstance(v, (int, float, str, bool)) and k != "config"})
            history = _history(results, target)
            row.update(trial_id=trial_dir.name, trial_dir=str(trial_dir),
                       status=_status(config, last, errored),
                       epochs_run=len(results), seed=_seed(config),
                       **{f"best_{target}": max(history.values()) if history else np.nan}, **history)
            if errored:
                row["error"] = (trial_dir / "error.txt").read_text().strip().splitlines()[-1][:200]
            rows.append(row)
        return _finish(rows, target, source, [f"{len(rows)} trial folders read from {source}"])


class CsvLoader(Loader):
    """Any CSV: knob columns (optionally prefixed 'config/' as Ray writes them) and metric columns."""

    name = "csv"

    @staticmethod
    def accepts(source: str) -> bool:
        return Path(source).is_file() and Path(source).suffix.lower() in (".csv", ".tsv", ".gz", ".bz2")

    def load(self, source: str, target: str, experiment: str | None) -> TrialTable:
        try:
            frame = pd.read_csv(source, sep="\t" if source.endswith(".tsv") else ",")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: cannot read as CSV ({str(exc).splitlines()[0]})") from exc
        prefixed = [c for c in frame.columns if c.startswith("config/")]
        if not prefixed:
            # Unprefixed: every column that is not a known metric or bookkeeping column is a
            # knob (prefix knobs with 'config/' to keep other metric columns out).
            knob_cols = [c for c in frame.columns if c != target and c not in BOOKKEEPING
                         and not c.startswith(METRIC_PREFIXES) and not c.startswith("best_")
                         and HISTORY_SEP not in c]
            frame = frame.rename(columns={c: f"config/{c}" for c in knob_cols})
        frame = frame.rename(columns={"trial_status": "status"})
        # Where a row gives no status, it is early-stopped by the same rule as a study's trials
        # (its last reported epoch comes before its planned epochs).
        configs = frame[[c for c in frame.columns if c.startswith("config/")]].rename(
            columns=lambda c: c[len("config/"):]).to_dict("records")
        inferred = ["early_stopped" if stopped_early({k: v for k, v in c.items() if pd.notna(v)}, last) else "ok"
                    for c, last in zip(configs, frame.to_dict("records"))]
        given = frame["status"] if "status" in frame else pd.Series(np.nan, index=frame.index)
        frame["status"] = given.where(given.notna(), pd.Series(inferred, index=frame.index)).astype(str).str.lower()
        frame["status"] = frame["status"].replace(
            {"terminated": "ok", "finished": "ok", "errored": "error", "failed": "error",
             "pruned": "early_stopped"})
        if "seed" not in frame:
            frame["seed"] = frame["config/seed"] if "config/seed" in frame else 0
        if "trial_id" not in frame:
            frame["trial_id"] = [f"row_{i + 2}" for i in range(len(frame))]  # CSV line numbers
        history = [c for _, c in history_epochs(frame, target)]
        if "epochs_run" not in frame:
            frame["epochs_run"] = frame.get(EPOCH, frame.get(TRAINING_ITERATION, np.nan))
            if history:
                frame["epochs_run"] = frame["epochs_run"].fillna(frame[history].notna().sum(axis=1))
        if target in frame and f"best_{target}" not in frame:
            frame[f"best_{target}"] = frame[history].max(axis=1) if history else frame[target]
        return _finish(frame.to_dict("records"), target, source, [f"{len(frame)} rows read from {source}"])


class MlflowLoader(Loader):
    """An MLflow tracking URI (sqlite:///..., http://...) and an experiment: one run per trial."""

    name = "mlflow"

    @staticmethod
    def accepts(source: str) -> bool:
        return "://" in source or source.startswith(("sqlite:", "databricks"))

    def load(self, source: str, target: str, experiment: str | None) -> TrialTable:
        from mlflow.tracking import MlflowClient  # heavy import: only when this source is used

        client = MlflowClient(tracking_uri=source)
        experiments = [e for e in client.search_experiments() if e.name != "Default"]
        if experiment is None:
            if len(experiments) != 1:
                raise InputError(f"{source}: name the experiment with --experiment; found: "
                                 f"{', '.join(e.name for e in experiments) or '(none)'}")
            chosen = experiments[0]
        else:
            chosen = next((e for e in experiments if e.name == experiment), None)
            if chosen is None:
                names = [e.name for e in experiments]
                raise InputError(f"{source}: no experiment '{experiment}'{did_you_mean(experiment, names)}; "
                                 f"experiments: {', '.join(names) or '(none)'}")
        runs = client.search_runs([chosen.experiment_id], max_results=50000)
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}
        runs = [r for r in runs if r.info.run_id not in parents]  # parent runs summarise, trials are children
        rows = []
        for run in runs:
            config = {k: _parse_value(v) for k, v in run.data.params.items()}
            metrics = dict(run.data.metrics)
            steps = client.get_metric_history(run.info.run_id, target) if target in metrics else []
            history = {history_column(target, m.step): m.value for m in steps}
            failed = run.info.status == "FAILED"
            row = {f"config/{k}": v for k, v in config.items()}
            row.update(metrics)
            row.update(trial_id=run.data.tags.get("trial_name", run.info.run_id), run_id=run.info.run_id,
                       status=_status(config, metrics, failed), epochs_run=len(history) or np.nan,
                       seed=_seed(config), **{f"best_{target}": max(history.values()) if history else np.nan},
                       **history)
            rows.append(row)
        if not rows:
            raise InputError(f"{source}: experiment '{chosen.name}' has no runs")
        return _finish(rows, target, source, [f"{len(rows)} runs read from experiment '{chosen.name}'"])


#: Source kinds, tried in order.
LOADERS: dict[str, type[Loader]] = {cls.name: cls for cls in (StudyDirLoader, CsvLoader, MlflowLoader)}


def load_trials(source: str | Path, target: str = "score", experiment: str | None = None) -> TrialTable:
    """Load any supported source; a study dir with no trial folders but an mlflow.db reads MLflow."""
    source = str(source)
    for loader in LOADERS.values():
        if loader.accepts(source):
            table = loader().load(source, target, experiment)
            break
    else:
        raise InputError(f"{source}: not found or not a supported source; give a study directory, "
                         f"a .csv file, or an MLflow tracking URI such as sqlite:///path/mlflow.db")
    values = pd.to_numeric(table.frame[table.target], errors="coerce")
    if values.isna().all():
        raise InputError(f"{source}: target column '{target}' has no numeric values")
    table.frame[table.target] = values
    # A trial without a target value cannot be 'ok', whatever its status said.
    table.frame.loc[values.isna() & (table.frame["status"] == "ok"), "status"] = "error"
    return table
