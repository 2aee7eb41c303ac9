"""Simulated study-like trial tables, for calibrating the findings verdicts.

A study here behaves like one of ours: a TPE-like searcher drifts toward configurations
that scored well (after ``startup`` random ones it mostly perturbs one of the best so far,
so knob values correlate with each other and with time), each configuration runs
``seeds`` repeats with a configuration-level random effect (SD ``config_sd``) and seed
noise (SD ``seed_sd``), an optional ASHA scheduler stops weak trials at rungs 1, 2, 4, ...
(asynchronous: a trial goes on when its rung score is in the top 1/eta of that rung so far),
and some trials diverge (an errored trial without a final score).

Every trial follows a learning curve from ``BASE`` to its final score whose speed grows
with the learning rate, so partially trained scores depend on learning speed while the
final score depends only on the planted effects (:data:`PLANTED`). Under the null
(``planted=False``) no knob changes the final score.

:func:`write_study` writes the trials as a CSV the analysis loader reads: ``config/<knob>``
columns, ``score`` (last reported), ``score@<epoch>`` per-epoch history, ``epoch``, ``seed``
and ``status`` only for errors (early stops are inferred by the loader from epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BASE = 30.0      # score of an untrained model
MEAN = 70.0      # final score of an average configuration

SPACE = {
    "learning_rate": ("log", 1e-5, 1e-1),
    "epochs": ("int", 2, 10),
    "num_prompt_tokens": ("choice", [5, 10, 20, 50]),
    "prompt_encoder": ("choice", ["emb", "mlp", "lstm"]),
    "init_from_words": ("choice", [True, False]),
    "compose_method": ("choice", ["wavg", "cat"]),
    "apply_softmax_to": ("choice", ["before", "after", "norm", "normafter", "nothing"]),
    "source_order": ("choice", ["desc", "asc", "rand"]),
    "anneal_dir": ("choice", [-1, 0, 1]),
    "num_selected": ("choice", [-1, 1, 2]),
    "route_method": ("choice", ["rb", "sigmoid", "softmax", "const"]),
    "temperature": ("log", 0.1, 10.0),
    "add_target": ("choice", [True, False]),
    "attend_target": ("choice", [True, False]),
    "target_share": ("choice", [0.25, 0.5, 0.75, 1.0]),
}

#: Planted effects on the final score (points) and the claims of analysis/findings.yaml they make
#: true; F8a and F12b are planted "no difference" (their knobs have no effect in their rows).
PLANTED = {
    "F2": "-4 per decade of learning rate",
    "F4": "-8 x (1 - (epochs - 2) / 8) where learning_rate < 1e-4",
    "F5": "+1.5 per doubling of num_prompt_tokens",
    "F6": "+4 for prompt_encoder=mlp",
    "F7": "+4 for init_from_words",
    "F8b": "+6 for apply_softmax_to=after with compose_method=cat",
    "F9": "+6 for anneal_dir=-1 with cat and no add_target",
    "F10": "+4 for num_selected=-1",
    "F11": "-6 per decade of temperature under route_method=rb",
    "F12a": "+5 for add_target",
    "F13": "+5 for target_share < 1 (with add_target)",
}
EQUIVALENT = ("F8a", "F12b")
#: The final score a trial would have reached had it run to the end (a metric column the
#: analysis ignores; tests compare projections with it).
TRUE_FINAL = "val/final_if_completed"


def planted_effect(c: dict) -> float:
    """The planted part of a configuration's final score (see PLANTED). A knob changes the score
    only where the knob table says it applies (a world the model could produce: with
    ``target_share=1`` no routing knob matters, ``apply_softmax_to`` only when fewer candidates are
    selected than exist)."""
    from routed_study.trainables.routed_prompt.config import inert_knobs

    applies = {k: k not in inert for inert in [inert_knobs(c)] for k in c}
    lr, temp = math.log10(c["learning_rate"]), math.log10(c["temperature"])
    cat, add = c["compose_method"] == "cat", bool(c["add_target"])
    return (-4.0 * (lr + 3)
            - 8.0 * (1 - (c["epochs"] - 2) / 8) * (lr < -4)
            + 1.5 * math.log2(c["num_prompt_tokens"] / 5)
            + 4.0 * (c["prompt_encoder"] == "mlp")
            + 4.0 * bool(c["init_from_words"])
            + 6.0 * (c["apply_softmax_to"] == "after" and cat and applies["apply_softmax_to"])
            + 6.0 * (c["anneal_dir"] == -1 and cat and not add and applies["anneal_dir"])
            + 4.0 * (c["num_selected"] == -1 and applies["num_selected"])
            - 6.0 * temp * (c["route_method"] == "rb" and applies["temperature"])
            + 5.0 * add
            + 5.0 * (add and c["target_share"] < 1))


@dataclass
class Scenario:
    name: str
    configs: int = 120
    seeds: int = 3
    asha: bool = False
    diverge: float = 0.03       # chance a trial diverges
    planted: bool = False
    config_sd: float = 2.0
    seed_sd: float = 3.0
    startup: int = 20
    eta: int = 2


#: Study sizes at about equal training compute: ASHA (eta 2) trains about 40 % of the epochs of
#: full trials, so its studies run 2.5x the configurations.
SCENARIOS = {
    "plain": dict(configs=300, seeds=1),
    "repeats": dict(configs=200, seeds=3),
    "asha": dict(configs=750, seeds=1, asha=True),
    "asha_repeats": dict(configs=500, seeds=3, asha=True),
    "diverging": dict(configs=500, seeds=3, asha=True, diverge=0.10),
}


def _random_config(rng) -> dict:
    out = {}
    for knob, spec in SPACE.items():
        if spec[0] == "log":
            out[knob] = float(10 ** rng.uniform(np.log10(spec[1]), np.log10(spec[2])))
        elif spec[0] == "int":
            out[knob] = int(rng.integers(spec[1], spec[2] + 1))
        else:
            out[knob] = spec[1][rng.integers(len(spec[1]))]
    return out


def _perturb(config: dict, rng, rate: float = 0.3) -> dict:
    fresh = _random_config(rng)
    out = dict(config)
    for knob, spec in SPACE.items():
        if rng.random() < rate:
            if spec[0] == "log":  # a step near the good value, as TPE's kernels do
                lo, hi = np.log10(spec[1]), np.log10(spec[2])
                out[knob] = float(10 ** np.clip(np.log10(config[knob]) + rng.normal(0, 0.4), lo, hi))
            else:
                out[knob] = fresh[knob]
    return out


def _curve(final: float, speed: float, epochs: np.ndarray, last: int) -> np.ndarray:
    """Score after each epoch: from BASE to ``final`` at epoch ``last``; faster with ``speed``."""
    gain = (1 - np.exp(-speed * epochs)) / (1 - np.exp(-speed * last))
    return BASE + (final - BASE) * gain


def simulate(scenario: Scenario, seed: int) -> pd.DataFrame:
    """One study: a row per trial (knobs, score, per-epoch history, status)."""
    rng = np.random.default_rng(seed)
    rungs: dict[int, list[float]] = {}
    configs: list[dict] = []
    seen: list[float] = []   # what the searcher sees per configuration: mean of last reported scores
    rows = []
    for c in range(scenario.configs):
        if c < scenario.startup or rng.random() < 0.25:
            config = _random_config(rng)
        else:
            top = np.argsort(seen)[::-1][: max(3, len(seen) // 4)]
            config = _perturb(configs[int(rng.choice(top))], rng)
        if not config["add_target"]:
            config["target_share"] = np.nan
        configs.append(config)
        potential = MEAN + (planted_effect(config) if scenario.planted else 0.0) + rng.normal(0, scenario.config_sd)
        speed = 0.08 * 10 ** (0.5 * (np.log10(config["learning_rate"]) + 5))   # 0.08 (1e-5) .. 8 (1e-1)
        last_scores = []
        for s in range(scenario.seeds):
            final = potential + rng.normal(0, scenario.seed_sd)
            epochs = np.arange(1, config["epochs"] + 1)
            history = _curve(final, speed, epochs, config["epochs"]) + rng.normal(0, 1.0, len(epochs))
            history[-1] = final
            stop = config["epochs"]
            if scenario.asha:
                rung = 1
                while rung < config["epochs"]:
                    score = history[rung - 1]
                    board = rungs.setdefault(rung, [])
                    board.append(score)
                    if score < np.quantile(board, 1 - 1 / scenario.eta):
                        stop = rung
                        break
                    rung *= scenario.eta
            status = "ok"
            if rng.random() < scenario.diverge:
                stop, status = int(rng.integers(1, stop + 1)), "error"
            row = {f"config/{k}": v for k, v in config.items()}
            reported = history[:stop] if status == "ok" else history[: stop - 1]
            row.update({f"score@{e}": v for e, v in zip(epochs, reported)})
            row.update({TRUE_FINAL: final, "trial_id": f"c{c}_s{s}", "seed": s})
            row.update( epoch=len(reported) if len(reported) else np.nan,
                       score=reported[-1] if status == "ok" else np.nan, status=status if status == "error" else "")
            rows.append(row)
            last_scores.append(reported[-1] if len(reported) else BASE)
        seen.append(float(np.mean(last_scores)))
    frame = pd.DataFrame(rows)
    frame["status"] = frame["status"].replace("", np.nan)
    return frame


def scenario(name: str, planted: bool = False, **overrides) -> Scenario:
    return Scenario(name=name, planted=planted, **{**SCENARIOS[name], **overrides})


def write_study(path: str | Path, scenario_: Scenario, seed: int) -> Path:
    path = Path(path)
    simulate(scenario_, seed).to_csv(path, index=False)
    return path


# --- grading -------------------------------------------------------------------------------

def is_false(row: pd.Series, scen: Scenario) -> bool:
    """A verdict the simulated truth contradicts.

    Null: a directional claim must not be supported nor contradicted by a difference (being
    contradicted as "no difference" is right); an equivalence claim must not be contradicted;
    a ranking claim of pure noise must stay inconclusive. Planted: no planted claim may be
    contradicted. Everywhere: F18 (seed noise) is true (seed_sd is a third of the spread or more)."""
    verdict = row["verdict"]
    if row["kind"] == "seed_noise":  # every trial has seed noise (a configuration sampled twice shows it)
        return verdict == "contradicted"
    if row["kind"] in ("untestable", "router_asymmetry"):
        return verdict != "inconclusive"
    if row["kind"] == "ranking":
        return not scen.planted and verdict != "inconclusive"
    if row["id"] in EQUIVALENT:
        return verdict == "contradicted"
    if scen.planted:
        return verdict == "contradicted"
    return verdict == "supported" or (verdict == "contradicted" and row["decided_by"] == "difference")


def calibrate(names, seeds, planted: bool, workdir, **overrides) -> pd.DataFrame:
    """Verdicts of simulated studies through the CLI's code path (analysis.findings.judge on a CSV):
    one row per (scenario, seed, claim) with ``false`` and, for planted claims, ``found``."""
    from routed_study.analysis.findings import judge

    out = []
    for name in names:
        scen = scenario(name, planted, **overrides)
        for seed in seeds:
            csv = write_study(Path(workdir) / f"{name}_{int(planted)}_{seed}.csv", scen, seed)
            verdicts = judge(csv)
            verdicts["scenario"], verdicts["seed"] = name, seed
            verdicts["false"] = verdicts.apply(is_false, axis=1, scen=scen)
            verdicts["found"] = np.where(verdicts["id"].isin(list(PLANTED)) & scen.planted,
                                         verdicts["verdict"] == "supported", np.nan)
            out.append(verdicts)
    return pd.concat(out, ignore_index=True)
