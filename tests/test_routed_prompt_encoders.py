"""Every registered prompt encoder, and initialisation from word embeddings."""

from __future__ import annotations

import pytest
import torch

from routed_study.trainables.routed_prompt import KNOBS, RoutedPrompt, RoutedPromptConfig, build_encoder, encoder_names

D = 16


def test_registry_matches_the_knob_vocabulary():
    assert set(encoder_names()) == set(KNOBS["prompt_encoder"].choices)


def test_unknown_encoder_raises():
    with pytest.raises(ValueError, match="registered: "):
        build_encoder("transformer", D, True)


@pytest.mark.parametrize("name", encoder_names())
@pytest.mark.parametrize("residual", [True, False])
def test_encoder_shape_and_gradients(name, residual):
    torch.manual_seed(0)
    encoder = build_encoder(name, D, residual)
    raw = torch.randn(5, 3, D, requires_grad=True)
    out = encoder(raw)
    assert out.shape == (5, 3, D)
    (out * torch.randn_like(out)).sum().backward()
    assert raw.grad.abs().sum() > 0
    for param in encoder.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()
    trainable = [p for p in encoder.parameters() if p.grad.abs().sum() > 0]
    assert bool(trainable) == (name != "emb")


@pytest.mark.parametrize("name", encoder_names())
def test_residual_encoder_starts_at_identity(name):
    # The zero last layer makes a residual encoder start at the raw prompt.
    raw = torch.randn(2, 4, D)
    assert torch.equal(build_encoder(name, D, True)(raw), raw)


@pytest.mark.parametrize("name", [n for n in encoder_names() if n != "emb"])
def test_non_residual_encoder_transforms(name):
    torch.manual_seed(0)
    raw = torch.randn(2, 4, D)
    assert not torch.allclose(build_encoder(name, D, False)(raw), raw, atol=1e-3)


def test_lstm_mixes_tokens_mlp_does_not():
    # The bi-LSTM sees the whole prompt: changing token 0 changes token 2's encoding.
    torch.manual_seed(0)
    raw = torch.randn(1, 3, D)
    changed = raw.clone()
    changed[0, 0] += 1.0
    for name, mixes in (("mlp", False), ("lstm", True)):
        encoder = build_encoder(name, D, False)
        moved = not torch.allclose(encoder(raw)[0, 2], encoder(changed)[0, 2])
        assert moved == mixes, name


@pytest.mark.parametrize("name", encoder_names())
def test_module_uses_the_configured_encoder(name):
    module = RoutedPrompt(RoutedPromptConfig(prompt_encoder=name), num_tasks=2, hidden_size=D, total_steps=10)
    assert module.encoder.name == name
    groups = {g["name"]: g for g in module.parameter_groups()}
    encoder_params = {id(p) for p in module.encoder.parameters()}
    assert encoder_params <= {id(p) for p in groups["prompts"]["params"]}


def _vocabulary_ids(rows, vocab):
    """For each row, the index of the identical vocabulary row, or -1."""
    same = (rows[:, None, :] == vocab[None, :, :]).all(-1)
    return torch.where(same.any(-1), same.int().argmax(-1), -1)


def _all_raw(module):
    return [p for p in (module.sources, module.private, module.target) if p is not None]


@pytest.mark.parametrize("seed", [0, 1])
def test_init_from_words_rows_are_vocabulary_rows(seed):
    vocab = torch.randn(50, D)
    config = RoutedPromptConfig(init_from_words=True, private_prompts=True, add_target=True, seed=seed)
    module = RoutedPrompt(config, num_tasks=3, hidden_size=D, total_steps=10, word_embeddings=vocab)
    for raw in _all_raw(module):
        rows = raw.detach().reshape(-1, D)
        assert _vocabulary_ids(rows, vocab).min() >= 0
    # Different vocabulary tokens across the pool, and across seeds.
    assert len(set(_vocabulary_ids(module.sources.detach().reshape(-1, D), vocab).tolist())) > 1
    other = RoutedPrompt(RoutedPromptConfig(init_from_words=True, seed=seed + 7), 3, D, 10, word_embeddings=vocab)
    assert not torch.equal(other.sources, module.sources)


def test_random_init_is_not_vocabulary_rows_and_matches_table_scale():
    vocab = torch.randn(50, D) * 3.0
    module = RoutedPrompt(RoutedPromptConfig(num_source_prompts=8, num_prompt_tokens=20), 1, D, 10,
                          word_embeddings=vocab)
    rows = module.sources.detach().reshape(-1, D)
    assert torch.all(_vocabulary_ids(rows, vocab) == -1)
    assert rows.std().item() == pytest.approx(vocab.std().item(), rel=0.1)


def test_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = RoutedPrompt(RoutedPromptConfig(seed=5, prompt_encoder="mlp"), 2, D, 10)
    assert torch.equal(torch.rand(3), expected)
    b = RoutedPrompt(RoutedPromptConfig(seed=5, prompt_encoder="mlp"), 2, D, 10)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_init_from_words_needs_a_table():
    with pytest.raises(ValueError, match="word_embeddings"):
        RoutedPrompt(RoutedPromptConfig(init_from_words=True), 1, D, 10)
