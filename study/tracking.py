"""MLflow tracking of a study: one parent run per study, one child run per Ray trial.

The driver owns every MLflow write (workers never talk to the tracking store), so
a sqlite store beside the results works on one machine and an MLflow server on
the head node works on a cluster. Resuming a study finds the parent run and the
existing child runs by tag instead of creating new ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS

from routed_study.study.spec import artifact_location_for  # noqa: F401  (defined with the spec's locations; imported from here too)
from routed_study.trainables.errors import InputError
from routed_study.trainables.results import (DESIGN_KEYS, OPTUNA_TRIAL_KEY, REPEAT_INDEX_KEY, TIMING_METRICS,
                                             TRAINING_ITERATION, TRIAL_ARTIFACTS)
from routed_study.trainables.routed_prompt.config import knob_values

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

#: Tag names, one place so that lookups and writes agree.
TAG_STUDY = "routed_study.study"
TAG_ROLE = "routed_study.role"
TAG_PARENT = "mlflow.parentRunId"
TAG_RAY_TRIAL_ID = "ray.trial_id"
TAG_RAY_TRIAL_NAME = "ray.trial_name"
TAG_OPTUNA_TRIAL = "optuna.trial_number"
TAG_REPEAT_INDEX = "ray.repeat_index"
TAG_ERROR = "error"
#: A designed trial's keys (design, point, base, flip, side, delta) as tags: routed_study.design, ...
DESIGN_TAGS = {key: f"routed_study.{key.strip('_')}" for key in DESIGN_KEYS}

# Ray bookkeeping that is not a measurement; the timings stay.
_NOT_METRICS = frozenset(AUTO_RESULT_KEYS) - set(TIMING_METRICS)


def client_for(tracking_uri: str) -> "MlflowClient":
    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    # Two drivers opening one new sqlite store at once race in MLflow's table migrations
    # ("table ... already exists"): the client's constructor creates or migrates the tables
    # (once per process, the store is cached), so build it under a lock file beside the
    # database. Later concurrent writes wait on MLflow's sqlite busy timeout.
    import fcntl

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Return the id of experiment ``name``, creating it with an explicit artifact location.

    The explicit location keeps artifacts beside the study (MLflow's default for a
    sqlite store is ``./mlruns`` in whatever directory the driver runs from).
    """
    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def ensure_parent_run(tracking_uri: str, experiment_id: str, study_name: str,
                      params: Mapping[str, Any]) -> str:
    """The study's parent run id: the existing one (found by tag) or a new one with ``params``."""
    client = client_for(tracking_uri)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_STUDY}` = '{study_name}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=study_name,
                            tags={TAG_ROLE: "parent", TAG_STUDY: study_name})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, metrics: Mapping[str, float],
                      status: str = "FINISHED") -> None:
    client = client_for(tracking_uri)
    _log_metrics(client, run_id, metrics, step=0)
    client.set_terminated(run_id, status=status)


def _log_params(client: "MlflowClient", run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    # MLflow caps a param value at 6000 characters; a list of tasks stays far below.
    batch = [Param(str(k), str(v)) for k, v in params.items()]
    for start in range(0, len(batch), 100):  # log_batch takes at most 100 params
        client.log_batch(run_id, params=batch[start:start + 100])


def _log_metrics(client: "MlflowClient", run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in metrics.items()]
    # One batch per result: a single sqlite transaction instead of one per metric.
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start:start + 1000])


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The measurements of a Tune result: its numbers, without Ray's bookkeeping keys."""
    out = {}
    for key, value in result.items():
        if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value)
    return out


class StudyMLflowCallback(MLflowLoggerCallback):
    """Ray Tune's MLflow logger, nested under the study's parent run and resume-safe.

    Differences from the base class: child runs carry ``mlflow.parentRunId`` and
    the Ray / Optuna ids as tags; an existing child run of the same Ray trial is
    reused (a resumed study never duplicates one, nor re-logs an iteration it
    already holds); metrics go in one batch per result; only the trial's analysis
    files become artifacts (never checkpoints); an errored trial's run ends
    FAILED with the first line of its error as a tag.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str,
                 artifacts: Iterable[str] = TRIAL_ARTIFACTS):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name)
        self.parent_run_id: str | None = None
        self.artifact_location = artifact_location
        self.artifacts = tuple(artifacts)
        self._client = None
        self._last_iteration: dict[str, int] = {}
        self._pending: list[tuple["Trial", str]] = []
        self._last_flush = 0.0

    def __getstate__(self):
        # Tune pickles callbacks with the experiment; the client holds an engine.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_pending"] = []
        return state

    def setup(self, *args, **kwargs):
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                      artifact_location=self.artifact_location)
        self._client = client_for(self.tracking_uri)
        # Looked up, not pickled: a resumed study finds its parent run by the study's name.
        self.parent_run_id = ensure_parent_run(self.tracking_uri, self.mlflow_util.experiment_id,
                                               self.experiment_name, params={})
        self._trial_runs = {}
        self.tags = {}
        self._pending: list[tuple["Trial", str]] = []
        self._last_flush = time.monotonic()

    def _find_child(self, trial_id: str):
        found = self._client.search_runs(
            [self.mlflow_util.experiment_id],
            filter_string=(f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and "
                           f"tags.`{TAG_RAY_TRIAL_ID}` = '{trial_id}'"),
            max_results=1,
        )
        return found[0] if found else None

    def _delete_orphan_runs(self, trial: "Trial") -> None:
        """Delete runs of this trial's Optuna trial (and repeat) logged under another Ray trial id.

        Such a run belongs to a Ray trial that a killed driver started after its last
        experiment snapshot: the resumed study never knew it and re-runs the same Optuna
        trial (see ``StudyOptunaSearch``) from scratch, so the old run would be a duplicate.
        """
        if OPTUNA_TRIAL_KEY not in trial.config:
            return
        query = (f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and "
                 f"tags.`{TAG_OPTUNA_TRIAL}` = '{trial.config[OPTUNA_TRIAL_KEY]}'")
        repeat = str(trial.config.get(REPEAT_INDEX_KEY, ""))
        for run in self._client.search_runs([self.mlflow_util.experiment_id], filter_string=query):
            if run.data.tags.get(TAG_REPEAT_INDEX, "") == repeat and run.data.tags[TAG_RAY_TRIAL_ID] != trial.trial_id:
                self._client.delete_run(run.info.run_id)

    def log_trial_start(self, trial: "Trial"):
        if trial in self._trial_runs:
            return
        existing = self._find_child(trial.trial_id)
        if existing is not None:
            run_id = existing.info.run_id
            self._client.update_run(run_id, status="RUNNING")
            self._last_iteration[run_id] = int(existing.data.metrics.get(TRAINING_ITERATION, 0))
        else:
            self._delete_orphan_runs(trial)
            tags = {TAG_PARENT: self.parent_run_id, TAG_RAY_TRIAL_ID: trial.trial_id,
                    TAG_RAY_TRIAL_NAME: str(trial)}
            if OPTUNA_TRIAL_KEY in trial.config:
                tags[TAG_OPTUNA_TRIAL] = str(trial.config[OPTUNA_TRIAL_KEY])
            if REPEAT_INDEX_KEY in trial.config:
                tags[TAG_REPEAT_INDEX] = str(trial.config[REPEAT_INDEX_KEY])
            design = {key: trial.config[key] for key in DESIGN_KEYS if key in trial.config}
            tags.update({DESIGN_TAGS[key]: str(value) for key, value in design.items()})
            run = self._client.create_run(self.mlflow_util.experiment_id, run_name=str(trial), tags=tags)
            run_id = run.info.run_id
            # The design keys and the repeat index are params too: the analysis reads a study from
            # MLflow by its params (a repeat's seed is the config's seed plus its index).
            repeat = {REPEAT_INDEX_KEY: trial.config[REPEAT_INDEX_KEY]} if REPEAT_INDEX_KEY in trial.config else {}
            _log_params(self._client, run_id, {**knob_values(trial.config), **design, **repeat})
            self._last_iteration[run_id] = 0
        self._trial_runs[trial] = run_id

    def log_trial_result(self, iteration: int, trial: "Trial", result: dict):
        run_id = self._trial_runs[trial]
        training_iteration = int(result.get(TRAINING_ITERATION, 0))
        if training_iteration <= self._last_iteration.get(run_id, 0):
            return  # replayed after a restore: already in the run's history
        self._last_iteration[run_id] = training_iteration
        metrics = numeric_metrics(result)
        metrics[TRAINING_ITERATION] = float(training_iteration)
        step = int(result.get("epoch", training_iteration))
        _log_metrics(self._client, run_id, metrics, step)

    def log_trial_end(self, trial: "Trial", failed: bool = False):
        run_id = self._trial_runs.pop(trial, None)
        if run_id is None:
            return
        if failed:
            self._client.set_tag(run_id, TAG_ERROR, _first_error_line(trial))
            self._log_trial_artifacts(trial, run_id)  # whatever it wrote before failing
        else:
            # Ray copies the trial directory to storage when it stops or reuses the
            # trial's worker, just after this call: log the files once they are there.
            self._pending.append((trial, run_id))
            self._flush_pending()
        self._client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def on_step_begin(self, iteration: int, trials: list, **info):
        if self._pending and time.monotonic() - self._last_flush > 1.0:
            self._flush_pending()

    def on_experiment_end(self, trials: list, **info):
        # Tune has stopped every worker (final copies done) before this call.
        self._flush_pending(final=True)

    def _flush_pending(self, final: bool = False) -> None:
        """Log the artifacts of finished trials whose directory reached storage.

        The trainable writes the first of ``artifacts`` (router_matrix.csv) at the end
        of every successful trial, so its presence marks the final copy as done.
        """
        self._last_flush = time.monotonic()
        waiting = []
        for trial, run_id in self._pending:
            if final or self._stored(trial, self.artifacts[0]):
                self._log_trial_artifacts(trial, run_id)
            else:
                waiting.append((trial, run_id))
        self._pending = waiting

    @staticmethod
    def _stored(trial: "Trial", name: str) -> bool:
        import pyarrow.fs

        path = f"{trial.storage.trial_fs_path}/{name}"
        return trial.storage.storage_filesystem.get_file_info(path).type == pyarrow.fs.FileType.File

    def _log_trial_artifacts(self, trial: "Trial", run_id: str) -> None:
        """Copy the trial's analysis files from the study storage (local or remote) into the run."""
        import tempfile

        names = [n for n in self.artifacts if self._stored(trial, n)]
        if not names:
            return
        fs = trial.storage.storage_filesystem
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                with fs.open_input_stream(f"{trial.storage.trial_fs_path}/{name}") as src:
                    Path(tmp, name).write_bytes(src.read())
            self._client.log_artifacts(run_id, tmp)


def _first_error_line(trial: "Trial") -> str:
    """The last line of the trial's traceback (the exception itself), cut to MLflow's tag size."""
    if trial.error_file and os.path.exists(trial.error_file):
        lines = [ln.strip() for ln in Path(trial.error_file).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:4000]
    return "trial errored (no error file)"


def runs_page(base_url: str, experiment_id: str | None) -> str:
    """The MLflow UI page of an experiment's runs (parent and nested trials); MLflow 3's start
    page is the GenAI overview, where a study's runs are one unlabelled click away."""
    base_url = base_url.rstrip("/")
    return f"{base_url}/#/experiments/{experiment_id}/runs" if experiment_id else base_url


def serve_ui(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000,
             artifacts_dir: str | Path | None = None, experiment: str | None = None) -> None:
    """Run the MLflow UI over a study's tracking store until interrupted; print its runs page.

    Binds to 127.0.0.1 unless ``host`` says otherwise: the UI has no authentication, so
    reach a remote one through SSH port forwarding. A tracking server (http://...) already
    serves the UI: its page is printed and nothing is started. SIGINT and SIGTERM stop the
    server this call started, with every process of its group.
    """
    experiment_id = _experiment_id(tracking_uri, experiment)
    if tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {runs_page(tracking_uri, experiment_id)}  (served by the tracking server)", flush=True)
        return
    _check_port_free(host, port)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    if artifacts_dir is not None:
        command += ["--artifacts-destination", str(artifacts_dir)]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"MLflow UI: {runs_page(f'http://{shown}:{port}', experiment_id)}  (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {host}; the MLflow UI has no authentication", file=sys.stderr, flush=True)
    # Its own process group, so that one signal reaches the server's workers too.
    process = subprocess.Popen(command, env=env, start_new_session=True)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if on_main_thread else None
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        stop_process_group(process)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _experiment_id(tracking_uri: str, experiment: str | None) -> str | None:
    from mlflow.exceptions import MlflowException

    if experiment is None:
        return None
    try:
        found = client_for(tracking_uri).get_experiment_by_name(experiment)
    except MlflowException as exc:  # e.g. a tracking server that does not answer
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"ui: cannot read experiment '{experiment}' from {tracking_uri}: {first_line}") from None
    return None if found is None else found.experiment_id


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting a server that could not listen (MLflow would print a traceback)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"ui: port {port} on {host} is in use ({exc.strerror}); choose another with --port") from None


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group led by ``process``, SIGKILL to whatever is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(process):
            time.sleep(0.1)
        if not _group_alive(process):
            return


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader once it exits
    try:
        os.killpg(process.pid, 0)
        return True
    except ProcessLookupError:
        return False
