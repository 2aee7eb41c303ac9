"""Encoder-decoder models of the T5 family: every task is text-to-text.

Training is the ordinary LM cross-entropy on the ``target`` text; evaluation
generates greedily from the prompted encoder input and turns the text back into
a label id / value / string with the task's ``parse_generation``.
"""

from __future__ import annotations

from typing import Any, Sequence


from routed_study.trainables.backbones.base import Backbone, EncodedSplit, insert_prompt


class Seq2SeqBackbone(Backbone):
    family = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, path: str, tasks: Sequence[Any], max_length: int = 64) -> None:
        super().__init__(path, tasks, max_length)
        self.max_new_tokens = [self._generation_budget(task) for task in self.tasks]

    def _generation_budget(self, task: Any) -> int:
        """Longest possible answer in tokens: a class word, a number of the range; free text gets the input's."""
        from routed_study.trainables.tasks import format_target

        if task.kind == "classification":
            answers = list(task.target_texts)
        elif task.kind == "regression":
            answers = [format_target(task, value) for value in task.value_range]
        else:
            return self.max_length
        return max(len(ids) for ids in self.tokenize(answers))

    def encode(self, task_index: int, dataset: Any) -> EncodedSplit:
        from routed_study.trainables.tasks import parse_generation

        task = self.tasks[task_index]
        targets = list(dataset["target"])
        if task.kind == "generation":
            # Scored on text; parsing the gold target too treats both sides alike (stripped).
            references = [parse_generation(task, t) for t in targets]
        else:
            references = list(dataset["label"])
        return EncodedSplit(task_index, self.tokenize(dataset["text"]), self.tokenize(targets), references)

    def collate_labels(self, split: EncodedSplit, indices: Sequence[int]) -> dict[str, Any]:
        padded = self.tokenizer.pad({"input_ids": [split.labels[i] for i in indices]}, return_tensors="pt")
        labels = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)
        return {"labels": labels.to(self.device)}

    def loss(self, task_index, embeds, prompt, batch, position):
        inputs, mask = insert_prompt(prompt, embeds, batch["attention_mask"], position)
        return self.model(inputs_embeds=inputs, attention_mask=mask, labels=batch["labels"]).loss

    def predict(self, task_index, embeds, prompt, batch, position):
        from routed_study.trainables.tasks import parse_generation

        inputs, mask = insert_prompt(prompt, embeds, batch["attention_mask"], position)
        generated = self.model.generate(inputs_embeds=inputs, attention_mask=mask, do_sample=False,
                                        num_beams=1, max_new_tokens=self.max_new_tokens[task_index])
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [parse_generation(self.tasks[task_index], text) for text in texts]
