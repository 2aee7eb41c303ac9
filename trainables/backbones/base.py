"""The one interface both backbone families share.

A backbone wraps a frozen Hugging Face model that is driven through
``inputs_embeds``: the trainer embeds a batch, asks the routed prompt module for
a prompt, and hands both back here for the loss (training) or the predictions
(evaluation). Nothing of the Hugging Face model ever trains; the only trainable
part a backbone may own is the optional linear head of the encoder family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from routed_study.trainables.routed_prompt.config import KNOBS

@dataclass
class EncodedSplit:
    """One task's split, tokenised once; batches are padded on demand."""

    task_index: int
    input_ids: list[list[int]]
    labels: list[Any]                      # what the loss needs (label id / value / target token ids)
    references: list[Any]                  # what score_predictions compares predictions with

    def __len__(self) -> int:
        return len(self.input_ids)


def insert_prompt(prompt: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                  position: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the prompt (B x P x D) before the input or right after its real tokens.

    ``post`` places the prompt after each example's last real token and before its
    padding, so the prompt always sits at the same distance from the text.
    """
    ones = mask.new_ones(prompt.shape[:2])
    if position == "pre":
        return torch.cat([prompt, embeds], dim=1), torch.cat([ones, mask], dim=1)
    if position != "post":
        raise ValueError(f"prompt_position got {position!r}; allowed values: {KNOBS['prompt_position'].allowed()}")
    batch, seq = mask.shape
    plen = prompt.shape[1]
    lengths = mask.sum(dim=1, keepdim=True)                       # B x 1
    j = torch.arange(seq + plen, device=mask.device).expand(batch, -1)
    # Index into cat([embeds, prompt]): real tokens, then the prompt, then the padding.
    index = torch.where(j < lengths, j, torch.where(j < lengths + plen, seq + j - lengths, j - plen))
    joined = torch.cat([embeds, prompt], dim=1)
    out = joined.gather(1, index.unsqueeze(-1).expand(-1, -1, joined.shape[-1]))
    return out, torch.cat([mask, ones], dim=1).gather(1, index)


class Backbone(ABC):
    """A frozen pretrained model plus the task-specific output side.

    Subclasses set ``family`` and ``auto_class`` (the name of the ``transformers``
    auto class whose ``from_pretrained`` loads them) and implement the loss and
    prediction.
    """

    family: ClassVar[str]
    auto_class: ClassVar[str]

    def __init__(self, path: str, tasks: Sequence[Any], max_length: int = 64) -> None:
        import transformers

        self.tasks = tuple(tasks)
        for task in self.tasks:
            self.check_task(task)
        self.max_length = max_length
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = getattr(transformers, self.auto_class).from_pretrained(path)
        self.model.requires_grad_(False)
        self.model.eval()  # frozen; dropout only while training with backbone_dropout (train_mode)
        self.device = torch.device("cpu")

    # ------------------------------------------------------------ properties
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def word_embeddings(self) -> torch.Tensor:
        """The frozen V x D token-embedding table (for init_from_words)."""
        return self.model.get_input_embeddings().weight.detach()

    def trainable_module(self) -> torch.nn.Module | None:
        """Parameters of the output side that train (None: the output side is frozen)."""
        return None

    def train_mode(self, dropout: bool) -> None:
        """Training: the frozen model's own dropout on or off (knob ``backbone_dropout``)."""
        self.model.train(dropout)
        if self.trainable_module() is not None:
            self.trainable_module().train()

    def eval_mode(self) -> None:
        """Evaluation: dropout always off."""
        self.model.eval()
        if self.trainable_module() is not None:
            self.trainable_module().eval()

    def to(self, device: torch.device | str) -> "Backbone":
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.trainable_module() is not None:
            self.trainable_module().to(self.device)
        return self

    # ------------------------------------------------------------ data
    def check_task(self, task: Any) -> None:
        """Raise InputError when this family cannot train ``task``."""

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    @abstractmethod
    def encode(self, task_index: int, dataset: Any) -> EncodedSplit:
        """Tokenise a split (columns text, label, target) once."""

    def collate(self, split: EncodedSplit, indices: Sequence[int]) -> dict[str, Any]:
        """Pad the selected examples into tensors on this backbone's device."""
        padded = self.tokenizer.pad({"input_ids": [split.input_ids[i] for i in indices]},
                                    return_tensors="pt")
        return {"input_ids": padded["input_ids"].to(self.device),
                "attention_mask": padded["attention_mask"].to(self.device),
                "references": [split.references[i] for i in indices],
                **self.collate_labels(split, indices)}

    @abstractmethod
    def collate_labels(self, split: EncodedSplit, indices: Sequence[int]) -> dict[str, Any]:
        """The loss targets of the selected examples as tensors."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the frozen backbone (B x S x D)."""
        return self.model.get_input_embeddings()(input_ids)

    # ------------------------------------------------------------ model
    @abstractmethod
    def loss(self, task_index: int, embeds: torch.Tensor, prompt: torch.Tensor,
             batch: dict[str, Any], position: str) -> torch.Tensor:
        """Scalar training loss of one batch of task ``task_index``."""

    @abstractmethod
    def predict(self, task_index: int, embeds: torch.Tensor, prompt: torch.Tensor,
                batch: dict[str, Any], position: str) -> list[Any]:
        """Predictions in the form the task's ``score_predictions`` takes."""
