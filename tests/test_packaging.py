"""One installed name: the wheel installs routed_study.<folder>, never generic top-level packages."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("study", "trainables", "search_spaces", "analysis")
BARE_IMPORT = re.compile(rf"^\s*(from|import) ({'|'.join(FOLDERS)})(\.|\s|$)", re.M)


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_the_namespace():
    config = _setuptools()
    folders = sorted(str(p.parent.relative_to(REPO)) for folder in FOLDERS
                     for p in (REPO / folder).rglob("__init__.py"))
    expected = {"routed_study." + f.replace("/", "."): f for f in folders}
    assert sorted(config["packages"]) == sorted(expected)
    assert config["package-dir"] == expected


def test_no_module_imports_the_bare_folder_names():
    offenders = [str(p.relative_to(REPO)) for folder in (*FOLDERS, "tests", "bench")
                 for p in (REPO / folder).rglob("*.py") if BARE_IMPORT.search(p.read_text())]
    assert offenders == []


def test_a_users_own_analysis_folder_does_not_shadow_ours(tmp_path):
    # A researcher's repository with its own analysis/ package, run from its root.
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("MINE = True\n")
    code = ("import analysis, routed_study.analysis.findings as f, routed_study.study.cli as c; "
            "assert analysis.MINE and f.__file__.startswith(%r) and callable(c.main); print('ok')"
            % str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
