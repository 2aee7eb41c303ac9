"""Studies: the YAML spec (``study.spec``), orchestration (``study.runner``) and the CLI (``study.cli``).

Importing the package is cheap; each submodule loads its own heavy dependencies.
"""
