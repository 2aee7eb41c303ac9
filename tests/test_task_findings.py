"""The finding kinds of analysis/task_findings.py, calibrated on simulated studies: with the planted
effect a claim is supported in most studies (power), without it (a null that keeps the knobs' main
effects) it is rarely supported (false support), over many simulated studies rather than one.

Each study: random configurations, 2 seeds each, a configuration-level random effect (SD 2) and seed
noise (SD 2), nuisance knobs with main effects, through the same path as a report (Evidence of a
TrialTable, evaluate_findings with its false-discovery correction)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from routed_study.analysis import task_findings  # noqa: F401  (registers its kinds)
from routed_study.analysis.findings import KINDS, Evidence, evaluate_findings, load_findings
from routed_study.analysis.loading import TrialTable
from routed_study.trainables.errors import InputError
from routed_study.trainables.results import train_examples_metric

STUDIES = 40           # simulated studies per scenario
MIN_POWER = 0.8        # planted: supported in at least this share
MAX_FALSE = 0.125      # null: supported in at most this share (alpha 0.05: expect ~0.025; 5 of 40 allowed)
CONFIG_SD, SEED_SD, SEEDS = 2.0, 2.0, 2


def entry(kind: str, **keys):
    return KINDS[kind].Entry.model_validate({"id": "X", "statement": "s", "kind": kind, **keys})


def trials(configs: list[dict], score, rng, extra=None) -> pd.DataFrame:
    """Rows of ``SEEDS`` trials per configuration: its knobs, score = score(config) + random effects."""
    rows = []
    for i, config in enumerate(configs):
        level = score(config) + rng.normal(0, CONFIG_SD)
        for seed in range(SEEDS):
            row = {f"config/{k}": v for k, v in config.items()}
            row.update(seed=seed, status="ok", trial_id=f"{i}-{seed}", score=level + rng.normal(0, SEED_SD))
            if extra is not None:
                row.update(extra(config, level, rng))
            rows.append(row)
    return pd.DataFrame(rows)


def verdict(frame: pd.DataFrame, claim) -> str:
    knobs = [c[len("config/"):] for c in frame.columns if c.startswith("config/")]
    frame = frame.rename(columns=lambda c: c[len("config/"):] if c.startswith("config/") else c)
    table = TrialTable(frame=frame, knobs=knobs, target="score", source="simulated")
    return evaluate_findings([claim], Evidence.from_table(table)).iloc[0]["verdict"]


def rates(simulate, claim) -> dict[str, float]:
    found = pd.Series([verdict(simulate(np.random.default_rng(seed)), claim) for seed in range(STUDIES)])
    return found.value_counts(normalize=True).to_dict()


def nuisance(rng) -> dict:
    # warmup_ratio (no effect) makes every drawn configuration distinct, as a continuous knob does in a study.
    return {"num_prompt_tokens": int(rng.choice([4, 8, 16])), "prompt_encoder": str(rng.choice(["emb", "mlp"])),
            "warmup_ratio": float(rng.uniform(0, 0.2))}


def nuisance_effect(c: dict) -> float:
    return 0.5 * np.log2(c["num_prompt_tokens"]) + (1.0 if c["prompt_encoder"] == "mlp" else 0.0)


# ---------------------------------------------------------------- F3: rate x training size
def size_study(planted: bool, configs: int = 80):
    def simulate(rng):
        drawn = [{"learning_rate": float(10 ** rng.uniform(-3, -0.5)),
                  "train_per_task": int(rng.choice([50, 200, 800])), **nuisance(rng)} for _ in range(configs)]

        def score(c):
            decade = np.log10(c["learning_rate"]) + 1.75
            doublings = np.log2(c["train_per_task"] / 200)
            # Null: the rate and the size matter, each on its own; planted: few examples want a higher rate.
            slope = -1.5 * doublings if planted else -1.0
            return 60 + slope * decade + 2.0 * doublings + nuisance_effect(c)
        return trials(drawn, score, rng)
    return simulate


def test_size_interaction_finds_a_planted_rate_by_size_dependence_and_not_a_null():
    claim = entry("size_interaction")
    planted, null = rates(size_study(True), claim), rates(size_study(False), claim)
    print(f"size_interaction: planted {planted}, null {null}")
    assert planted.get("supported", 0) >= MIN_POWER
    assert null.get("supported", 0) <= MAX_FALSE and null.get("contradicted", 0) <= MAX_FALSE


# ---------------------------------------------------------------- F16: private prompts x label overlap
def label_study(planted: bool, configs: int = 80):
    def simulate(rng):
        drawn = [{"task_set": str(rng.choice(["shared_labels", "distinct_labels"])),
                  "private_prompts": bool(rng.integers(2)), **nuisance(rng)} for _ in range(configs)]

        def score(c):
            distinct = c["task_set"] == "distinct_labels"
            # Null: private prompts help by 2 everywhere and the task sets differ in level.
            gain = (4.0 if distinct else 0.0) if planted else 2.0
            return 60 - 5.0 * distinct + gain * c["private_prompts"] + nuisance_effect(c)
        return trials(drawn, score, rng)
    return simulate


def test_label_overlap_finds_private_prompts_helping_only_without_shared_labels():
    claim = entry("label_overlap")
    planted, null = rates(label_study(True), claim), rates(label_study(False), claim)
    print(f"label_overlap: planted {planted}, null {null}")
    assert planted.get("supported", 0) >= MIN_POWER
    assert null.get("supported", 0) <= MAX_FALSE and null.get("contradicted", 0) <= MAX_FALSE


# ---------------------------------------------------------------- F14: sharing presets in order
PRESET_FIXES = {"shared": ("private_prompts",), "partial": ("private_prompts",), "separate": ("private_prompts",),
                "custom": ()}


def sharing_study(levels: dict[str, float], configs: int = 80):
    def simulate(rng):
        drawn = []
        for _ in range(configs):
            preset = str(rng.choice(list(PRESET_FIXES)))
            config = {"sharing": preset, "learning_rate": float(10 ** rng.uniform(-3, -1)), **nuisance(rng)}
            # What a trial records: a knob a preset fixes is not in its config (n/a in the table).
            config["private_prompts"] = bool(rng.integers(2)) if preset == "custom" else np.nan
            drawn.append(config)

        def score(c):
            return 60 + levels[c["sharing"]] - 1.0 * np.log10(c["learning_rate"]) + nuisance_effect(c)
        return trials(drawn, score, rng)
    return simulate


def test_sharing_order_supports_a_planted_order_and_rejects_a_reversed_one():
    claim = entry("sharing_order")
    # Both adjacent pairs must be significant (intersection-union): 30 configurations per level.
    planted = rates(sharing_study({"shared": 5.0, "partial": 2.5, "separate": 0.0, "custom": 1.0}, 120), claim)
    null = rates(sharing_study({"shared": 0.0, "partial": 0.0, "separate": 0.0, "custom": 3.0}), claim)
    partly = rates(sharing_study({"shared": 5.0, "partial": 0.0, "separate": 0.0, "custom": 0.0}), claim)
    reversed_ = rates(sharing_study({"shared": 0.0, "partial": 2.5, "separate": 5.0, "custom": 0.0}), claim)
    print(f"sharing_order: planted {planted}, null {null}, only shared better {partly}, reversed {reversed_}")
    assert planted.get("supported", 0) >= MIN_POWER
    assert null.get("supported", 0) <= MAX_FALSE
    assert partly.get("supported", 0) <= MAX_FALSE        # every adjacent pair must hold, not one
    assert reversed_.get("contradicted", 0) >= MIN_POWER and reversed_.get("supported", 0) == 0


# ---------------------------------------------------------------- F15: per-task gain vs task size
TASKS = {"rt_sentiment": 55.0, "bbc_topic": 70.0, "vader_movies": 40.0}


def gain_study(planted: bool, configs: int = 60, fixed_sizes: bool = False):
    def simulate(rng):
        drawn = [{"sharing": str(rng.choice(["partial", "separate"])),
                  "train_per_task": 200 if fixed_sizes else int(rng.choice([50, 200, 800])), **nuisance(rng)}
                 for _ in range(configs)]

        def examples(c, task):
            return 30 if task == "vader_movies" and not fixed_sizes else c["train_per_task"]   # data.train_sizes

        def per_task(c, level, rng):
            out = {}
            for task, base in TASKS.items():
                n = examples(c, task)
                doublings = np.log2(n / 200)
                routed = c["sharing"] == "partial"
                # Null: routing helps every task by 3 points, whatever its size.
                gain = (3.0 - 2.0 * doublings) if planted else 3.0
                value = base + 4.0 * doublings + gain * routed + (level - 60) + rng.normal(0, SEED_SD)
                out[f"val/{task}"] = value
                out[train_examples_metric(task)] = n
            return out
        frame = trials(drawn, lambda c: 60 + nuisance_effect(c), rng, extra=per_task)
        frame["score"] = frame[[f"val/{t}" for t in TASKS]].mean(axis=1)
        return frame
    return simulate


def test_size_gain_finds_a_gain_that_shrinks_with_task_size_and_not_a_constant_gain():
    claim = entry("size_gain", a="partial")
    planted, null = rates(gain_study(True), claim), rates(gain_study(False), claim)
    print(f"size_gain: planted {planted}, null {null}")
    assert planted.get("supported", 0) >= MIN_POWER
    assert null.get("supported", 0) <= MAX_FALSE
    # A gain that does not depend on size is recognised as such (TOST: slope within the margin).
    assert null.get("contradicted", 0) >= MIN_POWER


def test_size_gain_reads_per_task_sizes_through_the_loader(tmp_path):
    from routed_study.analysis.findings import judge

    frame = gain_study(True)(np.random.default_rng(1))
    frame.to_csv(tmp_path / "trials.csv", index=False)   # knobs as config/<knob>, sizes as train/<task>/examples
    (tmp_path / "f.yaml").write_text("findings:\n  - id: F15\n    statement: s\n    kind: size_gain\n"
                                      "    a: partial\n")
    row = judge(str(tmp_path / "trials.csv"), tmp_path / "f.yaml").iloc[0]
    assert row["verdict"] == "supported" and row["n_configs"] == 60 and row["effect"] < 0
    assert row["n_seeds"] == 2


def test_a_within_condition_restricts_the_interaction():
    # The rate-by-size dependence planted only with 16 prompt tokens (F3b: "especially with many tokens").
    def simulate(rng):
        drawn = [{**nuisance(rng), "learning_rate": float(10 ** rng.uniform(-3, -0.5)),
                  "train_per_task": int(rng.choice([50, 800])), "num_prompt_tokens": int(rng.choice([4, 16]))}
                 for _ in range(160)]

        def score(c):
            slope = -1.5 * np.log2(c["train_per_task"] / 200) if c["num_prompt_tokens"] == 16 else -1.0
            return 60 + slope * (np.log10(c["learning_rate"]) + 1.75) + nuisance_effect(c)
        return trials(drawn, score, rng)

    sizes = {"by_a": {"max": 100}, "by_b": {"min": 400}}
    inside = rates(simulate, entry("size_interaction", within={"num_prompt_tokens": 16}, **sizes))
    outside = rates(simulate, entry("size_interaction", within={"num_prompt_tokens": 4}, **sizes))
    print(f"size_interaction within 16 tokens {inside}, within 4 tokens {outside}")
    assert inside.get("supported", 0) >= MIN_POWER and outside.get("supported", 0) <= MAX_FALSE


def test_early_stopped_trials_are_projected_not_dropped():
    # ASHA-like: the weakest third of the trials stops after epoch 1 of 2 (their score is the epoch-1 one).
    def with_stops(planted):
        return lambda rng: simulate(rng, planted)

    def simulate(rng, planted=True):
        frame = size_study(planted)(rng)
        final = frame["score"].to_numpy()
        early = 30 + 0.6 * (final - 30) + rng.normal(0, 1.0, len(final))
        stopped = early < np.quantile(early, 1 / 3)
        frame["score@1"], frame["score@2"] = early, np.where(stopped, np.nan, final)
        frame["score"] = np.where(stopped, early, final)
        frame["status"] = np.where(stopped, "early_stopped", "ok")
        return frame

    found, null = rates(with_stops(True), entry("size_interaction")), rates(with_stops(False), entry("size_interaction"))
    print(f"size_interaction with early stops: planted {found}, null {null}")
    assert found.get("supported", 0) >= MIN_POWER and null.get("supported", 0) <= MAX_FALSE
    row = evaluate_findings([entry("size_interaction")], Evidence.from_table(TrialTable(
        frame=simulate(np.random.default_rng(0)).rename(columns=lambda c: c.removeprefix("config/")),
        knobs=["learning_rate", "train_per_task", "num_prompt_tokens", "prompt_encoder", "warmup_ratio"],
        target="score", source="simulated"))).iloc[0]
    assert row["view"] == "projected final" and "early-stopped trials projected" in row["treatment"]


def test_size_gain_without_size_variation_says_what_to_vary():
    frame = gain_study(True, fixed_sizes=True)(np.random.default_rng(0))
    knobs = [c[len("config/"):] for c in frame.columns if c.startswith("config/")]
    frame = frame.rename(columns=lambda c: c[len("config/"):] if c.startswith("config/") else c)
    table = TrialTable(frame=frame, knobs=knobs, target="score", source="simulated")
    row = evaluate_findings([entry("size_gain", a="partial")], Evidence.from_table(table)).iloc[0]
    assert row["verdict"] == "inconclusive"
    assert row["reason"] == "every task trained on 200 examples: vary train_per_task or data.train_sizes"


def test_claims_on_knobs_a_study_never_varied_are_inconclusive_with_the_knob_named():
    frame = size_study(True, configs=20)(np.random.default_rng(0)).drop(columns=["config/train_per_task"])
    knobs = [c[len("config/"):] for c in frame.columns if c.startswith("config/")]
    frame = frame.rename(columns=lambda c: c[len("config/"):] if c.startswith("config/") else c)
    table = TrialTable(frame=frame, knobs=knobs, target="score", source="simulated")
    out = evaluate_findings([entry("size_interaction"), entry("label_overlap"), entry("sharing_order")],
                            Evidence.from_table(table))
    assert list(out["reason"]) == ["knob 'train_per_task' was never varied in this study",
                                   "knob 'private_prompts' was never varied in this study",
                                   "knob 'sharing' was never varied in this study"]


# ---------------------------------------------------------------- the findings file
def test_the_shipped_findings_file_has_no_untestable_entry_and_uses_these_kinds():
    entries = {e.id: e for e in load_findings()}
    assert not [e.id for e in entries.values() if e.kind == "untestable"]
    assert {entries[i].kind for i in ("F3", "F14", "F15", "F16a")} == {"size_interaction", "sharing_order",
                                                                       "size_gain", "label_overlap"}


@pytest.mark.parametrize("text, message", [
    ("kind: sharing_order\n    order: [shared, shared]", "key 'order': 'order' lists a level twice"),
    ("kind: sharing_order\n    order: [shared]", "key 'order'"),
    ("kind: size_interaction\n    by_c: 3", "unknown key 'by_c'"),
    ("kind: label_overlap\n    expect: equal", "key 'expect' got 'equal'; allowed values: 'greater' or 'less'"),
    ("kind: size_gain\n    a: {quantile: [0.5]}", "'quantile' must be [lo, hi]"),
])
def test_bad_entries_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "f.yaml"
    path.write_text(f"findings:\n  - id: X\n    statement: s\n    {text}\n")
    with pytest.raises(InputError) as info:
        load_findings(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: finding 'X': ")
