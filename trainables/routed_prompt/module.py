"""RoutedPrompt: prompt pool, prompt encoder, router and composition (spec sections 1-3).

The module produces only the prompt P (B x prompt_length x D) for a batch of one
task; inserting it before or after the input and running the frozen backbone is
the backbone side's job. All randomness (rb routing noise, the learned target
gate, the ``rand`` source order) is drawn from torch's global RNG, so a trainer
that saves and restores torch's RNG state resumes bit for bit.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from routed_study.trainables.routed_prompt import methods
from routed_study.trainables.routed_prompt.config import COMPOSED, RoutedPromptConfig
from routed_study.trainables.routed_prompt.encoders import build_encoder
from routed_study.trainables.routed_prompt.schedule import default_anneal_rate, temperature_at

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

#: Width of the attention router's bottleneck (ATTEMPT's attn_W_down: D -> 100).
ATTENTION_BOTTLENECK = 100


def select_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest scores of each row, strongest first; ties break by candidate index, lowest
    first, on every device (a stable sort, where ``topk`` picks an arbitrary, device-dependent one)."""
    chosen = scores.argsort(dim=-1, descending=True, stable=True)[:, :k]
    return scores.gather(-1, chosen), chosen


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real tokens of each row (B x S x D, mask B x S) -> B x D."""
    return x.masked_fill(~mask.to(torch.bool)[..., None], torch.finfo(x.dtype).min).amax(1)


class AttentionRouter(nn.Module):
    """ATTEMPT's input-dependent router (Asai et al., 2022; spec section 7).

    Query: the input's token embeddings max-pooled over tokens, through a down-projection,
    SiLU, an up-projection and LayerNorm. Keys: each candidate prompt max-pooled over its
    tokens. Logits: key.query / (D e); the route method's softmax divides them by tau.
    """

    def __init__(self, hidden_size: int, bottleneck: int = ATTENTION_BOTTLENECK):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.scale = hidden_size * math.e

    def forward(self, input_embeds: torch.Tensor, input_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits B x C from the input (B x S x D) and the encoded candidates (B x C x L x D)."""
        query = self.norm(self.up(nn.functional.silu(self.down(masked_max(input_embeds, input_mask)))))
        keys = candidates.amax(2)                                             # B x C x D
        return torch.einsum("bcd,bd->bc", keys.to(query.dtype), query) / self.scale


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
        task_names: the tasks' names; with ``sources: tasks`` they name the router's source
            columns (a task's own source prompt), otherwise ``task_0``... is assumed.

    Parameters: ``sources`` (N x L x D; N = T with task-owned sources), ``private`` (T x L x D),
    ``target`` (T x L_t x D, L_t = L for wavg, k*L for cat/concat), ``target_gate_logits`` (T),
    and either ``router`` (T x C logits, zeros) or ``attention`` (ATTEMPT's router), and the
    shared ``encoder``. Only those a config uses exist.
    """

    def __init__(self, config: RoutedPromptConfig, num_tasks: int, hidden_size: int, total_steps: int,
                 word_embeddings: torch.Tensor | None = None, task_names: Sequence[str] | None = None):
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.config = config
        self.num_tasks = num_tasks
        self.hidden_size = hidden_size
        self.total_steps = max(1, int(total_steps))
        self.anneal_rate = (default_anneal_rate(self.total_steps) if config.anneal_rate is None
                            else config.anneal_rate)
        self.task_names = list(task_names) if task_names is not None else [f"task_{i}" for i in range(num_tasks)]
        if len(self.task_names) != num_tasks:
            raise ValueError(f"{len(self.task_names)} task names for {num_tasks} tasks")
        self.route_method = methods.ROUTE_METHODS.get(config.route_method)
        self.eval_method = methods.eval_method_for(config.route_method, config.eval_route_method)
        self.composition = methods.COMPOSE_METHODS.get(config.compose_method)
        self.order = methods.SOURCE_ORDERS.get(config.source_order)

        L = config.num_prompt_tokens
        task_sources = config.sources == "tasks"
        num_sources = num_tasks if task_sources else config.num_source_prompts
        self.candidate_names: list[str] = (list(self.task_names) if task_sources
                                           else [f"source_{i}" for i in range(num_sources)])
        self.candidate_names += [name for name, on in (("private", config.private_prompts),
                                                       ("target", config.attend_target),
                                                       ("input", config.attend_input)) if on]
        self.num_candidates = len(self.candidate_names)
        self.num_selected = self.num_candidates if config.num_selected == -1 else config.num_selected
        if not 1 <= self.num_selected <= self.num_candidates:
            raise ValueError(f"num_selected {config.num_selected} with {self.num_candidates} candidates")
        # target_share = 1 (convex) is plain prompt tuning: nothing is composed, P is L tokens.
        self.composed = COMPOSED(config.to_dict())
        self._prompt_length = config.prompt_tokens(num_tasks)

        share = config.effective_target_share if config.target_mix == "convex" else None
        self.learned_gate = share == "learned"
        self.fixed_share = None if share is None or self.learned_gate else float(share)
        self.has_target = config.add_target or config.attend_target

        # Initialise under the config's seed without disturbing the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            table = _check_table(word_embeddings, hidden_size, config.init_from_words)

            def draw(n: int, length: int) -> torch.Tensor:
                return _raw_prompts(n, length, hidden_size, table, config.init_from_words)

            self.sources = nn.Parameter(draw(num_sources, L)) if num_sources else None
            self.private = nn.Parameter(draw(num_tasks, L)) if config.private_prompts else None
            self.target = nn.Parameter(draw(num_tasks, self._prompt_length)) if self.has_target else None
            self.encoder = build_encoder(config.prompt_encoder, hidden_size, config.prompt_encoder_residual)
            self.attention = (AttentionRouter(hidden_size) if self.route_method.router == "attention" else None)
        self.target_gate_logits = nn.Parameter(torch.zeros(num_tasks)) if self.learned_gate else None
        self.router = nn.Parameter(torch.zeros(num_tasks, self.num_candidates)) if self.attention is None else None
        # The attention router has no logit table: its matrix is the mean evaluation score per task.
        self.register_buffer("_score_sum", torch.zeros(num_tasks, self.num_candidates), persistent=False)
        self.register_buffer("_score_count", torch.zeros(num_tasks), persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def prompt_length(self) -> int:
        """Tokens in P: L, or k*L when composing by cat/concat."""
        return self._prompt_length

    def tau(self, step: int) -> float:
        """The router temperature at ``step`` (section 3)."""
        c = self.config
        return temperature_at(step, c.temperature, c.anneal_dir, self.anneal_rate, c.anneal_min, c.anneal_max)

    def router_parameters(self) -> list[nn.Parameter]:
        return [self.router] if self.router is not None else list(self.attention.parameters())

    def parameter_groups(self) -> list[dict]:
        """AdamW groups: prompts, encoder and target gates at learning_rate; the router at its own rate.
        Frozen parameters (``freeze_sources``) are left out."""
        routing = {id(p) for p in self.router_parameters()}
        prompts = [p for p in self.parameters() if id(p) not in routing and p.requires_grad]
        return [{"params": prompts, "lr": self.config.learning_rate, "name": "prompts"},
                {"params": self.router_parameters(), "lr": self.config.router_learning_rate, "name": "router"}]

    def load_sources(self, prompts: torch.Tensor, freeze: bool) -> None:
        """Start the task-owned sources from pre-trained prompts (T x L x D, raw, in task order)."""
        if self.config.sources != "tasks" or self.sources is None:
            raise ValueError("pre-trained sources need sources: tasks")
        if tuple(prompts.shape) != tuple(self.sources.shape):
            raise ValueError(f"pre-trained sources are {tuple(prompts.shape)}, expected {tuple(self.sources.shape)}")
        with torch.no_grad():
            self.sources.copy_(prompts.to(self.sources))
        self.sources.requires_grad_(not freeze)

    def train(self, mode: bool = True) -> "RoutedPrompt":
        if not mode:   # a new evaluation: the attention router's matrix averages it afresh
            self._score_sum.zero_()
            self._score_count.zero_()
        return super().train(mode)

    def router_matrix(self) -> np.ndarray:
        """T x C (rows: tasks, columns: ``candidate_names``): the router logits, or for the
        attention router the mean score per task over the last evaluation."""
        if self.router is not None:
            return self.router.detach().float().cpu().numpy().copy()
        count = self._score_count.clamp_min(1)[:, None]
        return (self._score_sum / count).float().cpu().numpy().copy()

    def target_gates(self) -> np.ndarray | None:
        """Per-task target share g: the fixed number, or the learned gate's mean sigmoid(logit);
        1 for every task under ``target_mix: add`` (the target enters with weight 1)."""
        if not self.config.add_target:
            return None
        if self.learned_gate:
            return torch.sigmoid(self.target_gate_logits.detach().float()).cpu().numpy()
        return np.full(self.num_tasks, 1.0 if self.fixed_share is None else self.fixed_share, dtype=np.float32)

    # ------------------------------------------------------------------ forward
    def forward(self, task_id: int, input_embeds: torch.Tensor, input_mask: torch.Tensor, step: int) -> torch.Tensor:
        t = int(task_id)
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"task_id {t} outside 0..{self.num_tasks - 1}")
        batch = input_embeds.shape[0]
        target = self.encoder(self.target[t:t + 1]) if self.has_target else None  # 1 x L_t x D
        if not self.composed:
            # g = 1 is plain prompt tuning: the routed part would be multiplied by 0.
            return target.expand(batch, -1, -1).to(input_embeds.dtype)

        candidates = self.candidates(t, input_embeds, input_mask, target)  # B x C x L x D
        logits = None if self.attention is None else self.attention(input_embeds, input_mask, candidates)
        weights, chosen = self.route(t, batch, step, logits=logits)  # B x k, B x k
        picked = candidates[torch.arange(batch, device=chosen.device)[:, None], chosen]  # B x k x L x D
        prompt = self.composition.compose(weights, picked)

        if self.config.add_target:
            if self.config.target_mix == "add":
                prompt = target + prompt      # ATTEMPT: the target enters with weight 1
            else:
                gate = self._gate(t, batch, prompt.dtype)
                prompt = (1 - gate) * prompt + gate * target
        return prompt.to(input_embeds.dtype)

    def scores(self, task_id: int, batch: int, step: int, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Step 3 of section 2: B x C scores from the task's router row (or the attention router's
        per-example ``logits``), by route_method when training and by the evaluation method
        (``same``: the training method's deterministic counterpart) otherwise."""
        if logits is None:
            logits = self.router[task_id].expand(batch, -1)
        method = self.route_method if self.training else self.eval_method
        scores = method.scores(logits, self.tau(step))
        if not self.training and self.attention is not None:
            with torch.no_grad():
                self._score_sum[task_id] += scores.detach().sum(0).to(self._score_sum)
                self._score_count[task_id] += scores.shape[0]
        return scores

    def route(self, task_id: int, batch: int, step: int,
              logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 3-7 of section 2: (weights B x k, candidate indices B x k) in composition order."""
        c = self.config
        scores = self.scores(task_id, batch, step, logits)
        if c.apply_softmax_to == "before":
            scores = torch.softmax(scores, dim=-1)
        weights, chosen = select_top_k(scores, self.num_selected)     # strongest first
        weights, chosen = self.order(weights, chosen)
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
            shared.append(nn.functional.adaptive_avg_pool1d(target.transpose(1, 2), L).transpose(1, 2))
        batch = input_embeds.shape[0]
        parts = [torch.cat(shared).unsqueeze(0).expand(batch, -1, -1, -1)] if shared else []
        if c.attend_input:
            dtype = shared[0].dtype if shared else input_embeds.dtype
            pooled = pool_tokens(input_embeds.to(dtype), input_mask, L)
            parts.append(pooled.unsqueeze(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _gate(self, task_id: int, batch: int, dtype: torch.dtype) -> torch.Tensor | float:
        """g of step 9: a fixed number, or the learned per-task gate (B x 1 x 1)."""
        if not self.learned_gate:
            return self.fixed_share
        logit = self.target_gate_logits[task_id]
        if self.training:
            gate = methods.relaxed_bernoulli(logit.reshape(1, 1).expand(batch, 1),
                                             self.config.target_share_temperature)
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
