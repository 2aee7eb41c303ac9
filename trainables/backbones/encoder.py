"""BERT-like encoders (e.g. all-MiniLM-L6-v2) with a frozen verbalizer.

Each label has a text ("a positive review"); the frozen backbone embeds it once
(mean pooling, as sentence-transformers' MiniLM does). A class score is the
cosine between the pooled prompt+input embedding and the label embedding,
divided by ``verbalizer_scale``. Regression reads the value off the softmax
between a low and a high anchor text, mapped onto the task's value range. With
``head="linear"`` a trainable per-task linear layer replaces the cosine scores;
the readout stays the same.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from routed_study.trainables.backbones.base import Backbone, EncodedSplit, insert_prompt
from routed_study.trainables.errors import InputError
from routed_study.trainables.routed_prompt.config import KNOBS

def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class EncoderBackbone(Backbone):
    family = "encoder"
    auto_class = "AutoModel"

    def __init__(self, path: str, tasks: Sequence[Any], max_length: int = 64,
                 head: str = "verbalizer", verbalizer_scale: float = 0.05) -> None:
        head = KNOBS["head"].coerce(head, "encoder backbone")
        super().__init__(path, tasks, max_length)
        self.head_kind = head
        self.verbalizer_scale = verbalizer_scale
        self.label_embeddings = [self._embed_texts(tuple(task.label_texts)) for task in self.tasks]
        self.head = (torch.nn.ModuleList(torch.nn.Linear(self.hidden_size, len(tuple(task.label_texts)))
                                         for task in self.tasks) if head == "linear" else None)

    def check_task(self, task: Any) -> None:
        if task.kind == "generation":
            raise InputError(f"task '{task.name}' is a generation task; it needs a seq2seq backbone "
                             f"(e.g. t5-base), not an encoder")

    @torch.no_grad()
    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        return F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)

    def trainable_module(self) -> torch.nn.Module | None:
        return self.head

    def to(self, device: torch.device | str) -> "EncoderBackbone":
        super().to(device)
        self.label_embeddings = [emb.to(self.device) for emb in self.label_embeddings]
        return self

    # ------------------------------------------------------------ data
    def encode(self, task_index: int, dataset: Any) -> EncodedSplit:
        task = self.tasks[task_index]
        labels = list(dataset["label"])
        if task.kind == "regression":
            low, high = task.value_range
            # The loss works on the value normalised to [0, 1] (the softmax share of the high anchor).
            targets = [min(max((float(y) - low) / (high - low), 0.0), 1.0) for y in labels]
            references = [float(y) for y in labels]
        else:
            targets = references = [int(y) for y in labels]
        return EncodedSplit(task_index, self.tokenize(dataset["text"]), targets, references)

    def collate_labels(self, split: EncodedSplit, indices: Sequence[int]) -> dict[str, Any]:
        dtype = torch.float32 if self.tasks[split.task_index].kind == "regression" else torch.long
        return {"labels": torch.tensor([split.labels[i] for i in indices], dtype=dtype, device=self.device)}

    # ------------------------------------------------------------ model
    def logits(self, task_index: int, embeds: torch.Tensor, prompt: torch.Tensor,
               batch: dict[str, Any], position: str) -> torch.Tensor:
        inputs, mask = insert_prompt(prompt, embeds, batch["attention_mask"], position)
        pooled = mean_pool(self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state, mask)
        return self.pooled_logits(task_index, pooled)

    def pooled_logits(self, task_index: int, pooled: torch.Tensor) -> torch.Tensor:
        """Scores of each label (or of the low/high anchors) for pooled embeddings."""
        if self.head is not None:
            return self.head[task_index](pooled)
        return F.normalize(pooled, dim=-1) @ self.label_embeddings[task_index].T / self.verbalizer_scale

    def logits_loss(self, task_index: int, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.tasks[task_index].kind == "regression":
            return F.mse_loss(logits.softmax(dim=-1)[:, 1], labels)
        return F.cross_entropy(logits, labels)

    def loss(self, task_index, embeds, prompt, batch, position):
        return self.logits_loss(task_index, self.logits(task_index, embeds, prompt, batch, position),
                                batch["labels"])

    def predict(self, task_index, embeds, prompt, batch, position):
        logits = self.logits(task_index, embeds, prompt, batch, position)
        task = self.tasks[task_index]
        if task.kind == "regression":
            low, high = task.value_range
            return (low + (high - low) * logits.softmax(dim=-1)[:, 1]).tolist()
        return logits.argmax(dim=-1).tolist()
