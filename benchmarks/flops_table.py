"""The FLOPs of every shipped run, read from their recipes (python benchmarks/flops_table.py).

Pretraining and SFT train on whole windows, so their count is exact by the formula of
:mod:`companion.compute`: steps × batch × T tokens, 6·N + 12·L·T·C FLOPs each. The RLHF runs
train on prompt + reply sequences padded to at most the context (64 tokens), so their counts
are upper bounds (≤): every sequence is counted as 64 tokens. What is counted for each:

* reward model: steps × batch pairs × 2 sequences, trained (forward + backward);
* PPO: per iteration and reply, ≤ max_new_tokens forward passes of ≤ 64 tokens to sample it (no
  KV cache in chapter 6), forward passes of the policy, the reference and the reward model, and
  ``epochs`` training passes;
* DPO and CAI: the reference's forward pass over every pair once, steps × batch pairs × 2
  sequences trained. CAI's judging and revising are not counted;
* reasoning: the short SFT (steps × batch sequences), then per GRPO reply one forward pass per
  position to sample it (chapter 7's KV cache), the policy's and the reference's forward passes,
  and ``updates`` training passes.

Only the shipped model's own run is counted: the commands also train the comparison runs
(PPO without the KL leash, PPO on a miscalibrated rater, DPO without the NLL term).
"""

from __future__ import annotations

from companion.base_model import base_model_configs
from companion.checkpoints import shipped_info
from companion.compute import COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER, flops_per_token
from companion.model import count_parameters
from companion.reasoning import SHIPPED_GRPO, SHORT_SFT_STEPS, two_hop_config
from companion.rlhf import SHIPPED_DPO, SHIPPED_PPO, SHIPPED_REWARD
from companion.sft import chat_model_configs


def shipped_run_flops() -> list[dict]:
    """One row per shipped model: tokens trained, FLOPs, tokens per parameter, exact or bound."""
    config, base = base_model_configs()
    _, sft = chat_model_configs()
    T = config.context_length
    train, forward = flops_per_token(config), flops_per_token(config, training=False)
    rows = []

    def row(name, trained_tokens, flops, exact):
        rows.append({
            "run": name, "trained_tokens": trained_tokens, "flops": flops, "exact": exact,
            "tokens_per_parameter": trained_tokens / count_parameters(config),
        })  # fmt: skip

    tokens = base.steps * base.batch_size * base.context_length
    row("base (pretraining)", tokens, tokens * train, True)
    tokens = sft.steps * sft.batch_size * sft.context_length
    row("chat (SFT)", tokens, tokens * train, True)
    rm = SHIPPED_REWARD.steps * SHIPPED_REWARD.batch_size * 2 * T
    ppo = SHIPPED_PPO
    replies = ppo.iterations * ppo.batch_size
    sampling = replies * ppo.max_new_tokens * T * forward  # each new token: a window forward
    scoring = replies * 3 * T * forward  # policy, reference, reward model
    updates = replies * ppo.epochs * T
    row(
        "ppo (reward model + PPO)", rm + updates, (rm + updates) * train + sampling + scoring, False
    )
    for name, key in (("dpo", "pairs"), ("cai", "ai_pairs")):
        pairs = shipped_info(name)["extra"][key]
        trained = SHIPPED_DPO.steps * SHIPPED_DPO.batch_size * 2 * T
        row(f"{name} (DPO)", trained, trained * train + pairs * 2 * T * forward, False)
    grpo, short = SHIPPED_GRPO, two_hop_config(SHORT_SFT_STEPS, 0)
    sft_tokens = short.steps * short.batch_size * T
    replies = grpo.iterations * grpo.questions * grpo.group_size
    sampling = replies * T * forward  # with the KV cache, each position is computed once
    scoring = replies * 2 * T * forward  # the policy before the update, the reference
    updates = replies * grpo.updates * T
    trained = sft_tokens + updates
    row("reasoning (SFT + GRPO)", trained, trained * train + sampling + scoring, False)
    return rows


def main() -> None:
    config, _ = base_model_configs()
    print(f"FLOPs per training token: {flops_per_token(config):,} (6N + 12·L·T·C, T = 64)")
    print(f"parameters: {count_parameters(config):,}; compute-optimal: "
          f"{COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER} tokens per parameter")  # fmt: skip
    print(f"{'run':<26} {'tokens trained':>15} {'FLOPs':>10} {'tokens/param':>13}")
    for r in shipped_run_flops():
        bound = "" if r["exact"] else "≤"
        print(
            f"{r['run']:<26} {bound + format(r['trained_tokens'], ','):>15} "
            f"{bound + format(r['flops'], '.2e'):>10} {r['tokens_per_parameter']:>13.2f}"
        )


if __name__ == "__main__":
    main()
