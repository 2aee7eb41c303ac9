"""The backbone's position limit: the composed prompt plus ``max_length`` input tokens must fit it.

Checked before any trial (``validate``: over every value a space can take; ``TrialSetup.check``:
the input alone; the trainer: the trial's own prompt), so that an allowed value never crashes
mid-trial with an IndexError (a device-side assert on a GPU). The limit is the model config's
``max_position_embeddings`` (512 for MiniLM and BERT; absolute positions, both families, e.g.
BART); T5 has relative positions and no such key: no hard limit, only memory. Read from the
``config.json`` of a local model directory without importing torch or transformers; a hub id
not on disk is not checked here (its config is unknown offline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from routed_study.trainables.errors import InputError


def position_limit(setup: Any) -> int | None:
    """Tokens the backbone of ``setup`` (a TrialSetup) can attend over; None: no hard limit / unknown."""
    try:
        path = Path(setup.resolved_backbone()) / "config.json"
    except InputError:
        return None
    if not path.is_file():
        return None
    limit = json.loads(path.read_text()).get("max_position_embeddings")
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_fits(prompt_tokens: int, prompt_text: str, setup: Any, where: str) -> None:
    """Raise a one-line InputError when ``prompt_tokens`` + ``max_length`` exceed the backbone's limit.

    ``prompt_text`` says which knobs make the prompt that long, e.g.
    ``num_selected 4 x num_prompt_tokens 20 under compose_method cat``.
    """
    limit = position_limit(setup)
    if limit is None or prompt_tokens + setup.max_length <= limit:
        return
    what = f"a prompt of {prompt_tokens} tokens ({prompt_text}) plus " if prompt_tokens else ""
    raise InputError(f"{where}: {what}max_length {setup.max_length} = {prompt_tokens + setup.max_length} "
                     f"tokens exceed backbone '{setup.backbone}''s {limit} positions; lower "
                     + ("num_prompt_tokens, num_selected or max_length" if prompt_tokens else "max_length"))


def check_input_fits(setup: Any, where: str = "setup") -> None:
    """The input alone fits (TrialSetup.check)."""
    check_fits(0, "", setup, where)


def check_prompt_fits(config: Any, setup: Any, where: str = "trial config") -> None:
    """The trial's composed prompt plus the input fits (a RoutedPromptConfig with the setup's tasks)."""
    tokens = config.prompt_tokens(len(setup.tasks))
    k = tokens // config.num_prompt_tokens
    text = (f"num_selected {k} x num_prompt_tokens {config.num_prompt_tokens} under compose_method "
            f"{config.compose_method}" if k > 1 else f"num_prompt_tokens {config.num_prompt_tokens}")
    check_fits(tokens, text, setup, where)
