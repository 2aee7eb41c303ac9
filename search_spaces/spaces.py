"""The registered search spaces. Add one: subclass SearchSpace, declare, @register."""

from __future__ import annotations

from typing import Any

from routed_study.search_spaces.base import Param, SearchSpace, choice, floats, ints, register
from routed_study.trainables.routed_prompt.config import KNOBS


def every(name: str, when=None) -> Param:
    """Search every allowed value of a choice knob: a registered method (a plugin's too) included."""
    return choice(name, *KNOBS[name].choices, when=when)


@register
class CoreSpace(SearchSpace):
    """core: the optimisation knobs only (rate, epochs, prompt length, temperature schedule).

    Use it to tune a fixed routed architecture; every other knob keeps its default
    unless the spec fixes it.
    """

    name = "core"

    def declare(self) -> list[Param]:
        return [
            floats("learning_rate", 1e-3, 3e-1, log=True),
            ints("epochs", 2, 4),
            ints("num_prompt_tokens", 4, 20, step=4),
            floats("temperature", 0.1, 10.0, log=True),
            choice("anneal_dir", -1, 0, 1),
        ]


@register
class FindingsSpace(SearchSpace):
    """findings: core plus every categorical knob the research findings (F1-F18) speak of.

    Every knob is suggested only where it means something (the knob table's
    ``applies``): target_share only with add_target and a convex mix, source_order only when
    composing several prompts by cat/concat, apply_softmax_to only when fewer are selected than
    exist, source_init only with task-owned sources. route_method, compose_method, source_order
    and prompt_encoder search every registered method (plugins included). With 4 source prompts
    (the default) every task has at least 4 candidates, so num_selected in {all, 1, 2} is always
    valid; task-owned sources (one per task) are searched with num_selected all or 1, which a
    study of any number of tasks has candidates for.
    eval_route_method stays at ``same``: evaluation routes as training does.

    Data and sharing: train_per_task (F3, F15) replaces the study's ``data.train_per_task`` per
    trial (tasks in ``data.train_sizes`` keep theirs); sharing (F14) draws a preset (shared,
    partial, separate) or custom, and the knobs a preset fixes are not drawn under it. task_set
    (F16) is not searched here, since it needs tasks that share a label space and tasks that do
    not: add ``override: {task_set: [shared_labels, distinct_labels]}`` to a study that has both.
    """

    name = "findings"

    def declare(self) -> list[Param]:
        return CoreSpace().declare() + [
            every("route_method"),
            every("apply_softmax_to"),
            every("compose_method"),
            every("source_order"),
            choice("num_selected", -1, 1, 2),
            choice("add_target", False, True),
            every("target_mix"),
            choice("target_share", 0.25, 0.5, 0.75, 1.0, "learned"),
            choice("attend_target", False, True),
            choice("attend_input", False, True),
            choice("private_prompts", False, True),
            every("sources", when={"num_selected": (-1, 1)}),
            every("source_init"),
            choice("freeze_sources", False, True),
            every("prompt_encoder"),
            choice("init_from_words", False, True),
            choice("backbone_dropout", True, False),
            choice("train_per_task", 50, 200, 800),
            every("sharing"),
        ]


@register
class OriginalGridSpace(SearchSpace):
    """original_grid: the researcher's hand-run exhaustive grid, 2 x 2 x 2 x 2 x 3 = 48 points, 36 models.

    learning_rate x apply_softmax_to (before/after) x compose_method (wavg/cat) x
    source_order (desc/asc) x anneal_dir, at 10 prompt tokens, 3 epochs and 2 of the 4
    sources selected. source_order means nothing under wavg, so a grid search runs the
    36 distinct models only (12 runs fewer than the 48 points). Run it with
    ``search: {algorithm: grid}`` to compare a study against the old way.
    """

    name = "original_grid"

    def declare(self) -> list[Param]:
        return [
            choice("learning_rate", 0.01, 0.1),
            choice("apply_softmax_to", "before", "after"),
            choice("compose_method", "wavg", "cat"),
            choice("source_order", "desc", "asc"),
            choice("anneal_dir", -1, 0, 1),
        ]

    def constants(self) -> dict[str, Any]:
        # The researcher's grids selected fewer candidates than exist: with all of them
        # selected, apply_softmax_to before and after are the same model (spec section 7).
        return {"num_prompt_tokens": 10, "epochs": 3, "num_selected": 2}
