"""The routed prompt model: prompt pool, prompt encoders, router, composition."""

from trainables.routed_prompt.config import KNOBS, Knob, RoutedPromptConfig

__all__ = ["KNOBS", "Knob", "RoutedPromptConfig"]
