"""The routed prompt model: prompt pool, prompt encoders, router, composition.

The knob vocabulary (``config``) and the method registries (``methods``: route methods,
compositions, source orders, prompt encoders, each one decorated function or class) import
without torch, so that validating a study spec or analysing results stays fast; the torch
modules load on first use.
"""

import importlib

from routed_study.trainables.routed_prompt.config import KNOBS, Knob, RoutedPromptConfig

_LAZY = {
    "PromptEncoder": "encoders", "build_encoder": "encoders", "encoder_names": "encoders",
    "register_encoder": "encoders", "RoutedPrompt": "module", "pool_tokens": "module",
    "default_anneal_rate": "schedule", "temperature_at": "schedule",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["KNOBS", "Knob", "RoutedPromptConfig", *_LAZY]
