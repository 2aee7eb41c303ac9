"""Named search spaces over the routed prompt model's knobs (see ``base`` for the model)."""

from routed_study.search_spaces.base import (CustomSpace, Param, SearchSpace, get_space, param_from_spec,
                                register, space_names)
from routed_study.search_spaces import spaces as _spaces  # noqa: F401  (registers core, findings, original_grid)

__all__ = ["CustomSpace", "Param", "SearchSpace", "get_space", "param_from_spec", "register",
           "space_names"]
