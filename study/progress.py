"""Concise terminal progress of a study: one line whenever a trial starts, ends or errors."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from ray.tune import Callback

from routed_study.trainables.results import best

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class StudyProgress(Callback):
    """Prints ``[name] 5/16 done, 2 running, 1 errored | best score 71.3 (trial_id) | 42s``.

    Ray's own tables are switched off (``RunConfig(verbose=0)``); these lines are
    what a user watches. Counts come from Tune's trial list, so a resumed study
    starts from the right numbers.
    """

    def __init__(self, name: str, total: int, metric: str = "score", mode: str = "max",
                 stream: TextIO | None = None):
        self.name = name
        self.total = total
        self.metric = metric
        self.mode = mode
        self.stream = stream
        self._start = time.monotonic()
        # Tune calls the on_trial_* hooks before it changes the trial's status.
        self._finished: set[str] = set()
        self._errored: set[str] = set()
        self._running: set[str] = set()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["stream"] = None  # a stream does not pickle with the experiment
        return state

    def setup(self, **info):
        self._start = time.monotonic()  # also when a resumed study unpickles this callback

    def best(self, trials: list["Trial"]) -> tuple[float, str] | None:
        """Best last-reported metric over all trials (restored ones included) and its trial id."""
        found = best(trials, lambda t: t.last_result.get(self.metric), self.mode)
        return None if found is None else (found[0], found[1].trial_id)

    def _line(self, trials: list["Trial"], event: str) -> None:
        finished = {t.trial_id for t in trials if t.status == "TERMINATED"} | self._finished
        errored = ({t.trial_id for t in trials if t.status == "ERROR"} | self._errored) - finished
        running = ({t.trial_id for t in trials if t.status == "RUNNING"} | self._running) - finished - errored
        best = self.best(trials)
        best = "-" if best is None else f"{best[0]:.4g} ({best[1]})"
        elapsed = time.monotonic() - self._start
        print(f"[{self.name}] {len(finished)}/{self.total} done, {len(running)} running, {len(errored)} errored"
              f" | best {self.metric} {best} | {elapsed:.0f}s | {event}",
              file=self.stream or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial: "Trial", **info):
        self._errored.discard(trial.trial_id)  # a retried or resumed trial runs again
        self._running.add(trial.trial_id)
        self._line(trials, f"started {trial.trial_id}")

    def on_trial_complete(self, iteration, trials, trial: "Trial", **info):
        self._finished.add(trial.trial_id)
        self._running.discard(trial.trial_id)
        self._line(trials, f"finished {trial.trial_id}")

    def on_trial_error(self, iteration, trials, trial: "Trial", **info):
        self._errored.add(trial.trial_id)
        self._running.discard(trial.trial_id)
        self._line(trials, f"errored {trial.trial_id}")
