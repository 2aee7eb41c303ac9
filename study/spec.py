"""A study spec: one YAML file that says what to train, what to search and where to write.

The schema is :class:`StudyFile` below: pydantic models whose nesting mirrors the YAML,
every key with its type, default, bounds and help. Unknown keys are errors; a key given as
null takes its default. ``routed-study schema`` prints it as JSON Schema (for an editor's
YAML plugin); ``dump`` writes a resolved spec from it.

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
- ``plugins`` are imported before anything else is checked, so a plugin's route methods,
  encoders or spaces are valid names in the rest of the spec (and on every Ray worker).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from routed_study.search_spaces import SearchSpace, get_space
from routed_study.search_spaces.base import Override
from routed_study.study.designs import SearchAlgorithm, algorithm_names, get_algorithm
from routed_study.study.location import Location, check_location, is_uri, s3_endpoint_note
from routed_study.trainables.errors import InputError, did_you_mean
from routed_study.trainables.plugins import load_plugins
from routed_study.trainables.routed_prompt.config import KNOBS
from routed_study.trainables.schema import Section, parse
from routed_study.trainables.setup import BACKBONE_FAMILIES, TrialSetup

SEARCH_ALGORITHMS = algorithm_names()
SCHEDULERS = ("asha", "none")
MODES = ("max", "min")
#: Trials of a random or TPE search when ``trials.num`` is not given.
DEFAULT_NUM_TRIALS = 10
__all__ = ["StudyFile", "StudySpec"]


def _setup_field(name: str, **changes: Any) -> Any:
    """The spec key that sets TrialSetup's field ``name``: its default, bounds and help."""
    return type(TrialSetup.model_fields[name]).merge_field_infos(TrialSetup.model_fields[name], **changes)


# ------------------------------------------------------------------ the schema
class Backbone(Section):
    """The frozen model every trial trains its prompts on."""

    name: str = _setup_field("backbone")
    family: str = _setup_field("backbone_family", json_schema_extra={"enum": list(BACKBONE_FAMILIES)})
    max_length: int = _setup_field("max_length")


class Data(Section):
    """The tasks and how many examples of each."""

    dir: str = _setup_field("data_dir", description="Where `routed-study data prepare` wrote the suite "
                                                    "(relative to the working directory).")
    tasks: list[str] = _setup_field("tasks")
    train_per_task: int = _setup_field("train_per_task")
    train_sizes: dict[str, int] = _setup_field("train_sizes")
    eval_per_task: int = _setup_field("eval_per_task")
    split_seed: int = _setup_field("split_seed")


def _override_schema(schema: dict[str, Any]) -> None:
    # Checked knob by knob by the space (param_from_spec, against the knob's type); the
    # JSON Schema still shows an editor each entry's form.
    schema["propertyNames"] = {"enum": list(KNOBS)}
    schema["additionalProperties"] = {"anyOf": [Override.model_json_schema(), {"type": "array", "minItems": 1}]}


class Space(Section):
    """A registered search space, with knobs re-distributed (override) or fixed."""

    name: str = Field("findings", description="A registered search space: core, findings, original_grid "
                                              "or one a plugin registers.")
    override: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_override_schema,
                                     description="knob -> {low, high[, log][, step]}, {choices: [...]} or a "
                                                 "list, each with optional when: {knob: values}.")
    fixed: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"propertyNames": {"enum": list(KNOBS)}},
                                  description="knob -> the value every trial uses.")


class Search(Section):
    """How trials are chosen: an Optuna sampler, or a design fixed before the first trial."""

    algorithm: Literal[SEARCH_ALGORITHMS] = Field("tpe", description="; ".join(
        f"{name}: {get_algorithm(name).help}" for name in SEARCH_ALGORITHMS) + ".")
    seed: int = Field(0, ge=0, description="Seed of the sampler or of the design's draws.")
    findings: str | None = Field(None, description="pairs: the findings file whose compared claims are designed "
                                                   "(relative to the working directory); default: the shipped "
                                                   "analysis/findings.yaml.")
    claims: list[str] | None = Field(None, min_length=1, description="pairs: ids of the claims to design; "
                                                                     "default: every compared claim of the file.")
    bases: int = Field(8, ge=2, description="pairs: base configurations per claim (each runs with the claim's "
                                            "a and b values).")
    trajectories: int = Field(10, ge=2, description="screening: Morris trajectories r; the design runs "
                                                    "r x (searched knobs + 1) configurations.")
    levels: int = Field(4, ge=2, description="screening: grid levels per knob (even; a range is cut at its "
                                             "quantiles, a choice list at its ordered values).")


class Scheduler(Section):
    name: Literal[SCHEDULERS] = Field("asha", description="asha stops poor trials early; none runs every epoch.")
    grace_period: int = Field(1, ge=1, description="Epochs before ASHA may stop a trial.")
    reduction_factor: float = Field(2.0, gt=1)


class Trials(Section):
    num: int | None = Field(None, ge=1, description=f"Distinct configurations; default: the grid size "
                                                    f"with algorithm grid, else {DEFAULT_NUM_TRIALS}.")
    concurrency: int = Field(1, ge=1, description="Trials at a time.")
    repeats: int = Field(1, ge=1, description="Seeds per configuration (needs scheduler: none when > 1).")
    max_failures: int = Field(0, ge=0, description="Retries of an errored trial.")


class Resources(Section):
    cpus: float = Field(1.0, gt=0, description="CPUs per trial.")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial.")


class Metric(Section):
    name: str = Field("score", description="score, train_loss, val/<task> or val/<task>/<metric>.")
    mode: Literal[MODES] = "max"


class Storage(Section):
    dir: str = Field("studies", description="A directory (relative to the working directory) or a URI "
                                            "such as s3://bucket/studies.")
    mlflow_tracking_uri: str | None = Field(None, description="Default: sqlite in the study directory.")
    optuna_storage: str | None = Field(None, description="An RDB URL; default: sqlite in the study directory.")


class StudyFile(Section):
    """The YAML of a study spec, section by section."""

    unknown_key_word = "section"

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="letters, digits, '.', '_' or '-' (it names a directory)")
    plugins: list[str] = Field(default_factory=list, description=(
        "Modules to import first (driver and every Ray worker); what they register is valid below."))
    backbone: Backbone = Field(default_factory=Backbone)
    data: Data
    space: Space = Field(default_factory=Space)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    trials: Trials = Field(default_factory=Trials)
    resources: Resources = Field(default_factory=Resources)
    cluster: bool | str = Field(False, description='true: ray.init(address="auto"); a string: that address.')
    metric: Metric = Field(default_factory=Metric)
    storage: Storage = Field(default_factory=Storage)
    report: bool = Field(True, description="Write the analysis report when the study ends.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (``routed-study schema``)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",  # the draft pydantic writes
            **StudyFile.model_json_schema(), "title": "routed-study spec"}


#: StudySpec's flat attribute -> the key of the resolved file it reads.
FLAT_NAMES = {
    "name": "name", "plugins": "plugins", "search_algorithm": "search.algorithm", "search_seed": "search.seed",
    "scheduler": "scheduler.name", "grace_period": "scheduler.grace_period",
    "reduction_factor": "scheduler.reduction_factor",
    "num_trials": "trials.num",  # distinct configurations; see num_samples
    "concurrency": "trials.concurrency", "repeats": "trials.repeats",
    "max_failures": "trials.max_failures",  # Ray FailureConfig: retries of an errored trial
    "cpus_per_trial": "resources.cpus", "gpus_per_trial": "resources.gpus",
    "metric": "metric.name", "mode": "metric.mode",
    "mlflow_tracking_uri": "storage.mlflow_tracking_uri", "optuna_storage": "storage.optuna_storage",
    "optuna_study_name": "name", "report": "report",
}


def _alias(dotted: str) -> property:
    parts = dotted.split(".")

    def get(self: "StudySpec") -> Any:
        value: Any = self.file
        for part in parts:
            value = getattr(value, part)
        return value

    return property(get, doc=f"``{dotted}`` of the resolved spec.")


# ------------------------------------------------------------------ the resolved study
class StudySpec:
    """A validated study: the resolved file (absolute paths, URIs and trial count filled in),
    the trial setup and the search space built from it. The flat attributes the runner reads
    (``num_trials``, ``metric``, ...) are the file's keys named in :data:`FLAT_NAMES`."""

    def __init__(self, file: StudyFile, setup: TrialSetup, space: SearchSpace, algorithm: SearchAlgorithm):
        self.file, self.setup, self.space, self.algorithm = file, setup, space, algorithm

    @property
    def cluster_address(self) -> str | None:
        """None: a local Ray; else ``ray.init(address=...)``."""
        return ("auto" if self.file.cluster is True else self.file.cluster) or None

    @property
    def storage(self) -> Location:
        return Location(self.file.storage.dir)

    @property
    def study_dir(self) -> Location:
        return self.storage / self.name

    @property
    def mlflow_artifact_location(self) -> str | None:
        """The MLflow experiment's artifact location (None: the tracking server's own)."""
        return artifact_location_for(self.study_dir, self.mlflow_tracking_uri)

    @property
    def num_samples(self) -> int:
        """Trials Ray runs: every configuration times its repeats."""
        return self.num_trials * self.repeats

    # ------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path | Location) -> "StudySpec":
        """Read and validate a YAML spec (a local file or a URI such as ``s3://.../study.yaml``);
        InputError "<file>: key 'a.b': ..." on any problem."""
        location = Location(path)
        if not location.is_file():
            raise InputError(f"{path}: no such spec file")
        try:
            raw = yaml.load(location.read_text(), Loader=_UniqueKeyLoader)
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
            return cls._resolve(raw, file)
        except InputError as exc:
            message = str(exc)
            raise InputError(message if message.startswith(f"{file}:") else f"{file}: {message}") from None

    @classmethod
    def _resolve(cls, raw: Any, file: str) -> "StudySpec":
        if not isinstance(raw, dict):
            raise InputError(f"{file}: a spec is a mapping of sections ({', '.join(StudyFile.model_fields)}), "
                             f"got {type(raw).__name__}")
        given = parse(StudyFile, raw, file)
        load_plugins(given.plugins, where="key 'plugins'")
        b, d = given.backbone, given.data
        setup = TrialSetup.from_dict({
            "backbone": b.name, "backbone_family": b.family, "max_length": b.max_length,
            "data_dir": str(Path(d.dir).expanduser().absolute()), "tasks": d.tasks,
            "train_per_task": d.train_per_task, "train_sizes": d.train_sizes, "eval_per_task": d.eval_per_task,
            "split_seed": d.split_seed, "plugins": given.plugins}, where=file)

        space = get_space(given.space.name, where="key 'space.name'")
        space = space.customise(given.space.override, given.space.fixed, where="space")
        space.check_setup(setup, where="space")
        algorithm = _algorithm(given, space)
        num_trials = _num_trials(given, space, algorithm)
        if given.trials.repeats > 1 and given.scheduler.name == "asha":
            raise InputError("key 'trials.repeats': repeats > 1 needs scheduler: none (ASHA would stop some "
                             "repeats of a configuration early and bias its average)")
        storage = Location(given.storage.dir)
        check_location(str(storage), "storage.dir")
        study_dir = storage / given.name
        resolved = given.model_copy(update={
            "data": d.model_copy(update={"dir": setup.data_dir}),
            "space": Space.model_validate(space.to_spec()),
            "search": given.search.model_copy(update={"findings": given.search.findings and str(
                Path(given.search.findings).expanduser().absolute())}),
            "trials": given.trials.model_copy(update={"num": num_trials}),
            "storage": Storage(dir=str(storage),
                               mlflow_tracking_uri=_store_uri(given.storage, "mlflow_tracking_uri", study_dir,
                                                              "mlflow.db"),
                               optuna_storage=_store_uri(given.storage, "optuna_storage", study_dir, "optuna.db")),
        })
        spec = cls(resolved, setup, space, algorithm)
        spec._check_metric()
        spec._check_schedule()
        spec._check_resources()
        if storage.is_local:
            _check_writable(storage.path, "storage.dir")
        return spec

    # ---------------------------------------------------------- semantic checks
    def _check_metric(self) -> None:
        from routed_study.trainables.tasks import get_task

        allowed = ["score", "train_loss"]
        # A trial's task_set may leave tasks out: only the tasks every trial trains on report every epoch.
        for task in self.setup.tasks_of_every_trial(self.space._possible("task_set")):
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
        return self.algorithm.sampler()

    @property
    def design_points(self):
        """The designed trials (``study/designs.py``), or None when a sampler proposes them."""
        return self.algorithm.points()

    def max_epochs(self) -> int:
        """The most epochs any trial can run (ASHA's max_t)."""
        if "epochs" in self.space.constants():
            return int(self.space.constants()["epochs"])
        params = self.space.parameters()
        if "epochs" in params:
            return int(max(params["epochs"].possible_values()))
        return int(KNOBS["epochs"].default)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec in YAML form; ``from_dict`` of it gives this spec back."""
        return self.file.model_dump(mode="json")

    def dump(self, path: str | Path | Location) -> Location:
        """Write the resolved spec (``<study_dir>/study.yaml``; ``resume`` reads it back)."""
        path = Location(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def describe(self) -> list[str]:
        """Human-readable summary lines (``routed-study validate``)."""
        s = self.setup
        doc = (self.space.__doc__ or "").strip().splitlines()[0]
        searched = len(self.space.parameters())
        return [
            f"study '{self.name}'" + (f" (plugins: {', '.join(self.plugins)})" if self.plugins else ""),
            f"  backbone: {s.backbone} ({s.backbone_family}), max_length {s.max_length}",
            f"  tasks: {', '.join(s.tasks)}  (train {s.train_per_task}"
            + "".join(f", {task} {n}" for task, n in s.train_sizes.items()) + f", eval {s.eval_per_task} per task, "
            f"split seed {s.split_seed}, data in {s.data_dir})",
            f"space '{self.space.name}': {searched} searched knob(s), {len(self.space.constants())} fixed  -- {doc}",
            *self.space.describe(),
            *self.space.inert_report(),
            f"search: {self.search_algorithm} (seed {self.search_seed}), "
            + (f"measuring {self.metric}" if self.design_points is not None else
               f"optimising {self.metric} ({self.mode})"),
            *self.algorithm.describe(),
            f"scheduler: {self.scheduler}" + (f" (grace period {self.grace_period}, reduction factor "
                                               f"{self.reduction_factor:g}, max {self.max_epochs()} epochs)"
                                               if self.scheduler == "asha" else ""),
            f"trials: {self.num_trials} configuration(s) x {self.repeats} repeat(s) = {self.num_samples} run(s), "
            f"{self.concurrency} at a time, up to {self.max_failures} retries each",
            f"resources per trial: {self.cpus_per_trial:g} CPU, {self.gpus_per_trial:g} GPU on "
            + (f"the Ray cluster at {self.cluster_address}" if self.cluster_address else "this machine"),
            "where everything goes:",
            f"  Ray results and checkpoints: {self.study_dir}/<trial>/" + s3_endpoint_note(self.study_dir),
            f"  Optuna study '{self.optuna_study_name}': {self.optuna_storage}",
            f"  MLflow runs (experiment '{self.name}'): {self.mlflow_tracking_uri}",
            f"  MLflow artifacts: {self.mlflow_artifact_location or 'the tracking server artifact store (proxied)'}",
            f"  report: {self.report_dir() if self.report else 'off'}"
            + (" (built from the MLflow runs)" if self.report and not self.study_dir.is_local else ""),
        ]

    def report_dir(self) -> Location:
        """Where the runner writes the report: beside the results, or ./reports/<name> for remote storage."""
        return self.study_dir / "report" if self.study_dir.is_local else Location(Path("reports", self.name))


for _attribute, _key in FLAT_NAMES.items():
    setattr(StudySpec, _attribute, _alias(_key))


def _algorithm(given: StudyFile, space: SearchSpace) -> SearchAlgorithm:
    """The search algorithm of the spec, built (a design computes its trials here, before any runs)."""
    chosen = get_algorithm(given.search.algorithm)
    for key in sorted(given.search.model_fields_set - {"algorithm", "seed"}):
        # A resolved spec (study.yaml) lists every key at its default: only a changed one is misplaced.
        if key not in chosen.reads and getattr(given.search, key) != Search.model_fields[key].default:
            readers = [n for n in SEARCH_ALGORITHMS if key in get_algorithm(n).reads]
            raise InputError(f"key 'search.{key}': read by algorithm {' and '.join(readers)} only, not "
                             f"{chosen.name}")
    if chosen.needs_full_trials and given.scheduler.name != "none":
        raise InputError(f"key 'scheduler.name': the {chosen.name} design needs scheduler: none (ASHA would "
                         f"stop some trials of a comparison early and bias it)")
    return chosen(given.search, space, given.trials.repeats)


def _num_trials(given: StudyFile, space: SearchSpace, chosen: SearchAlgorithm) -> int:
    """``trials.num``, checked against the space: the grid size by default with grid search, the
    design's size with a design."""
    points = chosen.points()
    if points is not None:
        if given.trials.num not in (None, len(points)):
            raise InputError(f"key 'trials.num': the {chosen.name} design has {len(points)} configurations; "
                             f"leave trials.num out (search.bases or search.trajectories size a design)")
        return len(points)
    algorithm = given.search.algorithm
    grid = space.grid()
    if algorithm == "grid" and grid is None:
        raise InputError(f"key 'search.algorithm': grid needs a space of unconditional choices only; "
                         f"space '{space.name}' has ranges or conditions (use tpe/random, or give every "
                         f"searched knob 'choices' without 'when')")
    grid_size = space.grid_size()  # distinct models only
    num_trials = given.trials.num or (grid_size if algorithm == "grid" else DEFAULT_NUM_TRIALS)
    if algorithm == "grid" and num_trials > grid_size:
        raise InputError(f"key 'trials.num': {num_trials} exceeds the grid's {grid_size} distinct models")
    if not space.parameters() and num_trials > 1:
        raise InputError(f"key 'trials.num': space '{space.name}' searches nothing (every knob fixed), "
                         f"so all {num_trials} configurations would be identical; set trials.num: 1 "
                         f"and use trials.repeats for seeds")
    return num_trials


def _store_uri(storage: Storage, key: str, study_dir: Location, filename: str) -> str:
    """The URI at storage.<key>, or a sqlite file in the study directory when it is not given."""
    value = getattr(storage, key)
    if value is None:
        if not study_dir.is_local:
            raise InputError(f"key 'storage.{key}': required when storage.dir is a URI "
                             f"({storage.dir.rstrip('/')}): a sqlite file needs a local directory")
        return f"sqlite:///{study_dir / filename}"
    if not is_uri(value):
        raise InputError(f"key 'storage.{key}': {value!r} is not a URI (e.g. sqlite:////abs/path.db, "
                         f"postgresql://host/db, http://host:5000)")
    check_location(value, f"storage.{key}")
    return value


def artifact_location_for(study_dir: str | Path | Location, tracking_uri: str = "") -> str | None:
    """``<study_dir>/mlartifacts`` as a URI (absolute file URI for a local directory); None for a
    tracking server, which stores artifacts where its ``--artifacts-destination`` says (proxied,
    so that clients need no storage credentials)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return (Location(study_dir) / "mlartifacts").as_uri()


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


def _check_writable(directory: Path, key: str) -> None:
    """The directory, or its nearest existing ancestor, must be a writable directory."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"key '{key}': {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"key '{key}': {existing} is not writable")
