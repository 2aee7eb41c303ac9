"""Synthetic trial tables with planted structure, for tests and the scaling benchmark.

The score depends on three things only: ``apply_softmax_to=after`` (+``EFFECT_AFTER``),
``learning_rate`` below ``LR_THRESHOLD`` (+``EFFECT_LR``) and the interaction
``compose_method=cat`` with ``source_order=asc`` (+``EFFECT_INTERACTION``). The
other knobs, including ``noise_knob`` with ``noise_levels`` values, are noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LR_THRESHOLD = 1e-3
EFFECT_AFTER, EFFECT_LR, EFFECT_INTERACTION = 15.0, 10.0, 8.0
PLANTED = ("apply_softmax_to", "learning_rate", "compose_method", "source_order")

# Noise knobs beyond the planted ones, in the order they are added.
_FILLERS = {
    "router_learning_rate": lambda r, n: 10 ** r.uniform(-4, -1, n),
    "num_prompt_tokens": lambda r, n: r.choice([5, 10, 20, 50], n),
    "temperature": lambda r, n: 10 ** r.uniform(-1, 1, n),
    "anneal_dir": lambda r, n: r.choice([-1, 0, 1], n),
    "route_method": lambda r, n: r.choice(["rb", "sigmoid", "softmax", "const"], n),
    "eval_route_method": lambda r, n: r.choice(["direct", "sigmoid", "sign"], n),
    "prompt_encoder": lambda r, n: r.choice(["emb", "mlp", "lstm"], n),
    "init_from_words": lambda r, n: r.choice([True, False], n),
    "private_prompts": lambda r, n: r.choice([True, False], n),
    "attend_target": lambda r, n: r.choice([True, False], n),
    "attend_input": lambda r, n: r.choice([True, False], n),
    "prompt_position": lambda r, n: r.choice(["pre", "post"], n),
    "num_selected": lambda r, n: r.choice([-1, 1, 2], n),
    "epochs": lambda r, n: r.integers(1, 20, n),
    "batch_size": lambda r, n: r.choice([8, 16, 32], n),
    "weight_decay": lambda r, n: r.uniform(0, 0.1, n),
    "warmup_ratio": lambda r, n: r.uniform(0, 0.3, n),
    "num_source_prompts": lambda r, n: r.integers(2, 9, n),
    "task_sampling": lambda r, n: r.choice(["size", "uniform"], n),
}


def planted_table(n: int, seed: int = 0, noise: float = 2.0, noise_levels: int = 40,
                  n_knobs: int = 10) -> pd.DataFrame:
    """``n`` trials, ``n_knobs`` knob columns (at least 5: the planted four and noise_knob), ``score``."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "learning_rate": 10 ** rng.uniform(-5, -1, n),
        "apply_softmax_to": rng.choice(["before", "after", "norm", "normafter", "nothing"], n),
        "compose_method": rng.choice(["wavg", "cat"], n),
        "source_order": rng.choice(["desc", "asc", "rand"], n),
        "noise_knob": rng.choice([f"level_{i}" for i in range(noise_levels)], n),
    })
    for name in list(_FILLERS)[: max(0, n_knobs - frame.shape[1])]:
        frame[name] = _FILLERS[name](rng, n)
    frame["score"] = (50 + EFFECT_AFTER * (frame["apply_softmax_to"] == "after")
                      + EFFECT_LR * (frame["learning_rate"] < LR_THRESHOLD)
                      + EFFECT_INTERACTION * ((frame["compose_method"] == "cat") & (frame["source_order"] == "asc"))
                      + rng.normal(0, noise, n))
    return frame
