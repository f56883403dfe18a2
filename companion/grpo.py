"""GRPO: reinforcement learning from rewards a program can check, with no value model.

Taught in ``08_reasoning.ipynb`` (the two-hop task it is used on is in
:mod:`companion.reasoning`). **GRPO** (Shao et al. 2024, DeepSeekMath, section 4.1) samples a
*group* of G replies per question, scores each with a reward (1 for a right final answer, 0
otherwise), and uses the reward minus its group's mean, over the group's standard deviation, as
every token's advantage (:func:`group_advantages`): the group is the baseline that PPO's value
model was. A group whose rewards are all equal has zero advantages and teaches nothing; the
trainer counts such groups and says when a whole roll-out is like that. The loss
(:func:`grpo_loss`) is PPO's per-token clipped ratio (:func:`companion.ppo.clipped_objective`)
averaged over *every reply token of the batch* (the token-mean of DAPO, Yu et al. 2025;
DeepSeekMath averages each reply first, then the replies), plus optionally ``β`` times the k3
estimate of the KL divergence to the starting model (:func:`kl_k3`). Shape vocabulary: B
questions (groups), G replies per group, N = B·G replies, T time.

Left out: process rewards, learned verifiers, length penalties, and the many later variants
(Dr. GRPO's unnormalised advantages, DAPO's asymmetric clip and dynamic sampling).
"""

from __future__ import annotations

import copy
import math
import numbers
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from companion.environment import model_device
from companion.generation import generate_many
from companion.kv_cache import CachedGPT
from companion.model import GPT
from companion.ppo import clipped_objective
from companion.replies import pad_sequences, token_logprobs
from companion.train_config import check_loss, check_recipe


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages (B, G), equal (B,))``: each reward minus its group's mean, over the group's
    standard deviation (population, ``(r − mean) / (std + eps)``); ``equal`` marks the groups
    whose rewards are all the same: their advantages are exactly 0.

    >>> adv, equal = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    >>> adv.round(decimals=4).tolist(), equal.tolist()
    ([[1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], [False, True])
    """
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch tensor (B, G), got a {type(rewards).__name__}")
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be (B, G) with G >= 2 replies per group, got {tuple(rewards.shape)}"
        )
    if not rewards.is_floating_point() or not bool(torch.isfinite(rewards).all()):
        raise ValueError(
            "rewards must be finite floating-point numbers (a NaN or inf makes every advantage of "
            "its group NaN); check the reward function's return values"
        )
    if isinstance(eps, bool) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r} must be a small number >= 0, e.g. 1e-6")
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)  # (B, 1)
    equal = (rewards == rewards[:, :1]).all(dim=1)  # (B,)
    advantages = (rewards - mean) / (std + eps)  # (B, G)
    return advantages.masked_fill(equal[:, None], 0.0), equal


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of ``KL(π ‖ π_ref)`` per token (Schulman 2020): ``exp(d) − d − 1`` with
    ``d = log π_ref(y) − log π(y)``; never negative, unbiased for ``y`` drawn from π (any shape).

    >>> [round(k, 4) for k in kl_k3(torch.tensor([0.0, -1.0]), torch.zeros(2)).tolist()]  # e − 2
    [0.0, 0.7183]
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
    clip: float = 0.2, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(loss, clip_fraction, kl)``: the clipped surrogate with one advantage per reply,
    token-mean over every masked token of the batch, plus ``kl_coef`` times the token-mean k3
    KL (0 without ``ref_logp``). ``logp``, ``old_logp``, ``ref_logp``, ``mask`` (N, T) for N
    replies; ``advantages`` (N,).

    >>> one = torch.ones(1, 1, dtype=torch.bool)
    >>> loss, frac, _ = grpo_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1),
    ...                           torch.tensor([1.0]), one)
    >>> round(loss.item(), 4), frac.item()  # ρ = 1.5 counts as 1.2
    (-1.2, 1.0)
    """
    given = [logp, old_logp, mask] + ([] if ref_logp is None else [ref_logp])
    if not all(isinstance(t, torch.Tensor) for t in [*given, advantages]):
        raise TypeError("logp, old_logp, advantages, mask (and ref_logp) must be torch tensors")
    if (
        logp.dim() != 2
        or any(t.shape != logp.shape for t in given)
        or (advantages.shape != logp.shape[:1])
    ):
        shapes = ", ".join(str(tuple(t.shape)) for t in [*given, advantages])
        raise ValueError(
            "logp, old_logp, mask (and ref_logp) must all be (N, T) and advantages (N,); got "
            f"{shapes} (logp, old_logp, mask, [ref_logp,] advantages)"
        )
    if not mask.any():
        raise ValueError("the mask selects no token: every reply is empty, so there is no loss")
    if not (0 < clip < 1 and 0 <= kl_coef < math.inf) or (kl_coef and ref_logp is None):
        raise ValueError(
            f"clip={clip!r} must be in (0, 1) and kl_coef={kl_coef!r} a finite number >= 0, "
            "with ref_logp given when kl_coef > 0 (without it there is no KL to add)"
        )
    mask = mask.bool()
    # what the mask leaves out (prompt, padding) is set to 0 first: it cannot reach the loss,
    # not even as inf * 0 = NaN when the policy and the reference disagree there
    logp, old_logp = torch.where(mask, logp, 0.0), torch.where(mask, old_logp, 0.0)
    per_token = advantages[:, None].expand_as(logp)  # (N, T): every token gets its reply's
    loss, fraction = clipped_objective(logp, old_logp, per_token, mask, clip=clip)
    kl = logp.new_zeros(())
    if ref_logp is not None:
        m = mask.float()
        kl = (kl_k3(logp, torch.where(mask, ref_logp, 0.0)) * m).sum() / m.sum()
    return loss + kl_coef * kl, fraction, kl


@dataclass
class GRPOConfig:
    """A GRPO run's recipe."""

    iterations: int = 20  # roll-out + update rounds
    questions: int = 8  # B: questions (groups) per iteration
    group_size: int = 8  # G: replies sampled per question
    updates: int = 2  # gradient steps on each roll-out (the first has ratio 1)
    learning_rate: float = 1e-4  # AdamW, constant
    clip: float = 0.2  # ε of the clipped ratio
    kl_coef: float = 0.0  # β of the k3 KL to the starting model (0: no KL term)
    temperature: float = 1.0  # sampling temperature of the roll-outs
    max_new_tokens: int = 32  # reply length limit
    seed: int = 0  # draws questions and replies

    def __post_init__(self) -> None:
        check_recipe(self, {
            "iterations": "int >= 1", "questions": "int >= 1", "group_size": "int >= 1",
            "updates": "int >= 1", "learning_rate": "> 0", "clip": "(0, 1)",
            "kl_coef": ">= 0", "temperature": "> 0", "max_new_tokens": "int >= 1", "seed": "int",
        })  # fmt: skip
        if self.group_size < 2:
            raise ValueError("GRPOConfig.group_size must be >= 2: a group of one has no mean")


@dataclass
class GRPOLog:
    """One entry per iteration (the glossary is in the notebook)."""

    reward: list[float] = field(default_factory=list)  # mean reward of the sampled replies
    equal_groups: list[float] = field(default_factory=list)  # share of all-equal groups
    length: list[float] = field(default_factory=list)  # mean reply length, tokens
    kl: list[float] = field(default_factory=list)  # token-mean k3 KL to the start, last update
    clip_fraction: list[float] = field(default_factory=list)  # share of clipped tokens
    skipped: list[int] = field(default_factory=list)  # iterations with no update (all equal)
    seconds: list[float] = field(default_factory=list)  # wall time so far


Reward = Callable[[int, Sequence[int], bool], float]  # (prompt index, reply ids, finished)


def _score(reward: Reward, i: int, continuation) -> float:
    """The reward of one sampled reply (ids passed as a tuple: the function cannot change what
    is trained on), checked to be a real number a float32 can hold."""
    value = reward(i, tuple(continuation.ids), continuation.finished)
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"the reward function returned {value!r} ({type(value).__name__}) for prompt {i}: "
            "it must return a number (e.g. 1.0 for right, 0.0 for wrong)"
        )
    if not abs(value) < 3.4e38:  # NaN, inf, or beyond float32
        raise ValueError(
            f"the reward function returned {value!r} for prompt {i}: rewards must be finite "
            "numbers a float32 holds (a NaN or inf would make every advantage of its group NaN)"
        )
    return float(value)


def train_grpo(
    model: nn.Module, prompts: Sequence[Sequence[int]], reward: Reward, stop_id: int,
    config: GRPOConfig | None = None,
) -> tuple[nn.Module, GRPOLog]:  # fmt: skip
    """GRPO from a copy of ``model`` (the caller's is neither changed nor moved); returns the
    tuned copy (eval mode) and its :class:`GRPOLog`. ``prompts`` are token ids (e.g.
    :func:`companion.chat.question_ids`); ``reward(i, reply_ids, finished)`` scores a reply to
    prompt ``i``; ``stop_id`` ends a reply (``<|end|>``). One iteration:

    1. **Questions**: draw B prompts; each is asked G times.
    2. **Roll out**: sample the B·G replies at ``temperature`` (:func:`generate_many`).
    3. **Reward** each reply; :func:`group_advantages`. If every group is all-equal there is
       nothing to learn: no step; the iteration goes in ``log.skipped`` and the run ends with a
       warning that counts them.
    4. **Log-probabilities** of the reply tokens (the stop token included when written) under
       the policy before the update (the first update's forward pass) and the frozen reference
       (:mod:`companion.replies`).
    5. **Update**: ``updates`` AdamW steps on :func:`grpo_loss` over the whole roll-out.
    """
    config = GRPOConfig() if config is None else config
    if not isinstance(config, GRPOConfig):
        raise TypeError(f"config must be a GRPOConfig, got a {type(config).__name__}")
    config.__post_init__()  # a field changed after the config was made is checked too
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got a {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no parameter of the model requires grad: nothing could be trained")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("train_grpo trains: call it outside torch.inference_mode()")
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of prompts' token ids")
    if any(not isinstance(p, Sequence) or not p for p in prompts):
        raise ValueError("every prompt must be a non-empty list of token ids")
    window = getattr(getattr(model, "config", None), "context_length", None)
    longest = max(map(len, prompts))
    if window is not None and longest + config.max_new_tokens > window:
        raise ValueError(
            f"the longest prompt ({longest} tokens) plus max_new_tokens={config.max_new_tokens} "
            f"does not fit the model's context of {window}: the update scores prompt and reply "
            f"together; pass max_new_tokens <= {window - longest} or shorter prompts"
        )
    if config.questions > len(prompts):  # each iteration asks B different prompts
        raise ValueError(
            f"GRPOConfig.questions={config.questions} but there are only {len(prompts)} prompts: "
            f"each iteration asks {config.questions} different ones; pass questions <= "
            f"{len(prompts)} or more prompts"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(stop_id, bool) or not isinstance(stop_id, int) or stop_id < 0 or (
        vocab is not None and stop_id >= vocab
    ):  # fmt: skip
        raise ValueError(
            f"stop_id={stop_id!r} must be a token id (an int from 0 to {vocab or 'V'} - 1), e.g. "
            "special_ids(tokenizer)[END]"
        )
    policy = copy.deepcopy(model).eval()  # no dropout: logp and old_logp must agree
    reference = copy.deepcopy(model).eval()
    # Chapter 7's KV cache samples the roll-outs (same tokens, about 10x faster here); it holds
    # the policy's own parameters, so the updates reach it.
    sampler = CachedGPT(policy) if isinstance(policy, GPT) else policy
    device = model_device(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rng, log, start = random.Random(config.seed), GRPOLog(), time.perf_counter()
    B, G = config.questions, config.group_size
    for it in range(config.iterations):
        # 1. Questions: B prompts, each G times.
        chosen = rng.sample(range(len(prompts)), B)
        asked = [prompts[i] for i in chosen for _ in range(G)]
        # 2. Roll out (torch takes seeds mod 2**64: wrapping here keeps every seed's draws and
        # spares a large one an overflow).
        out = generate_many(
            sampler, asked, [stop_id], max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, seed=(config.seed * 100_003 + it) % 2**64,
        )  # fmt: skip
        # 3. Reward and group advantages.
        scores = [_score(reward, chosen[k // G], c) for k, c in enumerate(out)]
        rewards = torch.tensor(scores, dtype=torch.float).view(B, G)  # (B, G)
        advantages, equal = group_advantages(rewards)
        replies = [[*c.ids, stop_id] if c.finished else list(c.ids) for c in out]
        log.reward.append(rewards.mean().item())
        log.equal_groups.append(equal.float().mean().item())
        log.length.append(sum(map(len, replies)) / len(replies))
        if equal.all():  # every advantage is 0: nothing to learn from this roll-out
            log.skipped.append(it)
            log.kl.append(log.kl[-1] if log.kl else 0.0)
            log.clip_fraction.append(0.0)
            log.seconds.append(time.perf_counter() - start)
            continue
        # 4. Log-probabilities under the reference; the policy's before the update are those of
        # the first update's forward pass (nothing has changed the policy yet), kept fixed.
        ids, mask = pad_sequences(asked, replies, stop_id)
        ids, mask, m = ids.to(device), mask.to(device), mask[:, 1:].to(device)  # m: (N, T-1)
        with torch.no_grad():
            ref_logp = token_logprobs(reference(ids)[0], ids)  # (N, T-1)
        flat = advantages.reshape(-1).to(device)  # (N,) = (B·G,)
        old_logp = None
        # 5. Update (with gradients on, even if the caller turned them off).
        for _ in range(config.updates):
            with torch.enable_grad():
                logp = token_logprobs(policy(ids)[0], ids)  # (N, T-1)
                if old_logp is None:
                    old_logp = logp.detach()  # (N, T-1)
                loss, fraction, kl = grpo_loss(
                    logp, old_logp, flat, m, clip=config.clip, ref_logp=ref_logp,
                    kl_coef=config.kl_coef,
                )  # fmt: skip
            check_loss(loss, "GRPO")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
        log.kl.append(kl.item())
        log.clip_fraction.append(fraction.item())
        log.seconds.append(time.perf_counter() - start)
    if log.skipped:
        warnings.warn(
            f"in {len(log.skipped)} of {config.iterations} GRPO iterations every group's rewards "
            "were equal, so every advantage was 0 and no update was made (log.skipped lists "
            "them). If the rewards were all 0, sample more replies per question, at a higher "
            "temperature, or start from a model that is sometimes right; if all 1, the task is "
            "learnt",
            stacklevel=2,
        )
    return policy.eval(), log
