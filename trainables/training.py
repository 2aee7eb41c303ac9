"""The training loop of one trial, usable with or without Ray.

``train(config, setup, report=...)`` builds the frozen backbone and the routed
prompt module, trains epoch by epoch (each batch one task), evaluates on the
validation split after every epoch and on the test split after the last, and
hands each epoch's metrics plus a resumable state to ``report``. Passing that
state back as ``resume_state`` continues the run exactly where it stopped: the
batch order of an epoch is a function of (seed, epoch), and the state carries
the optimiser, the scheduler and every RNG the loop draws from.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from routed_study.trainables.artifacts import RoutingSnapshot
from routed_study.trainables.results import train_examples_metric
from routed_study.trainables.backbones import Backbone, EncodedSplit, load_backbone
from routed_study.trainables.routed_prompt import RoutedPrompt, RoutedPromptConfig
from routed_study.trainables.setup import TrialSetup

#: report(metrics, state, routing): called once per epoch.
Reporter = Callable[[dict[str, float], dict[str, Any], RoutingSnapshot], None]

#: Metrics that measure the machine, not the model: they differ between identical runs.
TIMING_METRICS = ("step_seconds", "gpu_peak_mib", "gpu_reserved_peak_mib")


@dataclass
class TrainResult:
    metrics: dict[str, float]       # the last epoch's report (with the test metrics)
    routing: RoutingSnapshot
    state: dict[str, Any]           # the final checkpoint state


@dataclass
class TaskData:
    """The encoded splits of every task of a trial, in task order."""

    train: list[EncodedSplit]
    validation: list[EncodedSplit]
    test: list[EncodedSplit]

    @classmethod
    def load(cls, backbone: Backbone, setup: TrialSetup) -> "TaskData":
        from routed_study.trainables.tasks import load_split

        def encode(split: str, limit: Callable[[str], int]) -> list[EncodedSplit]:
            return [backbone.encode(i, load_split(task, split, setup.data_dir, limit=limit(task.name),
                                                  seed=setup.split_seed))
                    for i, task in enumerate(backbone.tasks)]

        return cls(encode("train", setup.train_size), encode("validation", lambda task: setup.eval_per_task),
                   encode("test", lambda task: setup.eval_per_task))


def epoch_batches(sizes: Sequence[int], batch_size: int, sampling: str,
                  rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """The (task index, example indices) batches of one epoch.

    ``size``: every example once, batches of all tasks shuffled together, so
    tasks are mixed in proportion to their sizes. ``uniform``: as many batches,
    each from a task drawn uniformly; a task's examples are reshuffled when used up.
    """
    def chunks(task: int) -> list[tuple[int, np.ndarray]]:
        order = rng.permutation(sizes[task])
        return [(task, order[i:i + batch_size]) for i in range(0, sizes[task], batch_size)]

    if sampling == "size":
        batches = [b for task in range(len(sizes)) for b in chunks(task)]
        return [batches[i] for i in rng.permutation(len(batches))]
    if sampling != "uniform":
        raise ValueError(f"unknown task_sampling {sampling!r}")
    total = sum(-(-n // batch_size) for n in sizes)
    streams: dict[int, list] = {}
    plan = []
    for task in rng.integers(len(sizes), size=total):
        if not streams.get(task):
            streams[task] = chunks(int(task))
        plan.append(streams[task].pop(0))
    return plan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """One trial's backbone, prompt module, optimiser and data; ``run`` trains it."""

    def __init__(self, config: RoutedPromptConfig, setup: TrialSetup, device: str | torch.device = "cpu") -> None:
        from transformers import get_linear_schedule_with_warmup

        from routed_study.trainables.limits import check_prompt_fits
        from routed_study.trainables.tasks import get_task

        # The trial's own data: its train_per_task and task_set knobs applied to the study's setup.
        setup = setup.for_trial(config.to_dict())
        self.config, self.setup = config, setup
        self.device = torch.device(device)
        config.check_candidates(len(setup.tasks), where="trial config")
        check_prompt_fits(config, setup, where="trial config")
        # Before seeding this trial: a cache miss trains here, and must not shift the trial's RNG.
        self.source_prompts, self.source_cache = None, []
        if config.sources == "tasks" and config.source_init == "pretrained":
            from routed_study.trainables.source_prompts import pretrained_sources

            self.source_prompts, self.source_cache = pretrained_sources(setup, config.num_prompt_tokens,
                                                                        config.seed, device)
        seed_everything(config.seed)
        tasks = [get_task(name, where="setup: key 'tasks'") for name in setup.tasks]
        self.backbone = load_backbone(setup.resolved_backbone(), tasks, family=setup.backbone_family,
                                      max_length=setup.max_length, head=config.head,
                                      verbalizer_scale=config.verbalizer_scale)
        self.backbone.to(device)
        self.data = TaskData.load(self.backbone, setup)
        self.sizes = [len(split) for split in self.data.train]
        self.steps_per_epoch = sum(-(-n // config.batch_size) for n in self.sizes)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.model = RoutedPrompt(config, len(tasks), self.backbone.hidden_size, self.total_steps,
                                  word_embeddings=self.backbone.word_embeddings(),
                                  task_names=setup.tasks).to(device)
        if self.source_prompts is not None:
            self.model.load_sources(self.source_prompts, freeze=config.freeze_sources)
        groups = [g for g in self.model.parameter_groups() if g["params"]]
        head = self.backbone.trainable_module()
        if head is not None:
            groups.append({"params": list(head.parameters()), "lr": config.learning_rate, "name": "head"})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps)
        self.step = 0
        self.epoch = 0
        self.step_seconds = float("nan")

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything that trains or draws random numbers; never the frozen backbone.

        Copied, because torch's state dicts alias the live tensors that the next epoch updates.
        """
        head = self.backbone.trainable_module()
        return copy.deepcopy({
            "prompt": self.model.state_dict(), "head": head.state_dict() if head is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "rng": rng_state()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["prompt"])
        if state["head"] is not None:
            self.backbone.trainable_module().load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        set_rng_state(state["rng"])

    # ------------------------------------------------------------ loop
    def prompt(self, task: int, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.backbone.embed(batch["input_ids"])
        return embeds, self.model(task, embeds, batch["attention_mask"], self.step)

    def train_epoch(self) -> float:
        self.model.train()
        self.backbone.train_mode(dropout=self.config.backbone_dropout)
        rng = np.random.default_rng([self.config.seed, self.epoch])
        losses, step_times = [], []
        for task, indices in epoch_batches(self.sizes, self.config.batch_size, self.config.task_sampling, rng):
            started = time.perf_counter()
            batch = self.backbone.collate(self.data.train[task], indices)
            embeds, prompt = self.prompt(task, batch)
            loss = self.backbone.loss(task, embeds, prompt, batch, self.config.prompt_position)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            losses.append(loss.item())  # .item() waits for the GPU, so the step time is real
            step_times.append(time.perf_counter() - started)
        self.epoch += 1
        # The median keeps one-off costs (CUDA's start in the first steps) out of the figure.
        self.step_seconds = float(np.median(step_times))
        return float(np.mean(losses))

    @torch.no_grad()
    def evaluate(self, splits: list[EncodedSplit], prefix: str) -> dict[str, float]:
        """``<prefix>/<task>`` (main metric, 0-100), ``<prefix>/<task>/<metric>`` and the mean main."""
        from routed_study.trainables.tasks import score_predictions

        self.model.eval()
        self.backbone.eval_mode()
        metrics: dict[str, float] = {}
        mains = []
        for task, split in enumerate(splits):
            predictions, references = [], []
            for start in range(0, len(split), self.config.batch_size):
                batch = self.backbone.collate(split, range(start, min(start + self.config.batch_size, len(split))))
                embeds, prompt = self.prompt(task, batch)
                predictions += self.backbone.predict(task, embeds, prompt, batch, self.config.prompt_position)
                references += batch["references"]
            scores = score_predictions(self.backbone.tasks[task], predictions, references)
            name = self.backbone.tasks[task].name
            metrics[f"{prefix}/{name}"] = float(scores["main"])
            metrics.update({f"{prefix}/{name}/{k}": float(v) for k, v in scores.items() if k != "main"})
            mains.append(float(scores["main"]))
        metrics[f"{prefix}_score"] = float(np.mean(mains))
        return metrics

    def fit(self) -> None:
        """Train the remaining epochs without evaluating: source pre-training keeps the prompt, not
        its scores, and on a short run evaluating can take as long as training."""
        while self.epoch < self.config.epochs:
            self.train_epoch()

    def run(self, report: Reporter | None = None) -> TrainResult:
        metrics: dict[str, float] = {}
        while self.epoch < self.config.epochs:
            train_loss = self.train_epoch()
            val = self.evaluate(self.data.validation, "val")
            metrics = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                       "tau": self.model.tau(self.step), "score": val.pop("val_score"),
                       "step_seconds": self.step_seconds, **val,
                       **{train_examples_metric(task): n for task, n in zip(self.setup.tasks, self.sizes)}}
            if self.device.type == "cuda":
                # Tensors at their peak, and what the caching allocator held; the CUDA context
                # (~0.5 GiB per process) comes on top of both when sizing GPU fractions.
                metrics["gpu_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                metrics["gpu_reserved_peak_mib"] = torch.cuda.max_memory_reserved(self.device) / 2**20
            if self.epoch == self.config.epochs:
                metrics.update(self.evaluate(self.data.test, "test"))
            if report is not None:
                report(metrics, self.state_dict(), RoutingSnapshot.of(self.model, self.setup.tasks))
        return TrainResult(metrics, RoutingSnapshot.of(self.model, self.setup.tasks), self.state_dict())


def train(config: RoutedPromptConfig, setup: TrialSetup, report: Reporter | None = None,
          resume_state: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> TrainResult:
    """Train one trial; ``resume_state`` (a state handed to ``report``) continues a stopped run."""
    try:
        trainer = Trainer(config, setup, device=device)
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
        return trainer.run(report)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        # Ray and MLflow keep the traceback's last line as the trial's reason: say it plainly
        # (a bare MemoryError has no message at all).
        raise MemoryError(f"out of memory ({type(exc).__name__}: {str(exc) or 'no details'}); lower batch_size "
                          f"or max_length, or give each trial more memory") from exc
