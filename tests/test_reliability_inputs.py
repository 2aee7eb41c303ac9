"""Bad-input catalogue: every malformed spec, data file, results table or study directory
ends the CLI with exit code 2, one line on stderr naming the problem, no traceback, and no
file written anywhere (the stores included).

Each case is (id, setup, needle): ``setup(tmp)`` writes whatever files the case needs into
the temporary working directory and returns the CLI arguments; ``needle`` must appear in
the error line. The whole catalogue runs in-process through ``study.cli.main``; a few cases
also run through the installed console script.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from routed_study.study.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "study" / "specs" / "smoke.yaml").read_text())
#: rows per split of the tiny offline suite the data cases corrupt
TINY_ROWS = 6


# ------------------------------------------------------------------ case builders
def spec_file(tmp: Path, spec: Any, name: str = "spec.yaml") -> Path:
    path = tmp / name
    if isinstance(spec, (str, bytes)):
        path.write_bytes(spec if isinstance(spec, bytes) else spec.encode())
    else:
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def smoke(**changes: Any) -> dict:
    """The smoke spec with dotted keys changed (value DELETE removes the key)."""
    spec = copy.deepcopy(SMOKE)
    spec["data"]["dir"] = "tiny_data"
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


DELETE = object()


def validate(spec: Any) -> Callable[[Path], list[str]]:
    return lambda tmp: ["validate", str(spec_file(tmp, spec))]


def run(spec: Any) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", str(spec_file(tmp, spec))]


def write_tiny_suite(data_dir: Path, source: Path) -> None:
    """A prepared-looking offline suite (manifest + every task's splits), a few real rows each
    of the real suite in ``source``, so that `run` finds the data prepared and never
    re-extracts over a corrupted file."""
    for task_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("_")):
        (data_dir / task_dir.name).mkdir(parents=True)
        for split in ("train", "validation", "test"):
            lines = (task_dir / f"{split}.csv").read_text().splitlines(keepends=True)
            (data_dir / task_dir.name / f"{split}.csv").write_text("".join(lines[:TINY_ROWS + 1]))
    shutil.copy(source / "manifest.json", data_dir / "manifest.json")


def corrupt_data(relative: str, content: str, spec: dict | None = None) -> Callable[[Path], list[str]]:
    """`run` of the smoke spec over the tiny suite with one data file replaced.

    (A missing file is not bad input for `run`: it prepares the offline suite.)"""
    def setup(tmp: Path) -> list[str]:
        (tmp / "tiny_data" / relative).write_text(content)
        return ["run", str(spec_file(tmp, spec or smoke()))]
    return setup


def analyze_csv(content: str | bytes, *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = tmp / "trials.csv"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["analyze", str(path), "--out", str(tmp / "report"), *extra]
    return setup


GOOD_TRIALS = "learning_rate,epochs,score\n" + "".join(f"{0.01 * (i + 1)},{1 + i % 3},{50 + i}\n" for i in range(12))


def study_dir_with(files: dict[str, str]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = tmp / "studies" / "half"
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        return folder
    return make


def resumed(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["resume", str(make(tmp))]


def resolved_smoke_yaml(tmp: Path) -> str:
    """A valid resolved study.yaml, as `run` writes it (but no Ray experiment beside it)."""
    from routed_study.study.spec import StudySpec

    spec = StudySpec.load(spec_file(tmp, smoke(), "source.yaml"))
    (tmp / "source.yaml").unlink()
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)


def resume_without_experiment(tmp: Path) -> list[str]:
    return ["resume", str(study_dir_with({"study.yaml": resolved_smoke_yaml(tmp)})(tmp))]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], list[str]]
    needle: str


CASES = [
    # --- specs: syntax and structure
    Case("yaml syntax", validate("name: x\ndata: {tasks: [rt_sentiment\n"), "YAML syntax error at line"),
    Case("tab indentation", validate("name: x\ndata:\n\ttasks: [rt_sentiment]\n"), "YAML syntax error"),
    Case("duplicate key", validate("name: a\nname: b\ndata: {tasks: [rt_sentiment]}\n"), "appears twice"),
    Case("empty file", validate(""), "a spec is a mapping"),
    Case("list at top level", validate("- smoke\n"), "a spec is a mapping"),
    Case("binary file", validate(b"\xff\xfe\x00\x81name"), "spec.yaml"),
    Case("missing spec file", lambda tmp: ["validate", str(tmp / "absent.yaml")], "no such spec file"),
    Case("spec is a directory", lambda tmp: ["run", str(tmp)], "no such spec file"),
    Case("unknown section", validate(smoke(trails={"num": 2})), "key 'trails': unknown section"),
    Case("unknown key", validate(smoke(data__task=["rt_sentiment"])), "key 'data.task': unknown key"),
    Case("section not a mapping", validate(smoke(trials=3)), "key 'trials': expected a mapping"),
    Case("missing name", validate(smoke(name=DELETE)), "key 'name': missing"),
    Case("name with a slash", validate(smoke(name="../escape")), "key 'name'"),
    # --- specs: types and ranges
    Case("text for int", validate(smoke(trials__num="four")), "key 'trials.num': expected int"),
    Case("bool for int", validate(smoke(trials__concurrency=True)), "key 'trials.concurrency'"),
    Case("zero trials", validate(smoke(trials__num=0)), "key 'trials.num': must be >= 1"),
    Case("negative retries", validate(smoke(trials__max_failures=-1)), "key 'trials.max_failures'"),
    Case("zero cpus", validate(smoke(resources__cpus=0)), "key 'resources.cpus': must be > 0"),
    Case("more cpus than cores", validate(smoke(resources__cpus=(os.cpu_count() or 1) + 1)),
         "key 'resources.cpus'"),
    Case("reduction factor 1", validate(smoke(scheduler={"name": "asha", "reduction_factor": 1})),
         "key 'scheduler.reduction_factor'"),
    Case("grace beyond epochs", validate(smoke(scheduler={"name": "asha", "grace_period": 5})),
         "key 'scheduler.grace_period'"),
    Case("knob out of range", validate(smoke(space__fixed={"epochs": 1, "learning_rate": -1.0})),
         "learning_rate"),
    Case("override low above high", validate(smoke(space__override={"learning_rate": {"low": 1.0, "high": 0.1}})),
         "learning_rate"),
    # --- specs: contradictions and unknown names
    Case("target_share without add_target", validate(smoke(space__fixed={"epochs": 1, "target_share": 0.5})),
         "target_share"),
    Case("repeats under asha", validate(smoke(scheduler={"name": "asha"}, trials__repeats=2)),
         "key 'trials.repeats'"),
    Case("grid over ranges", validate(smoke(search__algorithm="grid")), "key 'search.algorithm'"),
    Case("unknown algorithm", validate(smoke(search__algorithm="bayes")), "allowed values: 'tpe', 'random', 'grid', 'qmc', 'pairs', 'screening'"),
    Case("unknown task", validate(smoke(data__tasks=["rt_sentimnt"])), "unknown task 'rt_sentimnt'"),
    Case("duplicate task", validate(smoke(data__tasks=["bbc_topic", "bbc_topic"])), "lists a task twice"),
    Case("unknown space", validate(smoke(space__name="fidnings")), "key 'space.name'"),
    Case("unknown knob", validate(smoke(space__fixed={"epochs": 1, "lr": 0.1})), "'space.fixed.lr': unknown knob"),
    Case("unknown metric", validate(smoke(metric={"name": "val/cola"})), "key 'metric.name'"),
    Case("backbone dir without weights", lambda tmp: (tmp / "empty_model").mkdir() or
         ["validate", str(spec_file(tmp, smoke(backbone={"name": "./empty_model"})))], "no config.json"),
    Case("storage under a file", lambda tmp: (tmp / "afile").write_text("x") and
         ["validate", str(spec_file(tmp, smoke(storage={"dir": "afile/studies"})))], "key 'storage.dir'"),
    Case("tracking uri not a uri", validate(smoke(storage={"dir": "studies", "mlflow_tracking_uri": "mlflow.db"})),
         "key 'storage.mlflow_tracking_uri'"),
    # --- data files (`run` checks the data before any training)
    Case("data missing column", corrupt_data("rt_sentiment/train.csv", "text,polarity\ngood,positive\n"),
         "missing column 'label'"),
    Case("data unknown class", corrupt_data("rt_sentiment/train.csv", "text,label\ngood film,maybe\n"),
         "unknown class label 'maybe'"),
    Case("data empty file", corrupt_data("bbc_topic/train.csv", ""), "empty file"),
    Case("data header only", corrupt_data("bbc_topic/train.csv", "text,label\n"), "no data rows"),
    Case("data empty text", corrupt_data("rt_sentiment/train.csv", "text,label\n,positive\n"), "empty text"),
    Case("data extra field", corrupt_data("rt_sentiment/train.csv", "text,label\na,positive,extra\n"),
         "more fields than the header"),
    Case("data regression out of range", corrupt_data(
        "vader_movies/train.csv", "text,label\nfine,9.5\n", smoke(data__tasks=["vader_movies"])),
        "not a number in [-4, 4]"),
    Case("empty task list", validate(smoke(data__tasks=[])), "key 'data.tasks'"),
    Case("data bad validation split", corrupt_data(
        "rt_sentiment/validation.csv", "text,label\ngood,maybe\n"), "validation.csv"),
    Case("glue data absent", run(smoke(data__tasks=["cola"])), "cola"),
    # --- results tables for `analyze`
    Case("analyze missing source", lambda tmp: ["analyze", str(tmp / "nope.csv"), "--out", str(tmp / "r")],
         "nope.csv"),
    Case("analyze empty csv", analyze_csv(""), "trials.csv"),
    Case("analyze no target column", analyze_csv(GOOD_TRIALS.replace("score", "accuracy")), "score"),
    Case("analyze target not numeric", analyze_csv("learning_rate,score\n0.1,high\n0.2,low\n"), "score"),
    Case("analyze no knob columns", analyze_csv("score,train_loss\n1,2\n3,4\n"), "knob"),
    Case("analyze bad findings", lambda tmp: (tmp / "f.yaml").write_text("findings: 3\n") and
         analyze_csv(GOOD_TRIALS, "--findings", str(tmp / "f.yaml"))(tmp), "findings"),
    Case("analyze not a study dir", lambda tmp: (tmp / "stuff").mkdir() or
         ["analyze", str(tmp / "stuff"), "--out", str(tmp / "r")], "not a study directory"),
    # --- study directories
    Case("resume not a study dir", lambda tmp: ["resume", str(tmp)], "not a study directory"),
    Case("resume missing dir", lambda tmp: ["resume", str(tmp / "studies" / "ghost")], "not a study directory"),
    Case("resume corrupt study.yaml", resumed(study_dir_with({"study.yaml": "name: [\n"})), "YAML syntax error"),
    Case("resume without experiment", resume_without_experiment, "no Ray Tune experiment state"),
    Case("ui not a study dir", lambda tmp: ["ui", str(tmp)], "neither a tracking URI"),
    Case("data prepare negative seed", lambda tmp: ["data", "prepare", "--data-dir", str(tmp / "d"),
                                                    "--seed", "-1"], "seed must be a non-negative integer"),
]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch, offline_data):
    """A working directory with a tiny prepared suite; `run` must never reach the runner."""
    import routed_study.study.runner
    from routed_study import study

    monkeypatch.chdir(tmp_path)
    write_tiny_suite(tmp_path / "tiny_data", offline_data)
    monkeypatch.setattr(study.runner, "run_study", lambda *a, **k: pytest.fail("bad input reached training"))
    monkeypatch.setattr(study.runner, "_ensure_ray", lambda *a, **k: pytest.fail("bad input reached Ray"))
    return tmp_path


def _case(item) -> Case:
    return item.values[0] if hasattr(item, "values") else item


@pytest.mark.parametrize("case", CASES, ids=[_case(c).id for c in CASES])
def test_bad_input_gives_one_clean_line(case: Case, workdir: Path, capsys):
    argv = case.setup(workdir)
    capsys.readouterr()
    before = tree(workdir)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"routed-study {argv[0]}: error: ") and case.needle in err, err
    assert "Traceback" not in err + out
    assert tree(workdir) == before, "bad input wrote files"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30 and len({_case(c).id for c in CASES}) == len(CASES)


CONSOLE = Path(sys.executable).parent / "routed-study"


@pytest.mark.parametrize("case", [c for c in map(_case, CASES) if c.id in ("yaml syntax", "data unknown class",
                                                                 "resume not a study dir")],
                         ids=lambda c: c.id)
def test_bad_input_in_a_real_process(case: Case, tmp_path, offline_data):
    write_tiny_suite(tmp_path / "tiny_data", offline_data)
    argv = case.setup(tmp_path)
    before = tree(tmp_path)
    done = subprocess.run([str(CONSOLE), *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and case.needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert tree(tmp_path) == before
    assert json.loads((tmp_path / "tiny_data" / "manifest.json").read_text())["seed"] == 0
