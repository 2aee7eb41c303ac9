"""Both backbone families on tiny random models: loading, freezing, prompt insertion, loss, prediction."""

from __future__ import annotations

import pytest
import torch

from tiny_backbones import one_thread  # noqa: F401  (autouse fixture)
from tiny_backbones import TINY_BACKBONES
from routed_study.trainables.backbones import BACKBONES, detect_family, insert_prompt, load_backbone
from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks import TaskSpec

CLS = TaskSpec("tiny_cls", "classification", ("a negative review", "a positive review"),
               ("negative", "positive"), None, ("accuracy",), "accuracy", "offline")
REG = TaskSpec("tiny_reg", "regression", ("very negative", "very positive"), (), (-4.0, 4.0),
               ("pearson",), "pearson", "offline")
GEN = TaskSpec("tiny_gen", "generation", (), (), None, ("rouge_l",), "rouge_l", "atomic")
TASKS = {"encoder": (CLS, REG), "seq2seq": (CLS, REG, GEN)}
ROWS = {  # text, label, target
    "tiny_cls": [("a dull film", 0, "negative"), ("a lovely film", 1, "positive"),
                 ("boring and long", 0, "negative"), ("great fun", 1, "positive")],
    "tiny_reg": [("awful", -3.0, "-3.0"), ("fine", 0.5, "0.5"), ("superb", 3.5, "3.5"), ("meh", -0.5, "-0.5")],
    "tiny_gen": [("PersonX eats", None, "hungry"), ("PersonX runs", None, "fit"),
                 ("PersonX sleeps", None, "tired"), ("PersonX reads", None, "curious")],
}


def dataset(task):
    from datasets import Dataset

    text, label, target = zip(*ROWS[task.name])
    columns = {"text": list(text), "target": list(target)}
    if task.kind != "generation":
        columns["label"] = list(label)
    return Dataset.from_dict(columns)


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def family_dir(request, tmp_path_factory):
    return request.param, TINY_BACKBONES[request.param](tmp_path_factory.mktemp(request.param))


def test_every_family_has_a_tiny_model():
    assert set(TINY_BACKBONES) == set(BACKBONES)


def test_family_is_detected_and_backbone_frozen(family_dir):
    family, path = family_dir
    assert detect_family(str(path)) == family
    backbone = load_backbone(str(path), TASKS[family])
    assert backbone.family == family and backbone.hidden_size == 32
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.word_embeddings().shape == (backbone.tokenizer.vocab_size, 32)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_insert_prompt_places_prompt_next_to_real_tokens(position):
    embeds = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1) + 1   # values 1..8
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    prompt = -torch.ones(2, 3, 1)
    out, out_mask = insert_prompt(prompt, embeds, mask, position)
    values = out.squeeze(-1).tolist()
    if position == "pre":
        assert values[1] == [-1, -1, -1, 5, 6, 7, 8] and out_mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0]
    else:
        assert values[0] == [1, 2, 3, 4, -1, -1, -1] and out_mask[0].tolist() == [1] * 7
        # Short example: prompt right after its two real tokens, padding moved to the end.
        assert values[1] == [5, 6, -1, -1, -1, 7, 8] and out_mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("position", ["pre", "post"])
def test_prompt_learns_and_backbone_stays_fixed(family_dir, position):
    family, path = family_dir
    backbone = load_backbone(str(path), TASKS[family])
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    for index, task in enumerate(backbone.tasks):
        split = backbone.encode(index, dataset(task))
        batch = backbone.collate(split, range(len(split)))
        embeds = backbone.embed(batch["input_ids"])
        torch.manual_seed(index)
        prompt = torch.nn.Parameter(torch.randn(1, 5, 32) * 0.5)
        optimiser = torch.optim.Adam([prompt], lr=0.1)
        losses = []
        for _ in range(15):
            loss = backbone.loss(index, embeds, prompt.expand(len(split), -1, -1), batch, position)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], (task.name, losses)
        with torch.no_grad():
            predictions = backbone.predict(index, embeds, prompt.expand(len(split), -1, -1), batch, position)
        assert len(predictions) == len(split)
        if task.kind == "regression":
            assert all(-4.0 <= p <= 4.0 for p in predictions)
        elif task.kind == "classification":
            assert set(predictions) <= {-1, 0, 1}
        else:
            assert all(isinstance(p, str) for p in predictions)
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_linear_head_trains_only_on_encoders(family_dir):
    family, path = family_dir
    if family == "encoder":
        backbone = load_backbone(str(path), TASKS[family], head="linear")
        head = backbone.trainable_module()
        assert [m.out_features for m in head] == [2, 2]
        assert all(p.requires_grad for p in head.parameters())
    else:
        with pytest.raises(InputError, match="only encoder backbones have a head"):
            load_backbone(str(path), TASKS[family], head="linear")


def test_encoder_rejects_generation_tasks(tmp_path):
    path = TINY_BACKBONES["encoder"](tmp_path)
    with pytest.raises(InputError, match="tiny_gen.*seq2seq"):
        load_backbone(str(path), (CLS, GEN))


def test_unloadable_backbone_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot load its config"):
        load_backbone(str(tmp_path / "missing"), (CLS,))
