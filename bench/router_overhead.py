"""Training-step time of the routed prompt model against plain prompt tuning (PEFT).

Both train a soft prompt of the same total length in front of the same frozen
all-MiniLM-L6-v2, on the same batch, with the same frozen-verbalizer loss; the
only difference is what produces the prompt: the routed module (prompt pool,
router, composition) or PEFT's ``PromptTuningConfig`` embedding. Two routed models are
timed: the configured one (``--route-method``, default rb: a per-task logit table) and
ATTEMPT's input-dependent ``attention`` router (the same pool and composition). Steps of
the three rotate so that load on a shared machine hits all alike; the ratio of the median
step times against PEFT is printed as ``attention_overhead_ratio=<x>`` and, last, as
``router_overhead_ratio=<x>`` for the configured method. Dropout is off in all three (the
frozen backbone in eval mode): the bench measures what the prompt module costs.

    python bench/router_overhead.py [--steps 20] [--threads 1] [--prompt-tokens 10] [--sources 4] ...

One thread by default: on a shared 2-core machine two-thread steps swing by tens
of percent with the neighbours' load, which swamps a difference of a few percent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

WORDS = ("the film is a quiet and patient study of grief , carried by two remarkable performances "
         "that never tip into sentiment , though its second half drags and the score is far too loud").split()


def make_batch(backbone, batch_size: int, input_tokens: int, seed: int) -> dict:
    """``batch_size`` review-like sentences cut to ``input_tokens`` tokens, with random 0/1 labels."""
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(batch_size):
        order = torch.randperm(len(WORDS), generator=generator).tolist()
        texts.append(" ".join(WORDS[i] for i in order))
    encoded = backbone.tokenizer(texts, truncation=True, max_length=input_tokens, padding=True,
                                 return_tensors="pt")
    labels = torch.randint(2, (batch_size,), generator=generator)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}


def routed_step_fn(backbone, config, batch):
    from routed_study.trainables.routed_prompt import RoutedPrompt

    backbone.eval_mode()
    model = RoutedPrompt(config, num_tasks=1, hidden_size=backbone.hidden_size, total_steps=1000,
                         word_embeddings=backbone.word_embeddings())
    optimizer = torch.optim.AdamW(model.parameter_groups())
    state = {"step": 0}

    def step() -> float:
        model.train()
        embeds = backbone.embed(batch["input_ids"])
        prompt = model(0, embeds, batch["attention_mask"], state["step"])
        loss = backbone.loss(0, embeds, prompt, batch, "pre")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1
        return loss.item()

    return step, model.prompt_length


def peft_step_fn(backbone, path: str, prompt_length: int, learning_rate: float, batch):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModel

    from routed_study.trainables.backbones import mean_pool

    peft_config = PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=prompt_length)
    model = get_peft_model(AutoModel.from_pretrained(path).eval(), peft_config)
    model.eval()  # dropout off, as for the frozen backbone of the routed model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    mask = torch.cat([torch.ones(batch["attention_mask"].shape[0], prompt_length,
                                 dtype=batch["attention_mask"].dtype), batch["attention_mask"]], dim=1)

    def step() -> float:
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = backbone.pooled_logits(0, mean_pool(hidden, mask))
        loss = backbone.logits_loss(0, logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-tokens", type=int, default=40)
    parser.add_argument("--prompt-tokens", type=int, default=10, help="L of the routed model")
    parser.add_argument("--sources", type=int, default=4, help="num_source_prompts of the routed model")
    parser.add_argument("--prompt-encoder", default="emb")
    parser.add_argument("--route-method", default="rb", help="route_method of the first routed model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import transformers

    from routed_study.trainables.backbones import EncoderBackbone
    from routed_study.trainables.routed_prompt import RoutedPromptConfig
    from routed_study.trainables.setup import TrialSetup
    from routed_study.trainables.tasks import get_task

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from inside PEFT
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    path = TrialSetup(tasks=("rt_sentiment",)).resolved_backbone()
    backbone = EncoderBackbone(path, [get_task("rt_sentiment")], max_length=args.input_tokens)
    batch = make_batch(backbone, args.batch_size, args.input_tokens, args.seed)
    knobs = {"num_prompt_tokens": args.prompt_tokens, "num_source_prompts": args.sources,
             "prompt_encoder": args.prompt_encoder, "seed": args.seed}
    config = RoutedPromptConfig.from_dict({**knobs, "route_method": args.route_method}, where="--route-method")
    routed, prompt_length = routed_step_fn(backbone, config, batch)
    attention, _ = routed_step_fn(backbone, RoutedPromptConfig.from_dict({**knobs, "route_method": "attention"}),
                                  batch)
    plain = peft_step_fn(backbone, path, prompt_length, config.learning_rate, batch)

    print(f"backbone=all-MiniLM-L6-v2 threads={args.threads} batch={args.batch_size}x"
          f"{batch['input_ids'].shape[1]} tokens prompt_length={prompt_length}")
    print(f"routed: sources={args.sources} L={args.prompt_tokens} encoder={args.prompt_encoder} "
          f"route={config.route_method} compose={config.compose_method}; plain: peft PromptTuningConfig "
          f"num_virtual_tokens={prompt_length}; loss=frozen verbalizer (cosine / {config.verbalizer_scale})")
    steps = [("routed", routed), ("attention", attention), ("plain", plain)]
    times = {name: [] for name, _ in steps}
    for i in range(args.warmup + args.steps):
        # Rotate which model goes first so that none always runs on a warmer cache.
        order = steps[i % 3:] + steps[:i % 3]
        for name, step in order:
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"steps={args.steps} median_step_s routed={medians['routed']:.4f} attention={medians['attention']:.4f} "
          f"plain={medians['plain']:.4f}")
    print(f"attention_overhead_ratio={medians['attention'] / medians['plain']:.3f}")
    ratio = medians["routed"] / medians["plain"]
    print(f"router_overhead_ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
