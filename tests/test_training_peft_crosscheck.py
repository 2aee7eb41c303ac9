"""Peer cross-check on the real MiniLM (slow): add_target true, target_share 1 is plain prompt tuning.

The routed model's Trainer runs its own loop (batches, AdamW groups, warm-up/decay schedule,
backbone dropout as configured); PEFT's PromptTuningConfig replays the very same batches,
with the same prompt initialisation, optimiser, schedule and the same dropout draws (the RNG
state before each of the Trainer's forward passes), on its own copy of the frozen MiniLM.
"""

from __future__ import annotations

import pytest
import torch

from tiny_backbones import one_thread  # noqa: F401  (autouse fixture)
from routed_study.trainables.backbones import mean_pool
from routed_study.trainables.routed_prompt import RoutedPromptConfig
from routed_study.trainables.setup import TrialSetup
from routed_study.trainables.training import Trainer

pytestmark = pytest.mark.slow

STEPS = 20


@pytest.mark.parametrize("dropout", [True, False])
def test_target_share_one_equals_peft_prompt_tuning_step_by_step(offline_data, dropout):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModel, get_linear_schedule_with_warmup

    setup = TrialSetup(tasks=("rt_sentiment",), data_dir=str(offline_data), train_per_task=8 * STEPS,
                       eval_per_task=8, max_length=32)
    config = RoutedPromptConfig.from_dict({"add_target": True, "target_share": 1.0, "num_prompt_tokens": 10,
                                           "batch_size": 8, "epochs": 1, "learning_rate": 0.05,
                                           "weight_decay": 0.01, "backbone_dropout": dropout})
    trainer = Trainer(config, setup)
    assert trainer.total_steps == STEPS
    start = trainer.model.target.detach()[0].clone()

    replay = []            # (rng state before the forward, batch, loss) of every training step
    loss_fn = trainer.backbone.loss

    def recording_loss(task, embeds, prompt, batch, position):
        state = torch.get_rng_state()
        loss = loss_fn(task, embeds, prompt, batch, position)
        replay.append((state, batch, loss.item()))
        return loss

    trainer.backbone.loss = recording_loss
    trainer.train_epoch()
    assert len(replay) == STEPS

    peft = get_peft_model(AutoModel.from_pretrained(setup.resolved_backbone()),
                          PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=10))
    embedding = peft.prompt_encoder["default"].embedding
    with torch.no_grad():
        embedding.weight.copy_(start)
    peft.train(dropout)
    trainable = [p for p in peft.parameters() if p.requires_grad]
    assert trainable == [embedding.weight]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * STEPS), STEPS)
    peft_losses = []
    for state, batch, _ in replay:
        torch.set_rng_state(state)
        hidden = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = torch.cat([torch.ones_like(batch["attention_mask"][:, :10]), batch["attention_mask"]], dim=1)
        logits = trainer.backbone.pooled_logits(0, mean_pool(hidden, mask))
        loss = trainer.backbone.logits_loss(0, logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        peft_losses.append(loss.item())
    ours = [loss for _, _, loss in replay]
    gap = max(abs(a - b) for a, b in zip(ours, peft_losses))
    print(f"dropout={dropout}: max per-step loss gap over {STEPS} steps {gap:.2e}; "
          f"losses {ours[0]:.4f} -> {ours[-1]:.4f}")
    assert gap < 1e-5
    assert not torch.equal(embedding.weight.detach(), start)   # it trained
    torch.testing.assert_close(trainer.model.target.detach()[0], embedding.weight.detach(), rtol=1e-4, atol=1e-5)
