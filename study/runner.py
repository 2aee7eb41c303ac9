"""Run and resume a study: Ray Tune schedules trials, Optuna proposes them, MLflow records them.

One study = one Ray Tune experiment in ``<storage>/<name>/`` (Ray's trial
directories plus ``study.yaml``, ``optuna.db``, ``mlflow.db``, ``mlartifacts/`` and
``report/``). The storage may be a local directory or a URI such as ``s3://bucket/studies``
(multi-node clusters); the Optuna and MLflow stores are whatever URLs the spec names.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from ray.tune.search.optuna import OptunaSearch

from routed_study.trainables.errors import InputError
from routed_study.trainables.results import (DESIGN_KEY, DESIGN_KEYS, DESIGN_POINT_KEY, OPTUNA_TRIAL_KEY,
                                             best, stopped_early)
from routed_study.trainables.routed_prompt.config import knob_values

from routed_study.study.location import Location
from routed_study.study.designs import SEED_KNOB
from routed_study.study.progress import StudyProgress
from routed_study.study.spec import StudySpec
from routed_study.study.tracking import (StudyMLflowCallback, ensure_experiment, ensure_parent_run, finish_parent_run,
                            runs_page)

if TYPE_CHECKING:
    from ray.tune import ResultGrid

SPEC_FILE = "study.yaml"
#: Checkpoints kept per trial: the latest for resuming, one before it in case a write was cut.
CHECKPOINTS_KEPT = 2


@dataclass
class StudyOutcome:
    """What a finished (or interrupted-and-resumed) study produced."""

    name: str
    study_dir: Location
    num_trials: int          # Ray trials (configurations x repeats)
    completed: int           # ended without error (ASHA-stopped trials included)
    stopped_early: int       # completed before the last epoch (stopped by the scheduler)
    errored: int
    unfinished: int          # neither completed nor errored: the run was interrupted (resume it)
    best_score: float | None
    best_config: dict[str, Any] | None
    best_trial_id: str | None
    wall_time_s: float       # the whole call: Ray start, tracking, fit, report
    fit_time_s: float        # Tuner.fit() alone
    fit_started_at: float    # wall clock (time.time()) when Tuner.fit() began
    tracking_uri: str
    parent_run_id: str
    report_paths: dict[str, Path] = field(default_factory=dict)
    results: "ResultGrid | None" = field(default=None, repr=False)

    def summary(self) -> str:
        best = "-" if self.best_score is None else f"{self.best_score:.4g} ({self.best_trial_id})"
        text = (f"study '{self.name}': {self.num_trials} trials, {self.completed} completed "
                f"({self.stopped_early} stopped early), {self.errored} errored; best score {best}; "
                f"{self.wall_time_s:.0f}s; results in {self.study_dir}")
        if self.unfinished:
            text += (f"; interrupted with {self.unfinished} trials unfinished: "
                     f"`routed-study resume {self.study_dir}` continues it")
        return text


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that ties Ray and Optuna trials together and records early stops as PRUNED.

    It writes the Optuna trial number into each Ray trial's config (key
    ``__optuna_trial_number__``, ignored by the trainable), which links a Ray trial,
    its MLflow run and its row in ``optuna.db``. A trial the scheduler stopped
    (fewer training iterations, one per epoch, than its ``epochs`` knob) is told
    to Optuna as PRUNED, with its per-epoch values as intermediate values, instead
    of COMPLETE with a partly-trained score (what the base class does).

    A designed study (``design``: its points) enqueues every point once in the Optuna study,
    its design keys and seed as the trial's user attributes; each Ray trial takes the next
    waiting one (Optuna's own queue, kept in ``optuna.db``, so a resumed study continues it)
    and carries those keys in its config. ``design_name`` alone (qmc) only tags the trials.
    """

    def __init__(self, *args, design=None, design_name: str | None = None, **kwargs):
        self._design = list(design or [])  # read by _setup_study, which the base __init__ calls
        self._designed = bool(self._design)
        self._design_name = design_name
        super().__init__(*args, **kwargs)
        self._orphans: list[int] = []  # Optuna trial ids to adopt, filled by restore

    def _setup_study(self, mode):
        super()._setup_study(mode)
        if not self._design:
            return
        # Enqueue the points not yet in the study (all of them for a new one; a driver killed
        # while enqueueing left some).
        present = {t.user_attrs.get(DESIGN_POINT_KEY) for t in self._ot_study.get_trials(deepcopy=False)}
        for point in self._design:
            if point.keys[DESIGN_POINT_KEY] not in present:
                self._ot_study.enqueue_trial(point.params, user_attrs={**point.keys, SEED_KNOB: point.seed})
        self._design = []  # in optuna.db now; the pickled searcher need not carry them

    def restore(self, checkpoint_path: str):
        """Restore, then collect the orphans: Optuna trials still RUNNING that no restored Ray
        trial owns. A driver killed between Optuna's ask and Ray's next experiment snapshot
        leaves them; the next new Ray trials adopt them (number and parameters), so the Optuna
        study keeps one trial per Ray trial and nothing is proposed twice."""
        super().restore(checkpoint_path)
        # A trial can finish (and be told to Optuna) after the snapshot that still shows it
        # running; Ray then re-runs it from its checkpoint. Optuna refuses updates to a finished
        # trial, which would crash the resume: treat its new results as already told.
        stored = sorted(self._ot_study.get_trials(deepcopy=False), key=lambda t: t.number)
        told = {t._trial_id for t in stored if t.state.is_finished()}
        self._completed_trials.update(rid for rid, trial in self._ot_trials.items() if trial._trial_id in told)
        owned = {trial._trial_id for trial in self._ot_trials.values()}
        self._orphans = [t._trial_id for t in stored if t.state == optuna.trial.TrialState.RUNNING
                         and t._trial_id not in owned]
        if self._orphans:
            # The sampler's RNG was saved before it drew the orphans: as restored it would
            # draw their parameters again for the next new trials.
            self._ot_study.sampler.reseed_rng()

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials and self._orphans:
            # Define-by-run on an existing trial returns its stored parameters.
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._orphans.pop(0))
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config[OPTUNA_TRIAL_KEY] = self._ot_trials[trial_id].number
            if self._designed:
                attrs = self._ot_trials[trial_id].user_attrs
                if DESIGN_POINT_KEY not in attrs:  # the queue ran dry: Ray asked for more trials than designed
                    raise RuntimeError(f"designed study: Optuna trial {config[OPTUNA_TRIAL_KEY]} is no design point")
                config.update({k: attrs[k] for k in DESIGN_KEYS if k in attrs})
                if attrs.get(SEED_KNOB) is not None:
                    config[SEED_KNOB] = attrs[SEED_KNOB]
            elif self._design_name:
                config[DESIGN_KEY] = self._design_name
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if error or not result or trial_id in self._completed_trials or not stopped_early(
                _flat_config(result), result):
            return super().on_trial_complete(trial_id, result=result, error=error)
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def _flat_config(result: dict) -> dict:
    """The config inside a result as searchers get it: flattened (``config/epochs``)."""
    return {key.removeprefix("config/"): value for key, value in result.items() if key.startswith("config/")}


def optuna_storage(url: str):
    """An Optuna RDB storage for ``url``; sqlite waits for its lock instead of failing."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def make_search_alg(spec: "StudySpec"):
    """Optuna (the spec's sampler, persistent storage) behind Tune, repeated when asked."""
    from ray.tune.search import Repeater

    searcher = StudyOptunaSearch(
        space=spec.space.define_by_run, sampler=spec.make_sampler(), metric=spec.metric, mode=spec.mode,
        storage=optuna_storage(spec.optuna_storage), study_name=spec.optuna_study_name,
        design=spec.design_points, design_name=spec.algorithm.design_name)
    if spec.repeats > 1:
        # Every repeat gets config[REPEAT_INDEX_KEY] (added to the seed by the trainable);
        # Optuna sees one trial per configuration, told the mean over repeats.
        searcher = Repeater(searcher, repeat=spec.repeats)
    return searcher


def make_scheduler(spec: "StudySpec"):
    from ray.tune.schedulers import ASHAScheduler

    if spec.scheduler == "none":
        return None
    return ASHAScheduler(time_attr="training_iteration", max_t=spec.max_epochs(),
                         grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def wrap_trainable(spec: "StudySpec", trainable: Callable | None):
    """The trainable with the study's TrialSetup bound and its per-trial resources."""
    from ray import tune

    if trainable is None:
        from routed_study.trainables.trainable import routed_prompt_trainable as trainable
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(trainable, setup=spec.setup), resources)


def load_study_spec(study_dir: str | Path | Location) -> StudySpec:
    """The spec a study ran with (``<study_dir>/study.yaml``), from a local directory or a URI."""
    study_dir = Location(study_dir)
    if not (study_dir / SPEC_FILE).is_file():
        raise InputError(f"{study_dir}: not a study directory (no {SPEC_FILE}); "
                         f"start a study with `routed-study run SPEC`")
    return StudySpec.load(study_dir / SPEC_FILE)


def _ensure_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (or RAY_ADDRESS), else start a local Ray on all
    cores without the dashboard, listening on loopback only; unless Ray already runs. True if
    this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        with _loopback_only():
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    return True


#: Ray's switch for single-machine Ray on Windows and macOS (undocumented on Linux); see _loopback_only.
RAY_SINGLE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only():
    """While a local Ray starts: its processes listen on 127.0.0.1 instead of every interface.

    Why an undocumented switch: Ray 2.60 has no setting for it. It rewrites
    ``_node_ip_address="127.0.0.1"`` to the machine's address, and its GCS, raylet and workers
    then listen on all interfaces. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` ("no multi-node
    cluster") it keeps the loopback address, and every listener follows it. Ray reads the
    variable once at import (``ray_constants.ENABLE_RAY_CLUSTER``, which ``services`` consults at
    call time), so both are set while ``ray.init`` starts the processes, which inherit the
    variable. tests/test_cluster_sockets.py fails when this stops working.
    """
    from ray._private import ray_constants

    saved_variable, saved_flag = os.environ.get(RAY_SINGLE_MACHINE_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_SINGLE_MACHINE_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_variable is None:
            os.environ.pop(RAY_SINGLE_MACHINE_SWITCH, None)
        else:
            os.environ[RAY_SINGLE_MACHINE_SWITCH] = saved_variable


def _tracking(spec: "StudySpec") -> tuple[str, str]:
    """Create (or find) the study's MLflow experiment and parent run; return their ids."""
    experiment_id = ensure_experiment(spec.mlflow_tracking_uri, spec.name, spec.mlflow_artifact_location)
    params = {f"setup.{k}": v for k, v in spec.setup.to_dict().items()}
    params.update(search_algorithm=spec.search_algorithm, search_seed=spec.search_seed,
                  scheduler=spec.scheduler, num_trials=spec.num_trials, repeats=spec.repeats,
                  concurrency=spec.concurrency, metric=spec.metric, mode=spec.mode)
    if spec.mlflow_tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow runs: {runs_page(spec.mlflow_tracking_uri, experiment_id)}", flush=True)
    return experiment_id, ensure_parent_run(spec.mlflow_tracking_uri, experiment_id, spec.name, params)


def trial_dirname(trial) -> str:
    """``<trainable>_<trial id>``: Ray's default name repeats the whole config and gets cut."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def build_tuner(spec: "StudySpec", trainable: Callable | None = None):
    """The Tuner of a new study (nothing runs until ``fit``)."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    callbacks = [
        StudyMLflowCallback(spec.mlflow_tracking_uri, spec.name, spec.mlflow_artifact_location),
        StudyProgress(spec.name, total=spec.num_samples, metric=spec.metric, mode=spec.mode),
    ]
    return Tuner(
        wrap_trainable(spec, trainable),
        tune_config=TuneConfig(
            search_alg=make_search_alg(spec), scheduler=make_scheduler(spec), metric=spec.metric,
            mode=spec.mode, num_samples=spec.num_samples,
            max_concurrent_trials=spec.concurrency,
            # A new trial reuses a finished trial's worker process: starting a Python
            # worker costs seconds, as much as a short trial's epoch.
            reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=RunConfig(
            name=spec.name, storage_path=str(spec.storage), callbacks=callbacks, verbose=0,
            failure_config=FailureConfig(max_failures=spec.max_failures),
            sync_config=tune.SyncConfig(sync_artifacts=True),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT)),
    )


def run_study(spec: "StudySpec", trainable: Callable | None = None) -> StudyOutcome:
    """Run every trial of ``spec``; ``trainable`` defaults to the routed prompt trainable."""
    from ray.tune import Tuner

    start = time.monotonic()
    study_dir = spec.study_dir
    if Tuner.can_restore(str(study_dir)):
        raise InputError(f"{study_dir}: a study named '{spec.name}' already ran there; resume it with "
                         f"`routed-study resume {study_dir}` or choose another name")
    spec.dump(study_dir / SPEC_FILE)  # the resolved spec that `resume` reads back
    started_ray = _ensure_ray(spec.cluster_address)
    try:
        _, parent_run_id = _tracking(spec)
        tuner = build_tuner(spec, trainable)
        return _fit_and_finish(spec, tuner, study_dir, parent_run_id, start)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def resume_study(study_dir: str | Path | Location, trainable: Callable | None = None) -> StudyOutcome:
    """Continue an interrupted study: unfinished and errored trials resume from their checkpoints.

    Optuna continues from ``optuna.db`` (its pending trials stay the same trials) and
    MLflow runs are reused (parent by study name, children by Ray trial id).
    """
    from ray.tune import Tuner

    start = time.monotonic()
    study_dir = Location(study_dir)
    spec = load_study_spec(study_dir)
    if not Tuner.can_restore(str(study_dir)):
        raise InputError(f"{study_dir}: no Ray Tune experiment state to resume (tuner.pkl missing); "
                         f"run the study with `routed-study run`")
    started_ray = _ensure_ray(spec.cluster_address)
    try:
        _, parent_run_id = _tracking(spec)
        tuner = Tuner.restore(str(study_dir), trainable=wrap_trainable(spec, trainable), resume_errored=True)
        return _fit_and_finish(spec, tuner, study_dir, parent_run_id, start)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _fit_and_finish(spec: "StudySpec", tuner, study_dir: Location, parent_run_id: str,
                    start: float) -> StudyOutcome:
    # Keeping CHECKPOINTS_KEPT checkpoints makes Tune snapshot the experiment state after
    # each trial's second checkpoint, by design; its warning about that is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The study's progress lines are its terminal output; Ray's newer output engine prints a
    # configuration box and a TensorBoard hint even at verbose=0, its classic one nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # With a tracking server, MLflow prints two links per finished run; the study's page is printed once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    fit_started_at, fit_start = time.time(), time.monotonic()
    results = tuner.fit()
    fit_time = time.monotonic() - fit_start
    outcome = summarise(spec, results, study_dir, parent_run_id, fit_time, fit_started_at)
    if spec.report and not outcome.unfinished:
        outcome.report_paths = _write_report(spec, study_dir)
    outcome.wall_time_s = time.monotonic() - start
    finish_parent_run(spec.mlflow_tracking_uri, parent_run_id, {
        "num_trials": outcome.num_trials, "completed": outcome.completed, "errored": outcome.errored,
        "wall_time_s": outcome.wall_time_s,
        **({f"best_{spec.metric}": outcome.best_score} if outcome.best_score is not None else {})},
        status="KILLED" if outcome.unfinished else "FINISHED")
    return outcome


def summarise(spec: "StudySpec", results: "ResultGrid", study_dir: Location, parent_run_id: str,
              fit_time: float, fit_started_at: float) -> StudyOutcome:
    """Counts and the best trial (by its last reported metric, errored trials excluded)."""
    ended = [r for r in results if r.error is None]
    best_ = best(ended, lambda r: (r.metrics or {}).get(spec.metric), spec.mode)
    return StudyOutcome(
        name=spec.name, study_dir=study_dir, num_trials=len(results), completed=results.num_terminated,
        stopped_early=sum(stopped_early(r.config or {}, r.metrics or {}) for r in ended),
        errored=results.num_errors,
        unfinished=len(results) - results.num_terminated - results.num_errors,
        best_score=None if best_ is None else best_[0],
        best_config=None if best_ is None else knob_values(best_[1].config),
        best_trial_id=None if best_ is None else best_[1].metrics.get("trial_id"),
        wall_time_s=0.0, fit_time_s=fit_time, fit_started_at=fit_started_at, tracking_uri=spec.mlflow_tracking_uri,
        parent_run_id=parent_run_id, results=results)


def _write_report(spec: "StudySpec", study_dir: Location) -> dict[str, Path]:
    """The analysis report of the finished study; a failing report never loses the study's results.

    A study on remote storage (s3://...) is analysed from its MLflow runs (the analysis reads
    local trial directories only), into ``spec.report_dir()`` on the driver.
    """
    from routed_study.analysis.report import build_report

    out_dir = spec.report_dir().path
    if study_dir.is_local:
        source, experiment = str(study_dir), None
    else:
        source, experiment = spec.mlflow_tracking_uri, spec.name
    try:
        paths = build_report(source, out_dir, target=spec.metric, mode=spec.mode, experiment=experiment)
    except InputError as exc:  # e.g. too few completed trials to analyse
        page = Path(str(out_dir)) / "report.html"
        if page.is_file():   # written before the error: verdicts and design, without what could not run
            print(f"report (partial): {page}: {exc}", flush=True)
            return {"html": page}
        print(f"no report: {exc}; the results are in {study_dir} "
              f"(`routed-study analyze {study_dir} --out DIR` once more trials finished)", flush=True)
        return {}
    print(f"report: {paths['html']} (tables beside it in {out_dir})", flush=True)
    return paths
