"""RoutedPrompt: prompt pool, prompt encoder, router and composition (spec sections 1-3).

The module produces only the prompt P (B x prompt_length x D) for a batch of one
task; inserting it before or after the input and running the frozen backbone is
the backbone side's job. All randomness (rb routing noise, the learned target
gate, the ``rand`` source order) is drawn from torch's global RNG, so a trainer
that saves and restores torch's RNG state resumes bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import RelaxedBernoulli

from trainables.routed_prompt.config import RoutedPromptConfig
from trainables.routed_prompt.encoders import build_encoder
from trainables.routed_prompt.schedule import default_anneal_rate, temperature_at

# Router scores s (B x C) from a task's logits l (C,) at temperature tau, for batch size B.
ScoreFn = Callable[[torch.Tensor, float, int], torch.Tensor]


def _relaxed_bernoulli(logits: torch.Tensor, tau: float, batch: int) -> torch.Tensor:
    # sigmoid((l + logistic noise) / tau), one sample per example.
    return RelaxedBernoulli(torch.as_tensor(tau, dtype=logits.dtype, device=logits.device), logits=logits,
                            validate_args=False).rsample((batch,))


#: route_method (training).
TRAIN_SCORES: dict[str, ScoreFn] = {
    "rb": _relaxed_bernoulli,
    "sigmoid": lambda logits, tau, batch: torch.sigmoid(logits / tau).expand(batch, -1),
    "softmax": lambda logits, tau, batch: torch.softmax(logits / tau, dim=-1).expand(batch, -1),
    "const": lambda logits, tau, batch: torch.ones_like(logits).expand(batch, -1),
}

#: eval_route_method (evaluation). ``sigmoid`` uses the current tau, as training's ``sigmoid``
#: does, so that method behaves identically in both modes.
EVAL_SCORES: dict[str, ScoreFn] = {
    "direct": lambda logits, tau, batch: logits.expand(batch, -1),
    "sigmoid": TRAIN_SCORES["sigmoid"],
    "sign": lambda logits, tau, batch: (logits > 0).to(logits.dtype).expand(batch, -1),
    "rb": _relaxed_bernoulli,
}

_EPS = 1e-8


def _l1_normalise(w: torch.Tensor) -> torch.Tensor:
    # w / sum(w) for the non-negative scores; the absolute value keeps raw ('direct') logits
    # bounded and the clamp keeps an all-zero row (e.g. 'sign' with no positive logit) at 0.
    return w / w.abs().sum(-1, keepdim=True).clamp_min(_EPS)


#: apply_softmax_to: how the k selected weights are normalised after selection.
#: ('before' softmaxes over all C candidates before selection and leaves the k as they are.)
AFTER_SELECTION: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "before": lambda w: w,
    "after": lambda w: torch.softmax(w, dim=-1),
    "norm": _l1_normalise,
    "normafter": lambda w: torch.softmax(_l1_normalise(w), dim=-1),
    "nothing": lambda w: w,
}


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """Average the real tokens of each row of ``x`` (B x S x D, ``mask`` B x S) into ``length`` segments.

    Adaptive average pooling over each example's own valid tokens (any padding side):
    segment l averages valid tokens with rank in [floor(l*n/L), ceil((l+1)*n/L)), so no
    segment is empty when n >= 1. Vectorised over the batch.
    """
    mask = mask.to(torch.bool)
    n = mask.sum(-1, keepdim=True).clamp_min(1)                       # B x 1
    rank = (mask.cumsum(-1) - 1)                                      # B x S: index among valid tokens
    seg = torch.arange(length, device=x.device)[None, :]             # 1 x L
    start = torch.div(seg * n, length, rounding_mode="floor")         # B x L
    end = -torch.div(-(seg + 1) * n, length, rounding_mode="floor")   # ceil
    inside = (rank[:, None, :] >= start[..., None]) & (rank[:, None, :] < end[..., None]) & mask[:, None, :]
    weights = inside.to(x.dtype)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)
    return weights @ x                                                # B x L x D


class RoutedPrompt(nn.Module):
    """Multi-task routed soft prompt: ``forward(task_id, input_embeds, input_mask, step) -> P``.

    Args:
        config: the trial's knobs.
        num_tasks: T, the number of tasks; task ids are 0..T-1.
        hidden_size: D, the backbone's embedding width.
        total_steps: training steps of the whole run (sets the default anneal rate).
        word_embeddings: the frozen V x D token-embedding table. Used for
            ``init_from_words`` and, when given, to match the scale of random
            initialisation to real token embeddings.

    Parameters: ``sources`` (N x L x D), ``private`` (T x L x D), ``target``
    (T x L_t x D, L_t = L for wavg, k*L for cat/concat), ``target_gate_logits`` (T),
    ``router`` (T x C, zeros), and the shared ``encoder``. Only those a config
    uses exist.
    """

    def __init__(self, config: RoutedPromptConfig, num_tasks: int, hidden_size: int, total_steps: int,
                 word_embeddings: torch.Tensor | None = None):
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.config = config
        self.num_tasks = num_tasks
        self.hidden_size = hidden_size
        self.total_steps = max(1, int(total_steps))
        self.anneal_rate = (default_anneal_rate(self.total_steps) if config.anneal_rate is None
                            else config.anneal_rate)

        L = config.num_prompt_tokens
        self.candidate_names: list[str] = [f"source_{i}" for i in range(config.num_source_prompts)]
        self.candidate_names += [name for name, on in (("private", config.private_prompts),
                                                       ("target", config.attend_target),
                                                       ("input", config.attend_input)) if on]
        self.num_candidates = len(self.candidate_names)
        self.num_selected = self.num_candidates if config.num_selected == -1 else config.num_selected
        if not 1 <= self.num_selected <= self.num_candidates:
            raise ValueError(f"num_selected {config.num_selected} with {self.num_candidates} candidates")
        joins = config.compose_method in ("cat", "concat")
        self._prompt_length = self.num_selected * L if joins else L

        share = config.effective_target_share
        self.learned_gate = share == "learned"
        self.fixed_share = None if share is None or self.learned_gate else float(share)
        self.has_target = config.add_target or config.attend_target

        # Initialise under the config's seed without disturbing the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            table = _check_table(word_embeddings, hidden_size, config.init_from_words)

            def draw(n: int, length: int) -> torch.Tensor:
                return _raw_prompts(n, length, hidden_size, table, config.init_from_words)

            self.sources = nn.Parameter(draw(config.num_source_prompts, L)) if config.num_source_prompts else None
            self.private = nn.Parameter(draw(num_tasks, L)) if config.private_prompts else None
            self.target = nn.Parameter(draw(num_tasks, self._prompt_length)) if self.has_target else None
            self.encoder = build_encoder(config.prompt_encoder, hidden_size, config.prompt_encoder_residual)
        self.target_gate_logits = nn.Parameter(torch.zeros(num_tasks)) if self.learned_gate else None
        self.router = nn.Parameter(torch.zeros(num_tasks, self.num_candidates))

    # ------------------------------------------------------------------ properties
    @property
    def prompt_length(self) -> int:
        """Tokens in P: L, or k*L when composing by cat/concat."""
        return self._prompt_length

    def tau(self, step: int) -> float:
        """The router temperature at ``step`` (section 3)."""
        c = self.config
        return temperature_at(step, c.temperature, c.anneal_dir, self.anneal_rate, c.anneal_min, c.anneal_max)

    def parameter_groups(self) -> list[dict]:
        """AdamW groups: prompts, encoder and target gates at learning_rate; the router at its own rate."""
        prompts = [p for name, p in self.named_parameters() if name != "router"]
        return [{"params": prompts, "lr": self.config.learning_rate, "name": "prompts"},
                {"params": [self.router], "lr": self.config.router_learning_rate, "name": "router"}]

    def router_matrix(self) -> np.ndarray:
        """T x C router logits (rows: tasks, columns: ``candidate_names``)."""
        return self.router.detach().float().cpu().numpy().copy()

    def target_gates(self) -> np.ndarray | None:
        """Per-task target share g: the fixed number, or the learned gate's mean sigmoid(logit)."""
        if not self.config.add_target:
            return None
        if self.learned_gate:
            return torch.sigmoid(self.target_gate_logits.detach().float()).cpu().numpy()
        return np.full(self.num_tasks, self.fixed_share, dtype=np.float32)

    # ------------------------------------------------------------------ forward
    def forward(self, task_id: int, input_embeds: torch.Tensor, input_mask: torch.Tensor, step: int) -> torch.Tensor:
        t = int(task_id)
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"task_id {t} outside 0..{self.num_tasks - 1}")
        batch = input_embeds.shape[0]
        target = self.encoder(self.target[t:t + 1]) if self.has_target else None  # 1 x L_t x D
        if self.fixed_share == 1.0:
            # g = 1 is plain prompt tuning: the routed part would be multiplied by 0.
            return target.expand(batch, -1, -1).to(input_embeds.dtype)

        weights, chosen = self.route(t, batch, step)                  # B x k, B x k
        candidates = self.candidates(t, input_embeds, input_mask, target)  # B x C x L x D
        picked = candidates[torch.arange(batch, device=chosen.device)[:, None], chosen]  # B x k x L x D
        method = self.config.compose_method
        if method == "wavg":
            prompt = torch.einsum("bk,bkld->bld", weights.to(picked.dtype), picked)
        elif method == "cat":
            prompt = (weights.to(picked.dtype)[..., None, None] * picked).flatten(1, 2)
        else:  # concat: the selected candidates joined with unit weights
            prompt = picked.flatten(1, 2)

        if self.config.add_target:
            gate = self._gate(t, batch, prompt.dtype)
            prompt = (1 - gate) * prompt + gate * target
        return prompt.to(input_embeds.dtype)

    def scores(self, task_id: int, batch: int, step: int) -> torch.Tensor:
        """Step 3 of section 2: B x C scores from the task's router row, by route_method when
        training and eval_route_method otherwise."""
        c = self.config
        score_fn = TRAIN_SCORES[c.route_method] if self.training else EVAL_SCORES[c.eval_route_method]
        return score_fn(self.router[task_id], self.tau(step), batch)

    def route(self, task_id: int, batch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 3-7 of section 2: (weights B x k, candidate indices B x k) in composition order."""
        c = self.config
        scores = self.scores(task_id, batch, step)
        if c.apply_softmax_to == "before":
            scores = torch.softmax(scores, dim=-1)
        weights, chosen = scores.topk(self.num_selected, dim=-1, sorted=True)  # strongest first
        if c.source_order == "asc":
            weights, chosen = weights.flip(-1), chosen.flip(-1)
        elif c.source_order == "rand":
            order = torch.randperm(self.num_selected, device=weights.device)
            weights, chosen = weights[:, order], chosen[:, order]
        return AFTER_SELECTION[c.apply_softmax_to](weights), chosen

    def candidates(self, task_id: int, input_embeds: torch.Tensor, input_mask: torch.Tensor,
                   target: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded candidates in ``candidate_names`` order: B x C x L x D.

        ``target`` is the task's encoded target prompt (1 x L_t x D) when the caller has it already.
        """
        c = self.config
        if c.attend_target and target is None:
            target = self.encoder(self.target[task_id:task_id + 1])
        L = c.num_prompt_tokens
        raw = [p for p in (self.sources, self.private[task_id:task_id + 1] if c.private_prompts else None)
               if p is not None]
        shared = [self.encoder(torch.cat(raw))] if raw else []        # one encoder call for the pool
        if c.attend_target:
            shared.append(F.adaptive_avg_pool1d(target.transpose(1, 2), L).transpose(1, 2))
        batch = input_embeds.shape[0]
        parts = [torch.cat(shared).unsqueeze(0).expand(batch, -1, -1, -1)] if shared else []
        if c.attend_input:
            pooled = pool_tokens(input_embeds.to(self.router.dtype), input_mask, L)
            parts.append(pooled.unsqueeze(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _gate(self, task_id: int, batch: int, dtype: torch.dtype) -> torch.Tensor | float:
        """g of step 9: a fixed number, or the learned per-task gate (B x 1 x 1)."""
        if not self.learned_gate:
            return self.fixed_share
        logit = self.target_gate_logits[task_id]
        if self.training:
            gate = _relaxed_bernoulli(logit.reshape(1), self.config.target_share_temperature, batch)
        else:
            gate = torch.sigmoid(logit).reshape(1, 1).expand(batch, 1)
        return gate.to(dtype)[..., None]


def _check_table(word_embeddings: torch.Tensor | None, hidden_size: int, from_words: bool) -> torch.Tensor | None:
    if word_embeddings is None:
        if from_words:
            raise ValueError("init_from_words needs the backbone's word_embeddings table")
        return None
    table = word_embeddings.detach().float().cpu()
    if table.ndim != 2 or table.shape[1] != hidden_size:
        raise ValueError(f"word_embeddings must be V x {hidden_size}, got {tuple(table.shape)}")
    return table


def _raw_prompts(n: int, length: int, hidden_size: int, table: torch.Tensor | None,
                 from_words: bool) -> torch.Tensor:
    """n x length x D fresh raw prompts from the global RNG: vocabulary rows, or random normal."""
    if from_words:
        return table[torch.randint(table.shape[0], (n, length))].clone()
    # Random prompts at the scale of real token embeddings; BERT's initializer_range without a table.
    std = float(table.std()) if table is not None else 0.02
    return torch.randn(n, length, hidden_size) * std
