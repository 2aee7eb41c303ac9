"""A study spec: one YAML file that says what to train, what to search and where to write.

Schema (every key optional unless marked; unknown keys are errors)::

    name: demo                          # required; letters, digits, . _ -
    backbone: {name: minilm, family: auto, max_length: 64}
    data: {dir: data, tasks: [...] (required), train_per_task: 200, eval_per_task: 200, split_seed: 0}
    space: {name: findings, override: {knob: distribution}, fixed: {knob: value}}
    search: {algorithm: tpe | random | grid, seed: 0}
    scheduler: {name: asha | none, grace_period: 1, reduction_factor: 2}
    trials: {num: 10, concurrency: 1, repeats: 1, max_failures: 0}
    resources: {cpus: 1, gpus: 0}
    cluster: false | true | "ray://host:10001"
    metric: {name: score, mode: max}
    storage: {dir: studies, mlflow_tracking_uri: null, optuna_storage: null}
    report: true

Decisions worth knowing:

- ``data.dir`` and ``storage.dir`` are relative to the current working directory
  (where ``routed-study`` runs), not to the spec file, so one spec serves a checkout
  and a cluster head node alike. ``dump`` writes them absolute.
- ``trials.num`` counts distinct configurations; each runs ``trials.repeats`` times
  with a different seed (Ray's Repeater), so Ray runs ``num_samples = num * repeats``
  trials. With ``algorithm: grid`` it defaults to (and may not exceed) the grid size.
- A space with nothing left to search (every knob fixed) only makes sense for one
  configuration: ``trials.num`` must be 1; use ``trials.repeats`` for seeds.
- ``repeats > 1`` requires ``scheduler: none``: early stopping would cut some repeats
  of a configuration and bias its average (Ray's Repeater advises the same).
- Resources are checked against this machine unless ``cluster`` is set (true means
  ``ray.init(address="auto")``; a string is the address).
- Overrides: ``{low, high[, log]}`` (float knob), ``{low, high[, step]}`` (int knob),
  ``{choices: [...]}`` or a bare list, each with optional ``when: {knob: values}``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from search_spaces import SearchSpace, get_space
from trainables.errors import InputError, did_you_mean, format_choices
from trainables.setup import TrialSetup

SEARCH_ALGORITHMS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "none")
MODES = ("max", "min")
_REQUIRED = object()
_SETUP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialSetup) if f.name != "tasks"}

# section -> allowed keys (order is the order `dump` writes and errors list them in)
SCHEMA: dict[str, tuple[str, ...]] = {
    "name": (),
    "backbone": ("name", "family", "max_length"),
    "data": ("dir", "tasks", "train_per_task", "eval_per_task", "split_seed"),
    "space": ("name", "override", "fixed"),
    "search": ("algorithm", "seed"),
    "scheduler": ("name", "grace_period", "reduction_factor"),
    "trials": ("num", "concurrency", "repeats", "max_failures"),
    "resources": ("cpus", "gpus"),
    "cluster": (),
    "metric": ("name", "mode"),
    "storage": ("dir", "mlflow_tracking_uri", "optuna_storage"),
    "report": (),
}


@dataclass
class StudySpec:
    """A validated study: every field resolved (absolute paths, URIs filled in)."""

    name: str
    setup: TrialSetup
    space: SearchSpace
    search_algorithm: str = "tpe"
    search_seed: int = 0
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    num_trials: int = 10           # distinct configurations; see num_samples
    concurrency: int = 1
    repeats: int = 1
    max_failures: int = 0          # Ray FailureConfig: retries of an errored trial
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    cluster_address: str | None = None   # None: a local Ray; else ray.init(address=...)
    metric: str = "score"
    mode: str = "max"
    storage: Path | str = Path("studies").absolute()   # a local directory, or a URI (s3://...)
    mlflow_tracking_uri: str = ""
    optuna_storage: str = ""
    optuna_study_name: str = ""
    report: bool = True

    @property
    def study_dir(self) -> Path | str:
        return self.storage / self.name if isinstance(self.storage, Path) else f"{self.storage}/{self.name}"

    @property
    def num_samples(self) -> int:
        """Trials Ray runs: every configuration times its repeats."""
        return self.num_trials * self.repeats

    # ------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path) -> "StudySpec":
        """Read and validate a YAML spec; InputError "<file>: key 'a.b': ..." on any problem."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such spec file")
        try:
            raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{path}: YAML syntax error{at}: {problem}") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not a text file ({exc.reason})") from None
        return cls.from_dict(raw, file=str(path))

    @classmethod
    def from_dict(cls, raw: Any, file: str = "spec") -> "StudySpec":
        """Validate a parsed spec; ``file`` names it in errors ("<file>: key 'a.b': ...")."""
        try:
            return cls._from_dict(raw, file)
        except InputError as exc:
            message = str(exc)
            raise InputError(message if message.startswith(f"{file}:") else f"{file}: {message}") from None

    @classmethod
    def _from_dict(cls, raw: Any, file: str) -> "StudySpec":
        if not isinstance(raw, Mapping):
            raise InputError(f"{file}: a spec is a mapping of sections ({', '.join(SCHEMA)}), "
                             f"got {type(raw).__name__}")
        r = _Reader(raw)
        r.reject_unknown()
        name = r.get("name", str)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise InputError(f"key 'name': {name!r} must be letters, digits, '.', '_' or '-' (it names a directory)")

        setup_values = {
            "backbone": r.get("backbone.name", str, _SETUP_DEFAULTS["backbone"]),
            "backbone_family": r.get("backbone.family", str, _SETUP_DEFAULTS["backbone_family"]),
            "max_length": r.get("backbone.max_length", int, _SETUP_DEFAULTS["max_length"], low=1),
            "data_dir": str(Path(r.get("data.dir", str, _SETUP_DEFAULTS["data_dir"])).expanduser().absolute()),
            "tasks": tuple(r.get("data.tasks", list)),
            "train_per_task": r.get("data.train_per_task", int, _SETUP_DEFAULTS["train_per_task"], low=1),
            "eval_per_task": r.get("data.eval_per_task", int, _SETUP_DEFAULTS["eval_per_task"], low=1),
            "split_seed": r.get("data.split_seed", int, _SETUP_DEFAULTS["split_seed"], low=0),
        }
        setup = TrialSetup(**setup_values)
        setup.check(file)

        space = get_space(r.get("space.name", str, "findings"), where="key 'space.name'")
        space = space.customise(r.get("space.override", dict, {}), r.get("space.fixed", dict, {}),
                                where="space")
        space.check_setup(setup, where="space")

        algorithm = r.get("search.algorithm", str, "tpe", choices=SEARCH_ALGORITHMS)
        grid = space.grid()
        if algorithm == "grid" and grid is None:
            raise InputError(f"key 'search.algorithm': grid needs a space of unconditional choices only; "
                             f"space '{space.name}' has ranges or conditions (use tpe/random, or give every "
                             f"searched knob 'choices' without 'when')")
        grid_size = space.grid_size()  # distinct models only
        num_trials = r.get("trials.num", int, grid_size if algorithm == "grid" else 10, low=1)
        if algorithm == "grid" and num_trials > grid_size:
            raise InputError(f"key 'trials.num': {num_trials} exceeds the grid's {grid_size} distinct models")
        if not space.parameters() and num_trials > 1:
            raise InputError(f"key 'trials.num': space '{space.name}' searches nothing (every knob fixed), "
                             f"so all {num_trials} configurations would be identical; set trials.num: 1 "
                             f"and use trials.repeats for seeds")
        scheduler = r.get("scheduler.name", str, "asha", choices=SCHEDULERS)
        repeats = r.get("trials.repeats", int, 1, low=1)
        if repeats > 1 and scheduler == "asha":
            raise InputError("key 'trials.repeats': repeats > 1 needs scheduler: none (ASHA would stop some "
                             "repeats of a configuration early and bias its average)")
        cluster = r.get("cluster", (bool, str), False)
        spec = cls(
            name=name, setup=setup, space=space, search_algorithm=algorithm,
            search_seed=r.get("search.seed", int, 0, low=0),
            scheduler=scheduler,
            grace_period=r.get("scheduler.grace_period", int, 1, low=1),
            reduction_factor=float(r.get("scheduler.reduction_factor", (int, float), 2.0, above=1)),
            num_trials=num_trials,
            concurrency=r.get("trials.concurrency", int, 1, low=1),
            repeats=repeats,
            max_failures=r.get("trials.max_failures", int, 0, low=0),
            cpus_per_trial=float(r.get("resources.cpus", (int, float), 1.0, above=0)),
            gpus_per_trial=float(r.get("resources.gpus", (int, float), 0.0, low=0)),
            cluster_address=("auto" if cluster is True else cluster) or None,
            metric=r.get("metric.name", str, "score"),
            mode=r.get("metric.mode", str, "max", choices=MODES),
            storage=_storage(r.get("storage.dir", str, "studies")),
            report=r.get("report", bool, True),
        )
        spec.mlflow_tracking_uri = spec._store_uri(r, "mlflow_tracking_uri", "mlflow.db")
        spec.optuna_storage = spec._store_uri(r, "optuna_storage", "optuna.db")
        spec.optuna_study_name = name
        spec._check_metric()
        spec._check_schedule()
        spec._check_resources()
        if isinstance(spec.storage, Path):
            _check_writable(spec.storage, "storage.dir")
        return spec

    def _store_uri(self, r: "_Reader", key: str, filename: str) -> str:
        """The URI at storage.<key>, or a sqlite file in the study directory when it is null."""
        value = r.get(f"storage.{key}", (str, type(None)), None)
        if value is None:
            if not isinstance(self.storage, Path):
                raise InputError(f"key 'storage.{key}': required when storage.dir is a URI "
                                 f"({self.storage}): a sqlite file needs a local directory")
            return f"sqlite:///{self.study_dir / filename}"
        if not is_uri(value):
            raise InputError(f"key 'storage.{key}': {value!r} is not a URI (e.g. sqlite:////abs/path.db, "
                             f"postgresql://host/db, http://host:5000)")
        return value

    # ---------------------------------------------------------- semantic checks
    def _check_metric(self) -> None:
        from trainables.tasks import get_task

        allowed = ["score", "train_loss"]
        for task in self.setup.tasks:
            allowed += [f"val/{task}"] + [f"val/{task}/{m}" for m in get_task(task).metrics]
        if self.metric not in allowed:
            raise InputError(f"key 'metric.name': {self.metric!r} is not a metric every epoch of this study reports"
                             f"{did_you_mean(self.metric, allowed)}; allowed: {', '.join(allowed)}")

    def _check_schedule(self) -> None:
        if self.scheduler == "asha" and self.grace_period > self.max_epochs():
            raise InputError(f"key 'scheduler.grace_period': {self.grace_period} exceeds the most epochs a "
                             f"trial can run ({self.max_epochs()}); ASHA would never stop a trial")

    def _check_resources(self) -> None:
        if self.cluster_address:
            return  # the cluster's nodes, not this machine, provide the resources
        cores = os.cpu_count() or 1
        if self.cpus_per_trial > cores:
            raise InputError(f"key 'resources.cpus': {self.cpus_per_trial:g} CPUs per trial but this machine "
                             f"has {cores}; lower it, or set cluster: true to run on a Ray cluster")
        if self.gpus_per_trial > 0:
            import torch  # only when GPUs are asked for: importing torch costs seconds

            found = torch.cuda.device_count()
            if self.gpus_per_trial > found:
                raise InputError(f"key 'resources.gpus': {self.gpus_per_trial:g} GPUs per trial but this "
                                 f"machine has {found}; set gpus: 0, or cluster: true to run on a Ray cluster")

    # ------------------------------------------------------------------ API
    def make_sampler(self):
        """The Optuna sampler of ``search.algorithm``, seeded with ``search.seed``."""
        import optuna

        if self.search_algorithm == "grid":
            return self.space.grid_sampler(seed=self.search_seed)
        if self.search_algorithm == "random":
            return optuna.samplers.RandomSampler(seed=self.search_seed)
        return optuna.samplers.TPESampler(seed=self.search_seed)

    def max_epochs(self) -> int:
        """The most epochs any trial can run (ASHA's max_t)."""
        if "epochs" in self.space.constants():
            return int(self.space.constants()["epochs"])
        params = self.space.parameters()
        if "epochs" in params:
            return int(max(params["epochs"].possible_values()))
        from trainables.routed_prompt.config import KNOBS

        return int(KNOBS["epochs"].default)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec in YAML form; ``from_dict`` of it gives this spec back."""
        return {
            "name": self.name,
            "backbone": {"name": self.setup.backbone, "family": self.setup.backbone_family,
                         "max_length": self.setup.max_length},
            "data": {"dir": self.setup.data_dir, "tasks": list(self.setup.tasks),
                     "train_per_task": self.setup.train_per_task, "eval_per_task": self.setup.eval_per_task,
                     "split_seed": self.setup.split_seed},
            "space": self.space.to_spec(),
            "search": {"algorithm": self.search_algorithm, "seed": self.search_seed},
            "scheduler": {"name": self.scheduler, "grace_period": self.grace_period,
                          "reduction_factor": self.reduction_factor},
            "trials": {"num": self.num_trials, "concurrency": self.concurrency, "repeats": self.repeats,
                       "max_failures": self.max_failures},
            "resources": {"cpus": self.cpus_per_trial, "gpus": self.gpus_per_trial},
            "cluster": self.cluster_address or False,
            "metric": {"name": self.metric, "mode": self.mode},
            "storage": {"dir": str(self.storage), "mlflow_tracking_uri": self.mlflow_tracking_uri,
                        "optuna_storage": self.optuna_storage},
            "report": self.report,
        }

    def dump(self, path: str | Path) -> Path:
        """Write the resolved spec (``<study_dir>/study.yaml``; ``resume`` reads it back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def describe(self) -> list[str]:
        """Human-readable summary lines (``routed-study validate``)."""
        s = self.setup
        doc = (self.space.__doc__ or "").strip().splitlines()[0]
        searched = len(self.space.parameters())
        return [
            f"study '{self.name}'",
            f"  backbone: {s.backbone} ({s.backbone_family}), max_length {s.max_length}",
            f"  tasks: {', '.join(s.tasks)}  (train {s.train_per_task}, eval {s.eval_per_task} per task, "
            f"split seed {s.split_seed}, data in {s.data_dir})",
            f"space '{self.space.name}': {searched} searched knob(s), {len(self.space.constants())} fixed  -- {doc}",
            *self.space.describe(),
            *self.space.inert_report(),
            f"search: {self.search_algorithm} (seed {self.search_seed}), optimising {self.metric} ({self.mode})",
            f"scheduler: {self.scheduler}" + (f" (grace period {self.grace_period}, reduction factor "
                                               f"{self.reduction_factor:g}, max {self.max_epochs()} epochs)"
                                               if self.scheduler == "asha" else ""),
            f"trials: {self.num_trials} configuration(s) x {self.repeats} repeat(s) = {self.num_samples} run(s), "
            f"{self.concurrency} at a time, up to {self.max_failures} retries each",
            f"resources per trial: {self.cpus_per_trial:g} CPU, {self.gpus_per_trial:g} GPU on "
            + (f"the Ray cluster at {self.cluster_address}" if self.cluster_address else "this machine"),
            f"study directory: {self.study_dir}",
            f"MLflow tracking: {self.mlflow_tracking_uri}",
            f"Optuna storage: {self.optuna_storage} (study '{self.optuna_study_name}')",
            f"report: {'written to ' + str(self.study_dir / 'report') if self.report else 'off'}",
        ]


class _Reader:
    """Typed access to the nested YAML mapping, checked against SCHEMA."""

    def __init__(self, raw: Mapping[str, Any]):
        self.raw = raw

    def get(self, key: str, kind: type | tuple, default: Any = _REQUIRED, *, choices=None,
            low: float | None = None, above: float | None = None) -> Any:
        section, _, leaf = key.rpartition(".")
        container = self._section(section) if section else self.raw
        if leaf not in container or (container[leaf] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise InputError(f"key '{key}': missing")
            return default
        value = container[leaf]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join({"str": "text", "dict": "mapping", "NoneType": "null"}.get(k.__name__, k.__name__)
                                for k in kinds)
            raise InputError(f"key '{key}': expected {names}, got {value!r}")
        if choices is not None and value not in choices:
            raise InputError(f"key '{key}': got {value!r}{did_you_mean(value, choices)}; "
                             f"allowed values: {format_choices(choices)}")
        if low is not None and not isinstance(value, bool) and value < low:
            raise InputError(f"key '{key}': must be >= {low:g}, got {value!r}")
        if above is not None and value <= above:
            raise InputError(f"key '{key}': must be > {above:g}, got {value!r}")
        if kind is list and (not value or not all(isinstance(v, str) for v in value)):
            raise InputError(f"key '{key}': expected a non-empty list of names, got {value!r}")
        return value

    def _section(self, name: str) -> Mapping[str, Any]:
        value = self.raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise InputError(f"key '{name}': expected a mapping with keys {', '.join(SCHEMA[name])}, "
                             f"got {value!r}")
        return value

    def reject_unknown(self) -> None:
        for section, value in self.raw.items():
            if section not in SCHEMA:
                raise InputError(f"key '{section}': unknown section{did_you_mean(section, SCHEMA)}; "
                                 f"allowed: {', '.join(SCHEMA)}")
            if SCHEMA[section] and isinstance(value, Mapping):
                for key in value:
                    if key not in SCHEMA[section]:
                        raise InputError(f"key '{section}.{key}': unknown key"
                                         f"{did_you_mean(str(key), SCHEMA[section])}; "
                                         f"allowed: {', '.join(SCHEMA[section])}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice (PyYAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def is_uri(value: str | Path) -> bool:
    """A location with a scheme (s3://, sqlite:///, http://) rather than a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(value)) is not None


def _storage(value: str) -> Path | str:
    """A local directory (absolute, relative to the working directory) or a URI kept as given."""
    return value.rstrip("/") if is_uri(value) else Path(value).expanduser().absolute()


def _check_writable(directory: Path, key: str) -> None:
    """The directory, or its nearest existing ancestor, must be a writable directory."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"key '{key}': {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"key '{key}': {existing} is not writable")
