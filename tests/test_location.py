"""Location (a local directory or a URI, one type) and the single definitions of trial results."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from routed_study.study.location import Location, is_uri
from routed_study.trainables import results


def test_a_local_location_is_absolute_and_compares_with_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = Location("studies")
    assert here.is_local and here == tmp_path / "studies" and here == str(tmp_path / "studies")
    assert here / "a" == tmp_path / "studies" / "a" and Path(here / "a") == tmp_path / "studies" / "a"
    assert (here / "a").as_uri() == (tmp_path / "studies" / "a").as_uri()
    assert Location("~/x") == Path.home() / "x"
    assert len({here, Location(tmp_path / "studies"), Location(str(tmp_path / "studies"))}) == 1


def test_a_remote_location_joins_without_touching_the_network():
    remote = Location("s3://bucket/studies/")
    assert not remote.is_local and str(remote) == "s3://bucket/studies"
    assert remote / "t" == "s3://bucket/studies/t" and (remote / "t").as_uri() == "s3://bucket/studies/t"
    assert (remote / "t").name == "t" and remote != Location("s3://bucket/other")
    with pytest.raises(ValueError, match="not a local path"):
        remote.path
    with pytest.raises(ValueError):
        Path(remote)
    assert pickle.loads(pickle.dumps(remote)) == remote
    assert is_uri("sqlite:///x.db") and is_uri("gs://b") and not is_uri("/abs/dir") and not is_uri("rel/dir")


def test_files_are_read_and_written_through_the_same_type(tmp_path):
    target = Location(tmp_path) / "deep" / "study.yaml"
    assert not target.is_file()
    target.write_text("name: x\n")
    assert target.is_file() and target.read_text() == "name: x\n"
    assert (tmp_path / "deep" / "study.yaml").read_text() == "name: x\n"
    assert not Location(tmp_path / "deep").is_file()  # a directory is no file
    (Location(tmp_path) / "made" / "here").mkdir()
    assert (tmp_path / "made" / "here").is_dir()


def test_result_names_are_rays_own():
    from ray.tune.result import TIME_THIS_ITER_S, TIME_TOTAL_S, TRAINING_ITERATION
    from ray.tune.search.repeater import TRIAL_INDEX

    assert results.REPEAT_INDEX_KEY == TRIAL_INDEX
    assert results.TRAINING_ITERATION == TRAINING_ITERATION
    assert results.TIMING_METRICS == (TIME_THIS_ITER_S, TIME_TOTAL_S)


def test_artifact_names_are_the_files_a_trial_writes(tmp_path):
    import numpy as np

    from routed_study.trainables.artifacts import RoutingSnapshot

    paths = RoutingSnapshot(("a",), ("s0", "s1"), np.zeros((1, 2)), None).write(tmp_path)
    assert sorted(p.name for p in paths.values()) == sorted(results.TRIAL_ARTIFACTS)


@pytest.mark.parametrize("config, last, stopped", [
    ({"epochs": 3}, {"epoch": 1}, True),
    ({"epochs": 3}, {"epoch": 3}, False),
    ({"epochs": 3}, {"training_iteration": 2}, True),       # no epoch metric: Ray's count
    ({}, {"epoch": 1}, True),                                # the knob's default epochs (> 1)
    ({"epochs": 2}, {}, False),                              # nothing reported: not a scheduler stop
])
def test_stopped_early(config, last, stopped):
    assert results.stopped_early(config, last) is stopped


def test_best_skips_non_numbers_and_keeps_the_first_of_equals():
    items = [("a", 1.0), ("b", float("nan")), ("c", 3.0), ("d", 3.0), ("e", None), ("f", True), ("g", -2)]
    assert results.best(items, lambda i: i[1], "max") == (3.0, ("c", 3.0))
    assert results.best(items, lambda i: i[1], "min") == (-2.0, ("g", -2))
    assert results.best([("x", None)], lambda i: i[1], "max") is None
    assert results.best_first("min") is True and results.best_first("max") is False
