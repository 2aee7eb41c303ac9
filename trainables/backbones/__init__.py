"""Frozen backbones behind one interface, chosen by family.

``load_backbone`` reads the model's Hugging Face config and picks the family
(``config.is_encoder_decoder``) unless the setup names one. A new family is a
:class:`~trainables.backbones.base.Backbone` subclass registered in
:data:`BACKBONES`.
"""

from __future__ import annotations

from typing import Any, Sequence

from routed_study.trainables.backbones.base import Backbone, EncodedSplit, insert_prompt
from routed_study.trainables.backbones.encoder import EncoderBackbone, mean_pool
from routed_study.trainables.backbones.seq2seq import Seq2SeqBackbone
from routed_study.trainables.errors import InputError, format_choices

#: Backbone implementations by family name.
BACKBONES: dict[str, type[Backbone]] = {cls.family: cls for cls in (EncoderBackbone, Seq2SeqBackbone)}


def detect_family(path: str) -> str:
    """'seq2seq' for encoder-decoder models, 'encoder' otherwise (read from the HF config)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"backbone '{path}': cannot load its config offline "
                         f"({str(exc).splitlines()[0]})") from exc
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "encoder"


def load_backbone(path: str, tasks: Sequence[Any], family: str = "auto", max_length: int = 64,
                  head: str = "verbalizer", verbalizer_scale: float = 0.05) -> Backbone:
    """Load the frozen backbone at ``path`` (a directory or hub id) for ``tasks`` (TaskSpecs)."""
    if family == "auto":
        family = detect_family(path)
    if family not in BACKBONES:
        raise InputError(f"backbone family {family!r} is unknown; allowed values: "
                         f"{format_choices(['auto', *BACKBONES])}")
    if head != "verbalizer" and family != "encoder":
        raise InputError(f"knob 'head' is {head!r} but only encoder backbones have a head; "
                         f"the {family} backbone '{path}' generates its answers")
    options = {"head": head, "verbalizer_scale": verbalizer_scale} if family == "encoder" else {}
    return BACKBONES[family](path, tasks, max_length=max_length, **options)


__all__ = ["BACKBONES", "Backbone", "EncodedSplit", "EncoderBackbone", "Seq2SeqBackbone",
           "detect_family", "insert_prompt", "load_backbone", "mean_pool"]
