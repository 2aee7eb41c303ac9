"""The one exception family for bad user input, shared by every package.

Anything a user can get wrong (a spec key, a knob value, a data file, a results
table) raises :class:`InputError` with a one-line message that names the place
(file, key, row) and, where there is a closed set, the allowed values. The CLI
turns it into exit code 2 without a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class InputError(ValueError):
    """A user-facing error: one line, naming what is wrong and where."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_choices(choices: Iterable[object]) -> str:
    """Values as a spec writes them: strings quoted, booleans in YAML's lower case."""
    return ", ".join(str(c).lower() if isinstance(c, bool) else repr(c) if isinstance(c, str) else str(c)
                     for c in choices)
