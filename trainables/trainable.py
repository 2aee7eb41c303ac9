"""The Ray Tune function trainable of a study: one trial of the routed prompt model.

Used as ``tune.with_parameters(routed_prompt_trainable, setup=trial_setup)``.
Every epoch it reports the metrics of :mod:`trainables.training` with a
checkpoint (``state.pt``); a restarted trial resumes from
``ray.tune.get_checkpoint()``. Before each report it writes the router
artifacts into the trial directory (every epoch: a trial stopped early by the
scheduler keeps its latest router), so that the checkpoint sync carries them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from routed_study.trainables.artifacts import RoutingSnapshot
from routed_study.trainables.results import REPEAT_INDEX_KEY
from routed_study.trainables.routed_prompt.config import RoutedPromptConfig, knob_values
from routed_study.trainables.setup import TrialSetup

STATE_FILE = "state.pt"


def trial_config(config: Mapping[str, Any]) -> RoutedPromptConfig:
    """Knobs of a trial config; ``__``-keys are bookkeeping, and the repeat index shifts the seed."""
    parsed = RoutedPromptConfig.from_dict(knob_values(config), where="trial config")
    repeat = int(config.get(REPEAT_INDEX_KEY, 0))
    return dataclasses.replace(parsed, seed=parsed.seed + repeat) if repeat else parsed


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it), else CPU."""
    import ray

    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")


def trial_threads() -> int:
    """The trial's CPU share, so that concurrent trials do not oversubscribe the cores."""
    from ray import tune

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    return max(1, int(cpus))


def load_checkpoint_state(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        # Our own file: it holds numpy / python RNG states, which the safe loader refuses.
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def _quiet_worker_logs() -> None:
    """Keep the study's terminal to its progress lines: Ray forwards every worker's output."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per trial
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint


def routed_prompt_trainable(config: dict, setup: TrialSetup | dict) -> None:
    """Train one trial under Ray Tune, reporting and checkpointing every epoch."""
    from ray import tune

    from routed_study.trainables.plugins import load_plugins
    from routed_study.trainables.training import train

    _quiet_worker_logs()
    if not isinstance(setup, TrialSetup):
        setup = TrialSetup.from_dict(setup)
    load_plugins(setup.plugins, where="setup: key 'plugins'")  # before the knobs name their methods
    knobs = trial_config(config)
    torch.set_num_threads(trial_threads())
    trial_dir = Path(tune.get_context().get_trial_dir())

    def report(metrics: dict[str, float], state: dict[str, Any], routing: RoutingSnapshot) -> None:
        # Every epoch, so that a trial the scheduler stops early still leaves its router.
        routing.write(trial_dir)
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train(knobs, setup, report=report, resume_state=load_checkpoint_state(tune.get_checkpoint()),
          device=trial_device())
