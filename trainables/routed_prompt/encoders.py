"""Prompt encoders: how a raw L x D parameter becomes a prompt (knob ``prompt_encoder``).

One encoder is shared by the whole prompt pool (sources, private and target
prompts), so its size depends on D only, not on the number of prompts or tasks.
Every encoder maps ``N x L x D`` to ``N x L x D``. Add one by subclassing
:class:`PromptEncoder` and decorating it with ``@register_encoder("name")`` (here or in a
plugin module): the name joins the registry ``methods.PROMPT_ENCODERS`` that the knob
``prompt_encoder`` reads its values from, and the tests run over every registered name.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from routed_study.trainables.routed_prompt.methods import PROMPT_ENCODERS


def register_encoder(name: str) -> Callable[[type["PromptEncoder"]], type["PromptEncoder"]]:
    def decorate(cls: type[PromptEncoder]) -> type[PromptEncoder]:
        cls.name = name
        PROMPT_ENCODERS.register(name, cls)
        return cls

    return decorate


def encoder_names() -> list[str]:
    return list(PROMPT_ENCODERS.names())


def build_encoder(name: str, hidden_size: int, residual: bool) -> "PromptEncoder":
    return PROMPT_ENCODERS.get(name, where="prompt_encoder")(hidden_size, residual)


class PromptEncoder(nn.Module):
    """Base: ``forward(raw: N x L x D) -> N x L x D``."""

    name: str = ""

    def __init__(self, hidden_size: int, residual: bool):
        super().__init__()
        self.hidden_size = hidden_size
        self.residual = residual


def _mlp(in_size: int, hidden_size: int, zero_last: bool) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(in_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size))
    if zero_last:
        # With a residual, a zero last layer makes the encoded prompt start equal to the raw
        # one, so init_from_words really starts from word embeddings.
        nn.init.zeros_(mlp[2].weight)
        nn.init.zeros_(mlp[2].bias)
    return mlp


@register_encoder("emb")
class IdentityEncoder(PromptEncoder):
    """The raw parameter is the prompt (plain prompt tuning); ``residual`` has no effect."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw


@register_encoder("mlp")
class MLPEncoder(PromptEncoder):
    """Linear-ReLU-Linear over each token, optionally added to the raw prompt."""

    def __init__(self, hidden_size: int, residual: bool):
        super().__init__(hidden_size, residual)
        self.mlp = _mlp(hidden_size, hidden_size, zero_last=residual)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        out = self.mlp(raw)
        return raw + out if self.residual else out


@register_encoder("lstm")
class LSTMEncoder(PromptEncoder):
    """Bi-LSTM along the L tokens of each prompt, then Linear-ReLU-Linear (P-tuning style).

    Each direction has D/2 units (P-tuning's choice), a quarter of the weights of D units:
    the encoder runs at every training step.
    """

    def __init__(self, hidden_size: int, residual: bool):
        super().__init__(hidden_size, residual)
        units = max(1, hidden_size // 2)
        self.lstm = nn.LSTM(hidden_size, units, batch_first=True, bidirectional=True)
        self.mlp = _mlp(2 * units, hidden_size, zero_last=residual)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.lstm(raw)[0])
        return raw + out if self.residual else out
