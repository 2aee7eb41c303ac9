"""Pre-trained task-owned source prompts (``sources: tasks, source_init: pretrained``), cached per node.

ATTEMPT first prompt-tunes one prompt per source task and then routes over those. Here each
task's source prompt is plain prompt tuning of that task alone (``add_target: true,
target_share: 1``, the trial's L and seed, the knob table's defaults for everything else:
:data:`PRETRAIN_KNOBS`) on the same backbone and the same data split as the study.

The result depends on (task, backbone, L, seed, data split) and nothing else, so it is cached
on the node under that key and a study trains each once. Concurrent trials share the cache
safely: the first to need a prompt takes a file lock (``filelock``) for its key and trains it;
the others wait on the lock and then read the file. A prompt is written to a temporary file in
the same directory and renamed into place (``os.replace``, atomic), so a reader never sees a
half-written file, and a trial killed mid-write leaves no file under the final name.

The cache directory: ``$ROUTED_STUDY_SOURCE_CACHE``, else ``~/.cache/routed-study/source-prompts``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from routed_study.trainables.setup import TrialSetup

CACHE_ENV = "ROUTED_STUDY_SOURCE_CACHE"

#: The pre-training recipe: plain prompt tuning (the knob table's defaults otherwise).
PRETRAIN_KNOBS = {"add_target": True, "target_share": 1.0}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "routed-study" / "source-prompts")


def cache_key(task: str, setup: TrialSetup, num_prompt_tokens: int, seed: int) -> dict:
    """What a pre-trained prompt depends on: the task, the backbone, L, the seed and the data split
    (the task's own number of training examples: ``setup`` is the trial's, see TrialSetup.for_trial)."""
    return {"task": task, "backbone": setup.resolved_backbone(), "family": setup.backbone_family,
            "max_length": setup.max_length, "num_prompt_tokens": num_prompt_tokens, "seed": seed,
            "split": {"data_dir": str(Path(setup.data_dir).expanduser().resolve()),
                      "split_seed": setup.split_seed, "train_per_task": setup.train_size(task),
                      "eval_per_task": setup.eval_per_task},
            "recipe": PRETRAIN_KNOBS}


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['task']}-L{key['num_prompt_tokens']}-seed{key['seed']}-{digest}.pt"


@dataclass
class CachedPrompt:
    prompt: torch.Tensor      # L x D, raw (what the routed model's encoder receives)
    trained: bool             # this call trained it (False: read from the cache)
    seconds: float            # wall time of this call


def pretrain_source(task: str, setup: TrialSetup, num_prompt_tokens: int, seed: int,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Prompt-tune ``task`` alone; the L x D prompt."""
    from routed_study.trainables.routed_prompt import RoutedPromptConfig
    from routed_study.trainables.training import Trainer

    config = RoutedPromptConfig.from_dict({**PRETRAIN_KNOBS, "num_prompt_tokens": num_prompt_tokens, "seed": seed},
                                          where="source pre-training")
    # The task alone, on its own number of examples (what the cache key records).
    single = TrialSetup.from_dict({**setup.to_dict(), "tasks": [task], "train_per_task": setup.train_size(task),
                                   "train_sizes": {}}, where="source pre-training")
    trainer = Trainer(config, single, device=device)
    trainer.fit()
    return trainer.model.target.detach()[0].cpu().clone()


def cached_source_prompt(task: str, setup: TrialSetup, num_prompt_tokens: int, seed: int,
                         device: str | torch.device = "cpu") -> CachedPrompt:
    """The pre-trained prompt of ``task``: from this node's cache, or trained once and cached."""
    from filelock import FileLock

    started = time.perf_counter()
    key = cache_key(task, setup, num_prompt_tokens, seed)
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    trained = False
    if not path.exists():   # a file under the final name is complete (written by rename)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                prompt = pretrain_source(task, setup, num_prompt_tokens, seed, device)
                _write_atomically({"key": key, "prompt": prompt}, path)
                trained = True
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if stored["key"] != key:
        raise RuntimeError(f"{path}: cached source prompt has another key (hash collision?)")
    return CachedPrompt(stored["prompt"], trained, time.perf_counter() - started)


def pretrained_sources(setup: TrialSetup, num_prompt_tokens: int, seed: int,
                       device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[CachedPrompt]]:
    """T x L x D prompts of every task of the study, in task order (one source per task)."""
    prompts = [cached_source_prompt(task, setup, num_prompt_tokens, seed, device) for task in setup.tasks]
    return torch.stack([p.prompt for p in prompts]), prompts


def _write_atomically(obj: dict, path: Path) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
