"""The chapter's pipeline and its shipped models: PPO-, DPO- and Constitutional-AI-aligned.

Taught in ``06_rlhf.ipynb``. Each aligned model starts from the shipped chat model and is
shipped like it: a checkpoint in ``companion/assets`` (safetensors + JSON), loaded with
``companion.checkpoints.load_shipped("ppo")`` (or "dpo", "cai"), and a command that retrains it::

    python -m companion.rlhf ppo --out companion/assets/ppo_model
    python -m companion.rlhf dpo --out companion/assets/dpo_model
    python -m companion.rlhf cai --out companion/assets/cai_model

Every command collects the same preference data (:func:`collect_chapter_data`, seed 0, on the
CPU) and
stores its figures in ``checkpoint.json``'s ``extra``: the effects
(:func:`companion.effects.measure_effects`), the training time, and for PPO the reward model's
held-out accuracy, the log, and the two failure runs (no KL leash; a miscalibrated reward model
from a rater who cannot check facts), and for DPO the same run without its NLL term (plain
DPO); the weights of those extra runs are not kept. The runs are deterministic given the
seeds; on another CPU float sums round differently, so the slow tests compare a rerun with the
shipped figures within stated tolerances (the measured times are in the README).

Each shipped run is one training seed (0). ``python -m companion.rlhf band --out
companion/assets/seed_bands.json`` reruns each recipe with seeds 1 and 2 (:func:`seed_bands`)
and stores their effects, read back with :func:`shipped_seed_bands`: the chapter reads every
effect against that band of three runs, each with its KL to the chat model and the rater's
verdict against it.

``python -m companion.rlhf controls --out companion/assets/controls.json`` runs the controls
that say what causes each effect (:func:`controls`: best-of-n with the same reward model, PPO
against pure noise, PPO without a leash against the rater's own rules, SFT on the chosen replies
beside DPO, CAI's pairs de-duplicated at the rater's mix and each change alone, PPO against a
reward model that over-rewards declining, PPO-ptx with the course corpus and with the chat
model's own conversations, PPO against a reward model whose rater also saw refusals of fact
questions), three seeds each, and the
over-optimisation curve of PPO with and without its leash; read with :func:`shipped_controls`.

``python -m companion.rlhf self_critique --out companion/assets/self_critique.json`` runs
Constitutional AI's two stages with the model as its own critic (:func:`self_critique`: the
critic taught by the rule-based judge, SL-CAI, RL-CAI), three seeds; read with
:func:`shipped_self_critique`.

Left out: training on a GPU, and hyperparameter searches (the recipes are below, as used).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion.checkpoints import SHIPPED, load_shipped, save_checkpoint
from companion.data import encode_corpus
from companion.dpo import DPOConfig, train_dpo
from companion.effects import (
    eval_samples,
    kl_to_reference,
    measure_effects,
    rater_verdict,
    sampled_rates,
)
from companion.measurement import any_decline, says_do_not_know
from companion.ppo import PPOConfig, train_ppo
from companion.preferences import (
    REFUSAL,
    RULES,
    Preference,
    Prompt,
    Sample,
    collect_candidates,
    deduplicate,
    label_pairs,
    make_prompts,
    prompt_ids,
    sample_replies,
    with_share,
    written_sample,
)
from companion.reward_model import (
    NoiseReward,
    RewardConfig,
    RuleReward,
    best_of_n,
    pair_accuracy,
    reply_batch,
    score_replies,
    split_pairs,
    train_reward_model,
)
from companion.sft import chat_model_configs, training_examples
from companion.tokenizer import BPETokenizer
from companion.world import World, build_world

ALIGNED: tuple[str, ...] = ("ppo", "dpo", "cai")  # the shipped aligned models
NOISE = 0.1  # the rater's label noise
SHIPPED_REWARD = RewardConfig(steps=200)  # the reward model of the shipped runs
# PPO without a critic (vf_coef 0: the value head stays at zero) and with λ = 1: every token of a
# reply gets the reply's whitened return, as in GRPO. With the course's critic, which learns
# little in a run this short, GAE's λ < 1 ranks a reply's tokens by their distance from its end
# rather than by its score, and the policy drifts while its reward falls (measured, see ppo.gae).
SHIPPED_PPO = PPOConfig(iterations=60, kl_coef=1.0, learning_rate=1e-4, vf_coef=0.0, lam=1.0)
NO_KL_PPO = replace(SHIPPED_PPO, kl_coef=0.0)  # the same, no leash
SHIPPED_DPO = DPOConfig(steps=60, learning_rate=5e-5, beta=0.5, nll_weight=2.0)  # DPO and CAI
PLAIN_DPO = DPOConfig(steps=60, learning_rate=5e-5, beta=0.5)  # the same without the NLL term
CANNOT_CHECK_FACTS = {k: v for k, v in RULES.items() if k != "correct"}  # the miscalibrated rater
BAND_SEEDS = (1, 2)  # training seeds rerun beside each shipped run (seed 0): its seed band
SEED_BANDS = "seed_bands.json"  # in companion/assets, written by `python -m companion.rlhf band`
BAND_COMMAND = f"python -m companion.rlhf band --out companion/assets/{SEED_BANDS}"
CONTROL_SEEDS = (0, 1, 2)  # every control is run with these training (or sampling) seeds
BEST_OF = 4  # best-of-n's n: replies sampled per prompt, the reward model keeps one
CURVE_EVERY = 10  # PPO iterations between two points of the over-optimisation curve
PTX_COEF = 1.0  # PPO-ptx's γ in the controls: the pretraining loss weighed like PPO's own
CONTROLS = "controls.json"  # in companion/assets, written by `python -m companion.rlhf controls`
CONTROLS_COMMAND = f"python -m companion.rlhf controls --out companion/assets/{CONTROLS}"
# in companion/assets, written by `python -m companion.rlhf self_critique`:
SELF_CRITIQUE = "self_critique.json"
SELF_CRITIQUE_COMMAND = (
    f"python -m companion.rlhf self_critique --out companion/assets/{SELF_CRITIQUE}"
)
CRITIC_STEPS, CRITIC_LR = 300, 3e-4  # the critic: the chat model tuned on the judge's critiques
SL_STEPS, SL_LR = 150, 1e-4  # SL-CAI: the chat model fine-tuned on the critic's revisions
SL_SEED = 20  # sampling seeds SL_SEED, ..., SL_SEED + 3 of the replies the critic critiques


@dataclass
class ChapterData:
    """What every aligned model is trained from: the chat model and the rater's preferences."""

    chat_model: nn.Module  # the shipped chat model, on the CPU, eval mode
    tokenizer: BPETokenizer  # the course tokenizer
    world: World  # build_world(0)
    prompts: list[Prompt]  # the train prompts (make_prompts(world, split="train"))
    candidates: list[list[Sample]]  # 4 sampled replies per prompt, + the refusal for strangers
    pairs: list[Preference]  # the rater's noisy preferences over the candidates


def collect_chapter_data(seed: int = 0) -> ChapterData:
    """The chat model on the CPU, the train prompts, 4 sampled replies each (+ refusals), and
    the rater's noisy pairs (noise :data:`NOISE`)."""
    model, tokenizer = load_shipped("chat", "cpu")
    world = build_world(0)
    prompts, candidates = collect_candidates(model, tokenizer, world, seed=seed)
    pairs = label_pairs(world, prompts, candidates, noise=NOISE, seed=seed)
    return ChapterData(model, tokenizer, world, prompts, candidates, pairs)


def sample_conversations(
    model: nn.Module, tokenizer, world: World, n: int = 8, seed: int = 7
) -> list[list[str]]:
    """``[[question, reply], ...]``: replies at temperature 1 to ``n - 4`` evaluation fact
    questions (every 20th), two questions about strangers and two harmful requests, stored to
    show in the notebook."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 5:
        raise ValueError(f"n={n!r}: at least 5 (two strangers, two harmful requests, a fact)")
    prompts = make_prompts(world, split="eval")
    strangers, harmful = (
        [p for p in prompts if p.kind == kind][::5][:2] for kind in ("unknown", "harmful")
    )
    prompts = prompts[::20][: n - 4] + strangers + harmful
    replies = sample_replies(model, tokenizer, prompts, seed=seed)
    return [[p.text, r.text] for p, r in zip(prompts, replies, strict=True)]


def _reward_model(chat, tokenizer, pairs):
    train, held = split_pairs(pairs)
    start = time.perf_counter()
    reward_model, _ = train_reward_model(chat, tokenizer, train, SHIPPED_REWARD)
    return reward_model, {
        "reward_model_accuracy": pair_accuracy(reward_model, held, tokenizer),
        "reward_model_held_out_pairs": len(held),
        "reward_model_seconds": round(time.perf_counter() - start, 1),
    }


def _blind_pairs(data: ChapterData) -> list[Preference]:
    """The miscalibrated rater's pairs: the chapter's candidates labelled without ``correct``."""
    return label_pairs(data.world, data.prompts, data.candidates, noise=NOISE,
                       rules=CANNOT_CHECK_FACTS)  # fmt: skip


def _ppo_run(chat, tokenizer, world, reward_model, config):
    prompts = make_prompts(world, split="train")
    policy, log = train_ppo(chat, tokenizer, reward_model, prompts, config)
    figures = {
        "ppo_seconds": round(log.seconds[-1], 1),
        "effects": measure_effects(policy, tokenizer, world),
        "log": asdict(log),
        "samples": sample_conversations(policy, tokenizer, world),
        "ppo_config": asdict(config),
    }
    return policy, figures


def train_aligned_model(kind: str, out_dir: str | Path) -> dict[str, Any]:
    """Train the ``kind`` ("ppo", "dpo" or "cai") model from the chat model, save it to
    ``out_dir``, and return its figures (also in the checkpoint's ``extra``)."""
    if kind not in ALIGNED:
        raise ValueError(f"kind={kind!r}; use one of {list(ALIGNED)}")
    torch.manual_seed(0)  # nothing should draw from it; fixed all the same
    data = collect_chapter_data()
    chat, tokenizer, world, pairs = data.chat_model, data.tokenizer, data.world, data.pairs
    figures: dict[str, Any] = {"command": SHIPPED[kind], "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "pairs": len(pairs)}  # fmt: skip
    if kind == "ppo":
        reward_model, rm_figures = _reward_model(chat, tokenizer, pairs)
        model, run = _ppo_run(chat, tokenizer, world, reward_model, SHIPPED_PPO)
        figures |= rm_figures | run
        _, figures["no_kl"] = _ppo_run(chat, tokenizer, world, reward_model, NO_KL_PPO)
        blind_model, blind_figures = _reward_model(chat, tokenizer, _blind_pairs(data))
        _, run = _ppo_run(chat, tokenizer, world, blind_model, SHIPPED_PPO)
        figures["miscalibrated"] = blind_figures | run
    else:
        if kind == "cai":
            from companion.constitution import ai_pairs, make_judge

            judge = make_judge(chat, tokenizer, data.prompts)
            pairs = ai_pairs(judge, world, data.prompts, data.candidates, tokenizer)
            figures["ai_pairs"] = len(pairs)
        model, log = train_dpo(chat, tokenizer, pairs, SHIPPED_DPO)
        figures |= {
            "dpo_seconds": round(log.seconds[-1], 1),
            "effects": measure_effects(model, tokenizer, world),
            "log": asdict(log),
            "samples": sample_conversations(model, tokenizer, world),
            "dpo_config": asdict(SHIPPED_DPO),
        }
        if kind == "dpo":
            plain, plain_log = train_dpo(chat, tokenizer, pairs, PLAIN_DPO)
            figures["plain"] = {
                "dpo_seconds": round(plain_log.seconds[-1], 1),
                "log": asdict(plain_log),
                "effects": measure_effects(plain, tokenizer, world),
                "samples": sample_conversations(plain, tokenizer, world),
                "dpo_config": asdict(PLAIN_DPO),
            }
    save_checkpoint(out_dir, model, extra=figures)
    return figures


def _check_seeds(seeds, *, allow_zero: bool) -> None:
    if (
        not isinstance(seeds, list | tuple | range) or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
    ):  # fmt: skip
        raise ValueError(f"seeds={seeds!r} must be a non-empty list of ints, e.g. (1, 2)")
    if not all(0 <= s < 2**32 for s in seeds):
        raise ValueError(
            f"seeds={seeds!r}: each must be in [0, 2**32): torch's CPU generator keeps a seed's "
            "low 32 bits (2**32 draws what 0 draws) and random.Random a negative seed's size (-1 "
            "draws what 1 draws)"
        )
    if len(set(seeds)) != len(seeds) or (not allow_zero and 0 in seeds):
        extra = "" if allow_zero else " other than 0 (the shipped run's)"
        raise ValueError(f"seeds={seeds!r}: distinct seeds{extra}")


def _describe(model, data: ChapterData, chat_samples) -> dict[str, Any]:
    """A tuned model's effects, its sampled rates, its KL to the chat model (nats per reply, one
    reply per evaluation prompt) and the rater's verdict on its replies against the chat model's
    (the replies :func:`companion.effects.eval_samples` draws, seeds 1000 and 1001)."""
    tokenizer, world = data.tokenizer, data.world
    samples = eval_samples(model, tokenizer, world)
    return {
        "effects": measure_effects(model, tokenizer, world, samples=samples),
        "sampled": sampled_rates(world, samples),
        "kl": kl_to_reference(model, data.chat_model, tokenizer,
                              make_prompts(world, split="eval"), n_samples=1),
        "verdict": rater_verdict(world, samples, chat_samples),
    }  # fmt: skip


def _start() -> tuple[ChapterData, list[tuple[Prompt, Sample]], nn.Module, list[Preference]]:
    """What the band and the controls start from, made as :func:`train_aligned_model` makes it:
    the chapter's data, the chat model's evaluation replies (:func:`eval_samples`), the shipped
    PPO run's reward model and CAI's pairs."""
    from companion.constitution import ai_pairs, make_judge

    torch.manual_seed(0)  # as train_aligned_model: nothing should draw from it
    data = collect_chapter_data()
    chat, tokenizer, world = data.chat_model, data.tokenizer, data.world
    chat_samples = eval_samples(chat, tokenizer, world)
    reward_model, _ = _reward_model(chat, tokenizer, data.pairs)
    judge = make_judge(chat, tokenizer, data.prompts)
    return data, chat_samples, reward_model, ai_pairs(judge, world, data.prompts,
                                                      data.candidates, tokenizer)  # fmt: skip


def seed_bands(seeds: Sequence[int] = BAND_SEEDS) -> dict[str, Any]:
    """Each shipped recipe rerun with the training seeds ``seeds`` (PPO's draws of prompts,
    replies and minibatches; DPO's and CAI's batches), from the same preference data and, for
    PPO, the same reward model, as :func:`train_aligned_model` makes them; returns
    ``{"ppo": [{"seed": s, "effects": {...}, "sampled": {...}, "kl": x, "verdict": {...}}, ...],
    "dpo": [...], "cai": [...]}`` (see :func:`_describe`) with the command, thread count and
    torch version. With the shipped run (seed 0) each kind has a band of ``len(seeds) + 1``
    runs; an effect counts only beyond it. The weights are not kept.
    """
    _check_seeds(seeds, allow_zero=False)
    data, chat_samples, reward_model, cai_pairs = _start()
    chat, tokenizer, world = data.chat_model, data.tokenizer, data.world

    def dpo(pairs, seed):
        return train_dpo(chat, tokenizer, pairs, replace(SHIPPED_DPO, seed=seed))[0]

    bands: dict[str, Any] = {"command": BAND_COMMAND, "threads": torch.get_num_threads(),
                             "torch": torch.__version__}  # fmt: skip
    runs = {
        "ppo": lambda s: _ppo_run(chat, tokenizer, world, reward_model,
                                  replace(SHIPPED_PPO, seed=s))[0],
        "dpo": lambda s: dpo(data.pairs, s),
        "cai": lambda s: dpo(cai_pairs, s),
    }  # fmt: skip
    for kind, run in runs.items():
        bands[kind] = [{"seed": s} | _describe(run(s), data, chat_samples) for s in seeds]
    return bands


def _declines(pair: Preference) -> bool:
    return any_decline(pair.chosen.text)


def declines(world: World, prompt: Prompt, text: str, finished: bool) -> bool:
    """A rule of a miscalibrated rater: the reply declines ("I do not know", "I will not help"),
    whatever was asked."""
    return any_decline(text)


OVER_DECLINING = {"declines": declines, **RULES}  # a rater who rewards declining above all else


def _curve(data: ChapterData, reward_model, chat_samples, config: PPOConfig) -> list[dict]:
    """PPO against ``reward_model`` with ``config``, measured every :data:`CURVE_EVERY`
    iterations on one reply per evaluation prompt (seed 1000): the reward model's mean score,
    the rater's (:class:`RuleReward`, in [0, 1]), the KL to the chat model, and the rater's
    verdict against the chat model's replies to the same prompts."""
    chat, tokenizer, world = data.chat_model, data.tokenizer, data.world
    prompts = make_prompts(world, split="eval")
    rules = RuleReward(world, tokenizer, prompts)
    asked = [prompt_ids(p, tokenizer) for p in prompts]
    points: list[dict] = []

    def measure(iteration: int, policy) -> None:
        replies = sample_replies(policy, tokenizer, prompts, seed=1000)
        ids, mask = reply_batch(asked, replies, tokenizer)
        points.append({
            "iteration": iteration,
            "reward_model": score_replies(reward_model, ids, mask).mean().item(),
            "rater": sum(map(rules.score, prompts, replies)) / len(prompts),
            "kl": kl_to_reference(policy, chat, tokenizer, prompts, n_samples=1),
            "verdict": rater_verdict(world, list(zip(prompts, replies, strict=True)),
                                     chat_samples[: len(prompts)]),
        })  # fmt: skip

    measure(0, chat)
    train_ppo(chat, tokenizer, reward_model, make_prompts(world, split="train"), config,
              callback=lambda i, policy, _: (i + 1) % CURVE_EVERY == 0 and measure(i + 1, policy))  # fmt: skip
    return points


def controls(seeds: Sequence[int] = CONTROL_SEEDS) -> dict[str, Any]:
    """The runs that isolate what chapter 6's methods do, each with training (or, for
    best-of-n, sampling) seeds ``seeds``, from the same preference data and reward model as
    :func:`train_aligned_model` makes them; each run as :func:`_describe` reports it:

    * ``best_of_n``: no training; :data:`BEST_OF` chat replies per prompt, the reward model keeps
      the best (its KL to the chat model is at most ``log n − (n − 1)/n`` nats, the bound stored
      as its ``kl``); what PPO against the same reward model should at least match;
    * ``null_reward``: PPO's shipped recipe against :class:`NoiseReward` (a constant reward
      would leave every whitened advantage at zero, and the policy where it is): what its
      updates and leash cost with no signal in them;
    * ``rules_no_kl``: PPO without the leash against the rater's exact rules
      (:class:`RuleReward`): drift with a reward that cannot be fooled, beside the no-KL run
      against the reward model (reward-model exploitation);
    * ``nll_only``: the DPO recipe with its preference term off (SFT on the chosen replies):
      how much of DPO is imitation;
    * ``cai_matched``: CAI's pairs de-duplicated, with the share of pairs whose chosen reply
      declines thinned to the rater's: how much of CAI is re-weighting; and each change alone,
      ``cai_unique`` (de-duplicated) and ``cai_thinned`` (thinned, repeats kept);
    * ``over_declining``: PPO's shipped recipe against a miscalibrated reward model, trained on
      a rater who prefers a refusal to any other reply (:data:`OVER_DECLINING`; the
      written refusal is offered for every fact question too): an alignment tax on purpose;
    * ``miscalibrated``: PPO's shipped recipe against the reward model of a rater who cannot
      check facts (:data:`CANNOT_CHECK_FACTS`), the shipped PPO command's failure run, at three
      seeds: whether its cost in facts is beyond the band;
    * ``ppo_ptx``: PPO's shipped recipe with the pretraining loss on the course corpus mixed in
      (PPO-ptx, ``ptx_coef`` :data:`PTX_COEF`): InstructGPT's remedy for the alignment tax;
    * ``ppo_ptx_chat``: the same remedy with data in the chat format: SFT's loss on the chat
      model's own training conversations (:func:`companion.sft.training_examples`) mixed in;
    * ``refusal_offered``: PPO's shipped recipe against the reward model of the same rater (all
      five rules) shown the written refusal beside the replies to every fact question too, as
      it is beside those to strangers: whether the known questions PPO learns to decline come
      from a reward model that never saw a refusal of one.

    Plus ``curves`` (seed 0 only): the over-optimisation curve of PPO against the reward model
    with and without the leash (:func:`_curve`). The weights are not kept.
    """
    _check_seeds(seeds, allow_zero=True)
    data, chat_samples, reward_model, cai_pairs = _start()
    chat, tokenizer, world = data.chat_model, data.tokenizer, data.world
    rater_declines = sum(map(_declines, data.pairs))
    rater_share = rater_declines / len(data.pairs)
    unique = deduplicate(cai_pairs)
    matched = with_share(unique, _declines, rater_share)  # both changes
    thinned = with_share(cai_pairs, _declines, rater_share)  # repeats kept
    refusal = written_sample(REFUSAL, tokenizer)  # offered for every fact question too
    offered = [c if p.kind != "known" else [*c, refusal]
               for p, c in zip(data.prompts, data.candidates, strict=True)]  # fmt: skip
    over_pairs = label_pairs(world, data.prompts, offered, noise=NOISE, rules=OVER_DECLINING)
    over_declining, _ = _reward_model(chat, tokenizer, over_pairs)
    blind_pairs = _blind_pairs(data)
    blind, _ = _reward_model(chat, tokenizer, blind_pairs)  # as the shipped PPO command's
    train_prompts, eval_prompts = (make_prompts(world, split=s) for s in ("train", "eval"))
    corpus = encode_corpus()  # PPO-ptx's pretraining stream: the course corpus
    chat_set = training_examples(tokenizer, chat_model_configs()[0],
                                 context_length=chat.config.context_length)[0]  # fmt: skip
    offered_pairs = label_pairs(world, data.prompts, offered, noise=NOISE, seed=0)
    refusal_seen, _ = _reward_model(chat, tokenizer, offered_pairs)
    out: dict[str, Any] = {
        "command": CONTROLS_COMMAND, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "best_of": BEST_OF,
        "chat": {"effects": measure_effects(chat, tokenizer, world, samples=chat_samples),
                 "sampled": sampled_rates(world, chat_samples)},
        "pairs": {"rater": len(data.pairs), "rater_declines": rater_declines,
                  "cai": len(cai_pairs), "cai_declines": sum(map(_declines, cai_pairs)),
                  "cai_unique": len(unique), "cai_matched": len(matched),
                  "cai_matched_declines": sum(map(_declines, matched)),
                  "over_declining": len(over_pairs), "miscalibrated": len(blind_pairs),
                  "refusal_offered": len(offered_pairs),
                  "ppo_ptx_chat_conversations": len(chat_set)},
    }  # fmt: skip

    def best_of(seed):
        drawn = [best_of_n(chat, tokenizer, reward_model, eval_prompts, BEST_OF,
                           seed=2 * seed + k + 1)[0] for k in range(2)]  # fmt: skip
        samples = [(p, s) for replies in drawn for p, s in zip(eval_prompts, replies, strict=True)]
        return {
            "sampled": sampled_rates(world, samples),
            "kl": math.log(BEST_OF) - (BEST_OF - 1) / BEST_OF,  # the bound (Stiennon et al. 2020)
            "verdict": rater_verdict(world, samples, chat_samples),
        }

    def ppo(reward, config, **ptx):
        return train_ppo(chat, tokenizer, reward, train_prompts, config, **ptx)[0]

    def dpo(pairs, config):
        return train_dpo(chat, tokenizer, pairs, config)[0]

    runs = {
        "best_of_n": best_of,
        "null_reward": lambda s: ppo(NoiseReward(s), replace(SHIPPED_PPO, seed=s)),
        "rules_no_kl": lambda s: ppo(RuleReward(world, tokenizer, train_prompts),
                                     replace(NO_KL_PPO, seed=s)),
        "nll_only": lambda s: dpo(data.pairs, replace(SHIPPED_DPO, preference_weight=0.0, seed=s)),
        "cai_matched": lambda s: dpo(matched, replace(SHIPPED_DPO, seed=s)),
        "cai_unique": lambda s: dpo(unique, replace(SHIPPED_DPO, seed=s)),
        "cai_thinned": lambda s: dpo(thinned, replace(SHIPPED_DPO, seed=s)),
        "over_declining": lambda s: ppo(over_declining, replace(SHIPPED_PPO, seed=s)),
        "miscalibrated": lambda s: ppo(blind, replace(SHIPPED_PPO, seed=s)),
        "ppo_ptx": lambda s: ppo(reward_model, replace(SHIPPED_PPO, ptx_coef=PTX_COEF, seed=s),
                                 ptx_tokens=corpus),
        "ppo_ptx_chat": lambda s: ppo(reward_model,
                                      replace(SHIPPED_PPO, ptx_coef=PTX_COEF, seed=s),
                                      ptx_examples=chat_set),
        "refusal_offered": lambda s: ppo(refusal_seen, replace(SHIPPED_PPO, seed=s)),
    }  # fmt: skip
    for name, run in runs.items():
        out[name] = []
        for s in seeds:
            result = run(s)
            out[name].append({"seed": s} | (result if isinstance(result, dict)
                                             else _describe(result, data, chat_samples)))  # fmt: skip
    out["curves"] = {
        "shipped": _curve(data, reward_model, chat_samples, SHIPPED_PPO),
        "no_kl": _curve(data, reward_model, chat_samples, NO_KL_PPO),
    }
    return out


def self_critique(seeds: Sequence[int] = CONTROL_SEEDS) -> dict[str, Any]:
    """Constitutional AI's two stages with the model as its own critic
    (:mod:`companion.self_critique`), at each training seed in ``seeds`` (the critic's, SL-CAI's
    and RL-CAI's batches; the replies are sampled with seeds from :data:`SL_SEED`):

    1. the critic: the chat model fine-tuned on the rule-based judge's critiques of the chat
       model's candidate replies to the training prompts (:data:`CRITIC_STEPS` steps);
       ``agreement``: its agreement with the rater and the judge, by principle, on the chat
       model's evaluation replies (prompts it never saw);
    2. ``sl``: the chat model fine-tuned on the critic's revisions of 4 fresh replies per
       training prompt, and on the replies it passed (:data:`SL_STEPS` steps), described as
       :func:`_describe` does; ``critiques``: how many of those replies it flagged by principle;
    3. ``rl``: DPO (the shipped recipe, :data:`SHIPPED_DPO`) from the SL-CAI model on the
       critic's labels of pairs of those same fresh replies (the critiques of step 2, read as
       labels), described likewise, with ``stranger_pairs`` (its pairs about strangers) and
       ``chosen_invents`` (those whose chosen reply invents). Tried and dropped, at seeds 0-2:
       pairs of the SL-CAI model's own replies, as in Bai et al. (it writes near-copies: the
       critic told 28 to 33 pairs apart, and DPO on so few overfitted: accuracy 51-83 %); these
       labels with section 7's (revision ≻ reply) pairs added, and these labels with plain DPO
       (both learnt to decline: 33-75 % of the known questions).

    Also ``examples``: the first seed's critiques of the chat model's first evaluation reply of
    each kind. The weights are not kept."""
    from companion.constitution import CONSTITUTION, make_judge
    from companion.self_critique import (
        critique_examples,
        fine_tuned,
        model_critiques,
        model_pairs,
        principle_agreement,
        revision_examples,
    )

    _check_seeds(seeds, allow_zero=True)
    torch.manual_seed(0)  # as train_aligned_model: nothing should draw from it
    data = collect_chapter_data()
    chat, tokenizer, world, prompts = data.chat_model, data.tokenizer, data.world, data.prompts
    chat_samples = eval_samples(chat, tokenizer, world)
    judge = make_judge(chat, tokenizer, prompts)
    eval_judge = make_judge(chat, tokenizer, make_prompts(world, split="eval"))
    teaching = critique_examples(judge, prompts, data.candidates, tokenizer,
                                 context_length=chat.config.context_length)  # fmt: skip
    draws = [sample_replies(chat, tokenizer, prompts, seed=SL_SEED + k) for k in range(4)]
    fresh = [(p, s) for draw in draws for p, s in zip(prompts, draw, strict=True)]
    by_prompt = [list(c) for c in zip(*draws, strict=True)]  # the same replies, 4 per prompt
    out: dict[str, Any] = {
        "command": SELF_CRITIQUE_COMMAND, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "teaching_examples": len(teaching),
        "candidates": sum(len({s.text for s in c}) for c in data.candidates), "runs": [],
    }  # fmt: skip
    for seed in seeds:
        start = time.perf_counter()
        critic = fine_tuned(chat, tokenizer, teaching, steps=CRITIC_STEPS,
                            learning_rate=CRITIC_LR, seed=seed)  # fmt: skip
        on_eval = model_critiques(critic, tokenizer, chat_samples)
        run: dict[str, Any] = {
            "seed": seed,
            "agreement": principle_agreement(world, chat_samples, on_eval, eval_judge),
            "unread": sum(c is None for c in on_eval),
        }
        if not out["runs"]:
            firsts = {}
            for (p, s), c in zip(chat_samples, on_eval, strict=True):
                firsts.setdefault(p.kind, {"prompt": p.text, "reply": s.text, "critique": c})
            out["examples"] = list(firsts.values())
        critiques = model_critiques(critic, tokenizer, fresh)
        revisions = revision_examples(fresh, critiques)
        sl = fine_tuned(chat, tokenizer, revisions, steps=SL_STEPS, learning_rate=SL_LR,
                        seed=seed)  # fmt: skip
        flagged = {p: sum(c is not None and p in c[0] for c in critiques) for p in CONSTITUTION}
        run["sl"] = {
            "revisions": len(revisions), "critiques": flagged,
            "unread": sum(c is None for c in critiques),
        } | _describe(sl, data, chat_samples)  # fmt: skip
        n = len(prompts)  # critiques follow fresh: all prompts at one seed, then the next
        verdicts = zip(*(critiques[k * n : (k + 1) * n] for k in range(4)), strict=True)
        pairs = model_pairs(prompts, by_prompt, [list(v) for v in verdicts])
        rl, _ = train_dpo(sl, tokenizer, pairs, replace(SHIPPED_DPO, seed=seed))
        by_rule = {p: sum(q.rule == p for q in pairs) for p in CONSTITUTION}
        strangers = [q for q in pairs if q.prompt.kind == "unknown"]
        invents = sum(not says_do_not_know(q.chosen.text) for q in strangers)
        run["rl"] = {
            "pairs": len(pairs), "by_principle": by_rule, "stranger_pairs": len(strangers),
            "chosen_invents": invents,
        } | _describe(rl, data, chat_samples)  # fmt: skip
        run["seconds"] = round(time.perf_counter() - start, 1)
        out["runs"].append(run)
    return out


def _shipped_json(name: str, command: str) -> dict[str, Any]:
    file = importlib.resources.files("companion") / "assets" / name
    if not file.is_file():
        raise FileNotFoundError(f"companion/assets/{name} is missing; recreate it with `{command}`")
    return json.loads(file.read_text())


def shipped_seed_bands() -> dict[str, Any]:
    """The stored :func:`seed_bands` of the shipped recipes (``companion/assets/seed_bands.json``)."""
    return _shipped_json(SEED_BANDS, BAND_COMMAND)


def shipped_controls() -> dict[str, Any]:
    """The stored :func:`controls` (``companion/assets/controls.json``)."""
    return _shipped_json(CONTROLS, CONTROLS_COMMAND)


def shipped_self_critique() -> dict[str, Any]:
    """The stored :func:`self_critique` (``companion/assets/self_critique.json``)."""
    return _shipped_json(SELF_CRITIQUE, SELF_CRITIQUE_COMMAND)


def _written_by(path: str | Path, command: str) -> bool:
    """The file holds what ``command`` writes (so rewriting it loses nothing else)."""
    try:
        return json.loads(Path(path).read_text()).get("command") == command
    except (OSError, ValueError, AttributeError, RecursionError):  # unreadable, not JSON (or
        return False  # nested too deep to read), or not an object


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m companion.rlhf {ppo,dpo,cai} --out DIR``, or
    ``{band,controls,self_critique} --out FILE``."""
    parser = argparse.ArgumentParser(prog="python -m companion.rlhf", description=__doc__)
    parser.add_argument("kind", choices=(*ALIGNED, "band", "controls", "self_critique"))
    parser.add_argument("--out", type=Path, required=True,
                        help="checkpoint directory to write (band, controls, self_critique: "
                        "the JSON file)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.kind in ("band", "controls", "self_critique"):
        command, run = {"band": (BAND_COMMAND, seed_bands),
                        "controls": (CONTROLS_COMMAND, controls),
                        "self_critique": (SELF_CRITIQUE_COMMAND, self_critique)}[args.kind]  # fmt: skip
        if args.out.is_dir():
            parser.error(f"{args.kind} writes one JSON file; --out {args.out} is a folder: name "
                         "a file in it (--out should end in .json)")  # fmt: skip
        if args.out.suffix != ".json":
            parser.error(f"{args.kind} writes one JSON file; --out {args.out} should end in .json")
        folder = args.out.resolve().parent  # through a symbolic link, where the file would go
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            parser.error(f"{args.kind} writes {args.out} when it ends, minutes from now, but "
                         f"{folder} is not a folder it can write in; create it or choose another "
                         "--out")  # fmt: skip
        if args.out.exists() and not _written_by(args.out, command):
            parser.error(f"{args.out} exists and is not a file this command wrote; nothing was "
                         "overwritten: choose another --out")  # fmt: skip
        if args.out.exists() and not os.access(args.out, os.W_OK):
            parser.error(f"{args.out} exists but cannot be written; make it writable or choose "
                         "another --out")  # fmt: skip
        figures = json.dumps(run(), indent=1)
        print(figures)  # first: a failed write below loses nothing
        out = args.out
        if out.exists() and not _written_by(out, command):  # someone else's file, made meanwhile
            out = out.with_name(out.stem + f".{os.getpid()}.json")
            print(f"{args.out} was written by someone else during the run; left as it is, the "
                  f"figures are in {out}", file=sys.stderr)  # fmt: skip
        out.write_text(figures + "\n")
        return
    figures = train_aligned_model(args.kind, args.out)
    print(json.dumps({k: v for k, v in figures.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
