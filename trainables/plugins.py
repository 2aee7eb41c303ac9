"""Plugins: modules that register methods (route methods, compositions, orders, encoders, spaces).

A study spec lists them under ``plugins``; the driver imports them before validation and the
trainable imports them again on every Ray worker (a worker is a fresh process: what the
driver registered does not exist there). A plugin registers with the ordinary decorators,
e.g. ``@register_route_method("mine")`` from ``trainables.routed_prompt.methods``; its name is
then a valid knob value, searched by the ``findings`` space and read by analysis.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from routed_study.trainables.errors import InputError


def load_plugins(names: Iterable[str], where: str = "key 'plugins'") -> list[str]:
    """Import every module of ``names`` (already imported ones are not re-run); returns the names.

    A module that does not import is a one-line InputError naming it and why.
    """
    loaded = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: a plugin is a module name such as 'my_methods', got {name!r}")
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure of the user's module, reported in one line
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
            raise InputError(f"{where}: plugin module '{name}' does not import ({type(exc).__name__}: "
                             f"{detail}); is it on PYTHONPATH of every node?") from exc
        loaded.append(name)
    return loaded
